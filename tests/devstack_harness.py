"""A devstack node as far as the plugin (devstack/settings, plugin.sh, lib/) can tell, without
devstack: the harness tests/test_devstack.py and tests/test_devstack_neutron.py share.

devstack cannot run on this build machine, so the plugin is sourced the way stack.sh,
unstack.sh and clean.sh source it, in bash, over stub devstack functions that record their
calls (run_process, stop_process, pip_install, git_clone, die, openstack, install_package,
restart_service...) or really do the work (iniset writes INI files; sudo runs its command,
which is a stub or a harmless real one in a temp dir). CI has no devstack: the run against
devstack's own function libraries is devstack/tools/with-devstack.sh (devstack/README.md).
Open vSwitch commands are stubs that record their arguments and answer the few
queries the plugin makes; ovsnat's virtualenv is a stub whose pip records, and whose python is
the real interpreter for everything else, so the config check runs ovsnat's own validation.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEVSTACK = REPO / "devstack"
SNAT_IP = "172.24.4.250"
NEUTRON_VENV = Path(os.environ.get("VENV_NEUTRON", REPO / ".venv-neutron"))


def in_neutron_venv(code: str) -> None:
    """Run a check script in Neutron's virtualenv; it prints `ok` last when every assert
    in it held (the script's output and errors are the failure's message)."""
    proc = subprocess.run(
        [str(NEUTRON_VENV / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (
        proc.stdout[-2000:] + proc.stderr[-3000:]
    )


# Stub devstack functions and commands. record() writes one tab-separated line per call.
STUBS = r"""
record() { local IFS=$'\t'; printf '%s\n' "$*" >>"$STUB_LOG"; }
is_service_enabled() {      # with devstack's is_neutron_enabled: any q-* or neutron-* too
    local s
    for s in "$@"; do
        [[ ",$ENABLED_SERVICES," == *",$s,"* ]] && return 0
        [[ $s == neutron && ",$ENABLED_SERVICES" =~ ,(q-|neutron-) ]] && return 0
    done
    return 1
}
enable_service() { local s; for s in "$@"; do ENABLED_SERVICES="$ENABLED_SERVICES,$s"; done; }
disable_service() {
    local s
    for s in "$@"; do
        ENABLED_SERVICES=",$ENABLED_SERVICES,"; ENABLED_SERVICES=${ENABLED_SERVICES//,$s,/,}
    done
}
run_process() { record run_process "$@"; }
stop_process() { record stop_process "$@"; }
pip_install() { record pip_install "$@"; }
git_clone() { record git_clone "$@"; }
enable_plugin() { :; }
echo_summary() { record echo_summary "$@"; }
die() { local line=$1; shift; echo "die[$line]: $*" >&2; exit 1; }
iniset() {
    [[ "$1" == "-sudo" ]] && shift
    record iniset "$@"
    "$STUB_PYTHON" "$STUB_DIR/iniset.py" "$@"
}
sudo() { record sudo "$@"; "$@"; }
install_package() { record install_package "$@"; rm -f "$STUB_STATE/ovs-missing"; }
get_packages() { record get_packages "$@"; echo "fakeroot make openvswitch-switch"; }
restart_service() {
    record restart_service "$@"
    [[ -e "$STUB_STATE/ovs-missing" ]] || rm -f "$STUB_STATE/ovs-down"
}
is_ubuntu() { return 0; }
systemctl() { record systemctl "$@"; }
ovs-vsctl() {
    record ovs-vsctl "$@"
    if [[ -n "${OVS_RUNDIR:-}" ]]; then command ovs-vsctl --timeout=20 "$@"; return; fi
    [[ "$1" == --timeout=* ]] && shift
    case "$1" in
        show) [[ ! -e "$STUB_STATE/ovs-down" ]] ;;
        br-exists) [[ -e "$STUB_STATE/bridge-$2" ]] ;;
        get-controller) cat "$STUB_STATE/controller-$2" 2>/dev/null || true ;;
        set-controller) echo "$3" >"$STUB_STATE/controller-$2" ;;
        get-manager) cat "$STUB_STATE/manager" 2>/dev/null || true ;;
        set-manager) echo "$2" >"$STUB_STATE/manager" ;;
    esac
}
ovs-appctl() { record ovs-appctl "$@"; }
openstack() {
    record openstack "$@"
    if [[ " $* " == *" network show "* ]]; then [[ -e "$STUB_STATE/networks-exist" ]]; fi
}
ip() { record ip "$@"; [[ "$1 $2" == "link show" && -e "$STUB_STATE/nic-$3" ]]; }
python3() {
    record python3 "$@"
    if [[ "$1 $2" == "-m venv" ]]; then make_stub_venv "$3"; else "$STUB_PYTHON" "$@"; fi
}
make_stub_venv() {
    mkdir -p "$1/bin"
    cat >"$1/bin/python" <<EOF
#!/bin/bash
if [[ "\$1" == -m && ( "\$2" == pip || "\$2" == ovsnat.ryu_compat ) ]]; then
    (IFS=\$'\t'; printf '%s\n' "venv-python	\$*" >>"\$STUB_LOG")
    exit 0
fi
exec "$STUB_PYTHON" "\$@"
EOF
    printf '#!/bin/bash\n(IFS=$'"'"'\\t'"'"'; printf "%%s\\n" "ryu-manager\t$*" >>"$STUB_LOG")\n' \
        >"$1/bin/ryu-manager"
    chmod +x "$1/bin/python" "$1/bin/ryu-manager"
}
"""

# devstack's iniset: set one option, creating the file and the section when missing.
INISET = r"""
import configparser, os, sys
path, section, option, value = sys.argv[1:5]
parser = configparser.ConfigParser(interpolation=None)
parser.optionxform = str
if os.path.exists(path):
    parser.read(path)
if not parser.has_section(section):
    parser.add_section(section)
parser.set(section, option, value)
with open(path, "w") as f:
    parser.write(f)
"""


class Devstack:
    """One node's devstack, as far as the plugin can tell: a DEST, a config dir, stub OVS."""

    def __init__(self, root: Path, ovs_rundir: str | None = None):
        """ovs_rundir: run the real ovs-vsctl against the OVS whose sockets live there (a
        lab host) instead of the stub."""
        self.root = root
        self.ovs_rundir = ovs_rundir
        self.stub_dir = root / "stubs"
        self.state = root / "state"
        self.log = root / "calls.log"
        for d in (
            self.stub_dir,
            self.state,
            root / "opt-stack",
            root / "etc-neutron",
        ):  # devstack's neutron made it
            d.mkdir(parents=True, exist_ok=True)
        (self.stub_dir / "stubs.sh").write_text(STUBS)
        (self.stub_dir / "iniset.py").write_text(INISET)
        self.env = {
            "DEST": str(root / "opt-stack"),
            "STACK_USER": subprocess.run(
                ["id", "-un"], capture_output=True, text=True
            ).stdout.strip(),
            "ENABLED_SERVICES": "key,n-cpu,q-svc,q-agt,q-dhcp,q-l3,q-meta",
            "OVSNAT_DIR": str(REPO),
            "OVSNAT_CONF_DIR": str(root / "etc-ovsnat"),
            "OVSNAT_SNAT_IP": SNAT_IP,
            "Q_FLOATING_ALLOCATION_POOL": "start=172.24.4.2,end=172.24.4.199",
            "OVSNAT_MODE": "standalone",
            # what devstack's lib/neutron sets (Neutron mode uses them)
            "NEUTRON_BIN_DIR": str(NEUTRON_VENV / "bin"),
            "NEUTRON_CONF": str(root / "etc-neutron" / "neutron.conf"),
            "Q_PLUGIN_CONF_FILE": str(root / "etc-neutron" / "ml2_conf.ini").lstrip("/"),
            "OVSNAT_AGENT_CONF": str(root / "etc-neutron" / "ovsnat_agent.ini"),
            "REGION_NAME": "RegionOne",
        }
        self.bridge("br-ex")

    def neutron_mode(self, services: str) -> Devstack:
        """A node where ovsnat is Neutron's backend, running `services`."""
        self.env.update(
            OVSNAT_MODE="neutron",
            ENABLED_SERVICES=services,
            OVSNAT_SNAT_IP="",
            OVSNAT_FABRIC_PORT="eth2",
            Q_AGENT="ovsnat",
        )
        self.env.pop("Q_FLOATING_ALLOCATION_POOL")
        (self.state / "nic-eth1").touch()
        (self.state / "nic-eth2").touch()
        return self

    def ini(self, path: str) -> dict[str, dict[str, str]]:
        import configparser

        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str
        parser.read(path)
        return {name: dict(parser[name]) for name in parser.sections()}

    @property
    def conf(self) -> Path:
        return Path(self.env["OVSNAT_CONF_DIR"]) / "ovsnat.conf"

    @property
    def venv(self) -> str:
        return f"{self.env['DEST']}/ovsnat-venv"

    def bridge(self, name: str, controller: str | None = None) -> None:
        (self.state / f"bridge-{name}").touch()
        if controller:
            (self.state / f"controller-{name}").write_text(controller + "\n")

    def run(
        self, *args: str, localrc: str = "", after_settings: str = "", **env: str
    ) -> subprocess.CompletedProcess:
        """Source settings then plugin.sh with args, as devstack does; return the process.
        env and localrc: local.conf's variables (localrc: a [[local|localrc]] block's text);
        after_settings: bash run between settings and plugin.sh."""
        self.log.write_text("")
        assignments = "".join(f"{k}={q(v)}\n" for k, v in {**self.env, **env}.items())
        script = textwrap.dedent(f"""\
            set -o errexit -o nounset -o pipefail
            source {q(str(self.stub_dir / "stubs.sh"))}
            {assignments}
            {localrc}
            source {q(str(DEVSTACK / "settings"))}
            {after_settings}
            source {q(str(DEVSTACK / "plugin.sh"))} "$@"
            """)
        proc_env = dict(
            os.environ,
            STUB_LOG=str(self.log),
            STUB_STATE=str(self.state),
            STUB_DIR=str(self.stub_dir),
            STUB_PYTHON=sys.executable,
        )
        proc_env.pop("OVS_RUNDIR", None)
        if self.ovs_rundir:
            proc_env.update(
                OVS_RUNDIR=self.ovs_rundir, OVS_LOGDIR=self.ovs_rundir, OVS_DBDIR=self.ovs_rundir
            )
        return subprocess.run(
            ["bash", "-c", script, "plugin.sh", *args],
            env=proc_env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def ok(self, *args: str, **env: str) -> list[list[str]]:
        proc = self.run(*args, **env)
        assert proc.returncode == 0, proc.stderr
        return self.calls()

    def calls(self) -> list[list[str]]:
        return [line.split("\t") for line in self.log.read_text().splitlines()]

    def ovs_down(self, installed: bool = True) -> None:
        """Open vSwitch not answering: stopped (installed) or not installed at all."""
        (self.state / "ovs-down").touch()
        if not installed:
            (self.state / "ovs-missing").touch()

    def stack(self) -> None:
        """install + post-config, as stack.sh runs them before extra."""
        self.ok("stack", "install")
        self.ok("stack", "post-config")


def q(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def named(calls, name):
    return [c[1:] for c in calls if c[0] == name]


def index(calls, pred) -> int:
    return next(i for i, c in enumerate(calls) if pred(c))


@pytest.fixture
def devstack(tmp_path) -> Devstack:
    return Devstack(tmp_path)


def localrc(sample: str) -> str:
    """The [[local|localrc]] block of a local.conf sample, as bash."""
    lines, inside = [], False
    for line in (DEVSTACK / sample).read_text().splitlines():
        if line.startswith("[["):
            inside = line.strip() == "[[local|localrc]]"
        elif inside:
            lines.append(line)
    return "\n".join(lines)
