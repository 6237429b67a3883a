"""The devstack plugin in standalone mode (OVSNAT_MODE=standalone: ovsnat beside Neutron's OVS
agent on a bridge of its own), without devstack: the harness (tests/devstack_harness.py)
sources settings and plugin.sh as stack.sh, unstack.sh and clean.sh do, over stub devstack
functions. Neutron mode (ovsnat as Neutron's backend): tests/test_devstack_neutron.py.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ovsnat.model import HostConfig
from ovsnat.model.options import BY_NAME, read_ini
from tests.devstack_harness import DEVSTACK, REPO, SNAT_IP, Devstack, devstack, index, named, q

__all__ = ["devstack"]  # the fixture, used by name


# --- static checks ----------------------------------------------------------------------------
def test_every_devstack_script_passes_shellcheck():
    scripts = [
        DEVSTACK / "plugin.sh",
        DEVSTACK / "settings",
        *map(Path, glob.glob(str(DEVSTACK / "lib" / "*"))),
        *map(Path, glob.glob(str(DEVSTACK / "**" / "*.sh"), recursive=True)),
    ]
    assert shutil.which("shellcheck"), "shellcheck missing: scripts/install.sh installs it"
    proc = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", *sorted(set(map(str, scripts)))],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_settings_keep_values_from_local_conf_and_ct_zone_stays_outside_neutrons():
    out = (
        subprocess.run(
            [
                "bash",
                "-c",
                "enable_service() { :; }; DEST=/opt/stack; OVSNAT_SNAT_PORT_MIN=30000; "
                "OVSNAT_MODE=standalone; "
                f"source {q(str(DEVSTACK / 'settings'))}; "
                'echo "$OVSNAT_BRIDGE|$OVSNAT_CT_ZONE|$OVSNAT_FIP_FRAG_CT_ZONE|$OVSNAT_CONF|'
                "$OVSNAT_SNAT_PORT_MIN|$OVSNAT_SNAT_PORT_MAX|$OVSNAT_DIR|$OVSNAT_EXTERNAL_CIDR|"
                '$OVSNAT_EXTERNAL_GATEWAY_IP|$OVSNAT_SNAT_IP|$OVSNAT_PUBLIC_BRIDGE"',
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split("|")
    )
    assert out == [
        "br-ovsnat",
        "65000",
        "65001",
        "/etc/ovsnat/ovsnat.conf",
        "30000",
        "29999",
        "/opt/stack/ovsnat",
        "172.24.4.0/24",
        "172.24.4.1",
        "",
        "br-ex",
    ]
    assert not 1 <= int(out[1]) <= 4094


# --- stack install ----------------------------------------------------------------------------
def test_install_builds_ovsnats_own_venv_with_the_pinned_framework(devstack):
    calls = devstack.ok("stack", "install")
    venv_py = f"{devstack.venv}/bin/python"
    assert ["-m", "venv", devstack.venv] in named(calls, "python3")
    pips = [c for c in named(calls, "venv-python") if c[:3] == ["-m", "pip", "install"]]
    assert len(pips) == 2, calls
    assert "setuptools<68" in pips[0] and "wheel" in pips[0] and "pbr" in pips[0]
    main = pips[1]
    assert "--no-build-isolation" in main
    assert main[main.index("-c") + 1] == f"{REPO}/constraints.txt"
    assert main[main.index("-e") + 1] == f"{REPO}[ryu]"
    shim = index(calls, lambda c: c[0] == "venv-python" and "ovsnat.ryu_compat" in c)
    assert calls[shim][1:] == ["-m", "ovsnat.ryu_compat", "--install"]
    assert index(calls, lambda c: c[1:] == pips[1]) < shim  # shim after ryu is there
    assert ["--version"] in named(calls, "ryu-manager")
    assert not named(calls, "pip_install")  # never into devstack's shared venv
    assert not named(calls, "git_clone")  # enable_plugin already cloned it
    assert os.access(venv_py, os.X_OK)

    again = devstack.ok("stack", "install")  # idempotent: the venv is reused
    assert not named(again, "python3")


def test_install_clones_the_repo_when_devstack_did_not(devstack):
    calls = devstack.ok(
        "stack",
        "install",
        OVSNAT_DIR=f"{devstack.env['DEST']}/ovsnat",
        OVSNAT_REPO="file:///srv/ovsnat.git",
        OVSNAT_BRANCH="stable",
    )
    assert named(calls, "git_clone") == [
        ["file:///srv/ovsnat.git", f"{devstack.env['DEST']}/ovsnat", "stable"]
    ]


# --- stack post-config ------------------------------------------------------------------------
def test_post_config_writes_a_config_ovsnat_itself_accepts(devstack):
    devstack.ok("stack", "install")
    calls = devstack.ok("stack", "post-config")
    assert {c[1] for c in named(calls, "iniset")} == {"ovsnat"}
    values = read_ini(str(devstack.conf))  # unknown keys would raise here
    written = {c[2] for c in named(calls, "iniset")}
    assert written <= set(BY_NAME)
    cfg = HostConfig.parse({**values, "uplink_ofport": 1})
    assert cfg.bridge == "br-ovsnat" and cfg.uplink_port == "ovsnat-ex"
    assert str(cfg.snat_ip) == SNAT_IP and cfg.ct_zone == 65000 and cfg.fip_frag_ct_zone == 65001
    assert (cfg.snat_port_min, cfg.snat_port_max) == (20000, 29999)
    assert str(cfg.external_cidr) == "172.24.4.0/24"
    assert str(cfg.external_gateway_ip) == "172.24.4.1" and cfg.external_gateway_mac is None
    assert values["ovsdb_connection"] == "unix:/var/run/openvswitch/db.sock"
    assert cfg.fip_activation == "first-packet"


def test_post_config_follows_local_conf_and_rewrites_the_file_each_stack(devstack):
    devstack.ok("stack", "post-config")
    with open(devstack.conf, "a") as f:
        f.write("stale_option = 1\n")  # left over from an older stack
    devstack.ok(
        "stack",
        "post-config",
        OVSNAT_SNAT_IP="172.24.4.251",
        OVSNAT_SNAT_PORT_MIN="40000",
        OVSNAT_SNAT_PORT_MAX="40999",
        OVSNAT_EXTERNAL_GATEWAY_MAC="02:00:00:00:00:fe",
    )
    cfg = HostConfig.parse({**read_ini(str(devstack.conf)), "uplink_ofport": 1})
    assert str(cfg.snat_ip) == "172.24.4.251" and cfg.snat_port_min == 40000
    assert str(cfg.external_gateway_mac).lower().replace("-", ":") == "02:00:00:00:00:fe"


@pytest.mark.parametrize(
    "env, says",
    [
        ({"OVSNAT_SNAT_IP": ""}, "OVSNAT_SNAT_IP is empty"),
        ({"OVSNAT_CT_ZONE": "100"}, "inside 1-4094"),
        ({"OVSNAT_FIP_FRAG_CT_ZONE": "4094"}, "inside 1-4094"),
        ({"OVSNAT_BRIDGE": "br-int"}, "is a Neutron bridge"),
        ({"OVSNAT_BRIDGE": "br-ex", "OVSNAT_PUBLIC_BRIDGE": "br-ex"}, "are both br-ex"),
    ],
)
def test_post_config_refuses_settings_that_fight_neutron(devstack, env, says):
    proc = devstack.run("stack", "post-config", **env)
    assert proc.returncode != 0 and says in proc.stderr, proc.stderr
    assert not devstack.conf.exists()


def test_br_int_is_allowed_where_no_neutron_agent_runs(devstack):
    devstack.ok("stack", "post-config", OVSNAT_BRIDGE="br-int", ENABLED_SERVICES="n-cpu")
    assert read_ini(str(devstack.conf))["bridge"] == "br-int"


# --- stack extra ------------------------------------------------------------------------------
def test_extra_creates_the_bridge_starts_the_controller_then_points_the_bridge_at_it(devstack):
    devstack.stack()
    calls = devstack.ok("stack", "extra")
    vsctl = named(calls, "ovs-vsctl")
    add_br = next(c for c in vsctl if "add-br" in c)
    assert add_br[add_br.index("add-br") + 1] == "br-ovsnat" and "--may-exist" in add_br
    assert "fail_mode=secure" in add_br and "protocols=OpenFlow13" in add_br
    assert "datapath_type=system" in add_br
    patch = next(c for c in vsctl if "type=patch" in c)
    assert patch[patch.index("add-port") + 1 :][:2] == ["br-ovsnat", "ovsnat-ex"]
    assert "options:peer=ex-ovsnat" in patch and "options:peer=ovsnat-ex" in patch
    assert "br-ex" in patch  # the peer lives on br-ex

    ((name, cmd, group, user),) = named(calls, "run_process")
    assert name == "ovsnat" and user == "root"
    argv = cmd.split()
    assert argv[:2] == ["/usr/bin/env", "EVENTLET_NO_GREENDNS=yes"]  # absolute, as systemd needs
    assert argv[2] == f"{devstack.venv}/bin/ryu-manager"
    assert argv[argv.index("--config-file") + 1] == str(devstack.conf)
    assert argv[-1] == "ovsnat.app"
    assert argv[argv.index("--ofp-tcp-listen-port") + 1] == "6654"  # not Neutron's 6633

    start = index(calls, lambda c: c[0] == "run_process")
    setc = index(calls, lambda c: c[:2] == ["ovs-vsctl", "set-controller"])
    assert start < setc, "the controller must run before the bridge is pointed at it"
    assert calls[setc][2:] == ["br-ovsnat", "tcp:127.0.0.1:6654"]
    tune = next(c for c in vsctl if "max_backoff=1000" in c)
    assert "fail_mode=secure" in tune and "Controller" in tune
    assert index(calls, lambda c: c[1:] == tune) > setc


def test_extra_again_leaves_an_existing_controller_row_alone(devstack):
    devstack.stack()
    devstack.ok("stack", "extra")
    calls = devstack.ok("stack", "extra")  # second stack.sh
    assert not [
        c for c in named(calls, "ovs-vsctl") if c[0] in ("set-controller", "del-controller")
    ]
    assert len(named(calls, "run_process")) == 1


def test_extra_refuses_a_bridge_with_someone_elses_controller(devstack):
    devstack.stack()
    devstack.bridge("br-ovsnat", controller="tcp:127.0.0.1:6633")
    proc = devstack.run("stack", "extra")
    assert proc.returncode != 0 and "already has controller" in proc.stderr, proc.stderr
    assert not [c for c in devstack.calls() if c[:2] == ["ovs-vsctl", "set-controller"]]


def test_extra_refuses_a_missing_public_bridge_and_accepts_a_nic_uplink(devstack):
    devstack.stack()
    (devstack.state / "bridge-br-ex").unlink()
    proc = devstack.run("stack", "extra")
    assert proc.returncode != 0 and "does not exist" in proc.stderr, proc.stderr
    assert not named(devstack.calls(), "run_process")

    (devstack.state / "nic-eth1").touch()
    calls = devstack.ok("stack", "extra", OVSNAT_PUBLIC_BRIDGE="", OVSNAT_UPLINK_PORT="eth1")
    assert [c for c in named(calls, "ovs-vsctl") if c[-2:] == ["br-ovsnat", "eth1"]]
    assert not [c for c in named(calls, "ovs-vsctl") if "type=patch" in c]


@pytest.mark.parametrize(
    "env, says",
    [
        ({"OVSNAT_FIP_RANGE": "172.24.4.150-172.24.4.210"}, "overlaps Neutron's"),
        ({"OVSNAT_FIP_RANGE": "172.24.4.240-172.24.4.255"}, "not inside the host addresses"),
        ({"OVSNAT_FIP_RANGE": "172.24.4.200"}, "is not FIRST-LAST"),
        (
            {
                "Q_FLOATING_ALLOCATION_POOL": "start=172.24.4.2,end=172.24.4.254",
                "OVSNAT_FIP_RANGE": "172.24.4.200-172.24.4.239",
            },
            "snat_ip: 172.24.4.250 is inside",
        ),
    ],
)
def test_extra_refuses_fips_neutron_could_also_nat(devstack, env, says):
    devstack.stack()
    proc = devstack.run("stack", "extra", **env)
    assert proc.returncode != 0 and says in proc.stderr, proc.stderr
    assert not named(devstack.calls(), "run_process")


def test_extra_refuses_a_config_ovsnat_would_reject(devstack):
    devstack.stack()
    with open(devstack.conf, "a") as f:  # as a [[post-config|...]] merge could
        f.write("snat_port_min = 30000\nsnat_port_max = 20000\n")
    proc = devstack.run("stack", "extra")
    assert proc.returncode != 0 and "snat_port_min" in proc.stderr, proc.stderr
    assert not named(devstack.calls(), "run_process")


# --- unstack and clean ------------------------------------------------------------------------
def test_unstack_stops_the_process_and_keeps_the_bridge_and_its_controller(devstack):
    calls = devstack.ok("unstack")
    assert named(calls, "stop_process") == [["ovsnat"]]
    assert not [
        c for c in named(calls, "ovs-vsctl") if {"del-controller", "del-br", "del-port"} & set(c)
    ]


def test_clean_removes_the_bridge_the_patch_peer_and_the_config(devstack):
    devstack.stack()
    assert devstack.conf.exists()
    calls = devstack.ok("clean")
    vsctl = named(calls, "ovs-vsctl")
    assert ["--if-exists", "del-br", "br-ovsnat"] in vsctl
    assert ["--if-exists", "del-port", "br-ex", "ex-ovsnat"] in vsctl
    assert ["dpctl/flush-conntrack", "zone=65000"] in named(calls, "ovs-appctl")
    assert not devstack.conf.exists() and not os.path.exists(devstack.venv)


def test_nothing_happens_when_the_service_is_disabled(devstack):
    for phase in (
        ("stack", "install"),
        ("stack", "post-config"),
        ("stack", "extra"),
        ("unstack",),
        ("clean",),
    ):
        proc = devstack.run(*phase, after_settings="disable_service ovsnat")
        assert proc.returncode == 0, proc.stderr
        assert devstack.calls() == [], phase
    assert not devstack.conf.exists()


# --- the plugin's OVS wiring on a real lab host -----------------------------------------------
@pytest.mark.lab
def test_stack_unstack_clean_on_a_real_ovs_host(make_lab, tmp_path):
    """post-config and extra with the real ovs-vsctl on a lab hypervisor laid out like a
    devstack node (the uplink NIC on a standalone br-ex), the controller started from the
    command run_process was given, and a VM plugged into br-ovsnat: PAT and a FIP work through
    the patch to br-ex; after unstack the flows (and the Controller row) stay and the FIP keeps
    answering; clean removes the bridge and the patch peer."""
    import shlex
    import time

    from ovsnat.lab.topology import SERVER_IP
    from ovsnat.lab.traffic import start_server, tcp_connect

    lab = make_lab()
    host = lab.add_host("hv1")
    host.vsctl(
        "del-port",
        "br-int",
        "uplink",
        "--",
        "add-br",
        "br-ex",
        "--",
        "set",
        "Bridge",
        "br-ex",
        "datapath_type=netdev",
        "--",
        "add-port",
        "br-ex",
        "uplink",
    )
    ds = Devstack(tmp_path, ovs_rundir=host.rundir)
    ds.env.update(
        ENABLED_SERVICES="n-cpu",
        OVS_DATAPATH_TYPE="netdev",
        OVSNAT_VENV=sys.prefix,
        Q_FLOATING_ALLOCATION_POOL="",
        OVSNAT_SNAT_IP="203.0.113.11",
        OVSNAT_EXTERNAL_CIDR="203.0.113.0/24",
        OVSNAT_EXTERNAL_GATEWAY_IP="203.0.113.1",
        OVSNAT_INTERNAL_CIDR="10.0.0.0/24",
        OVSNAT_INTERNAL_GATEWAY_IP="10.0.0.1",
        OVSNAT_FIP_RANGE="203.0.113.2-203.0.113.10",
        OVSNAT_OVSDB_CONNECTION=f"unix:{host.ovs.db_sock}",
    )
    ds.ok("stack", "post-config")
    calls = ds.ok("stack", "extra")
    ((_, cmd, _, user),) = named(calls, "run_process")
    lab.spawn("ctl-hv1", shlex.split(cmd), ns=host.ns)  # what systemd would start
    assert host.vsctl("get-controller", "br-ovsnat").strip() == "tcp:127.0.0.1:6654"
    assert host.vsctl("get", "Bridge", "br-ovsnat", "fail_mode").strip() == "secure"
    assert (
        host.vsctl("get", "Interface", "ex-ovsnat", "options:peer").strip().strip('"')
        == "ovsnat-ex"
    )

    vm = lab.add_vm("vm1", "hv1", "10.0.0.11", "02:00:0a:00:00:0b")
    host.vsctl(
        "del-port",
        "br-int",
        vm.tap,
        "--",
        "add-port",
        "br-ovsnat",
        vm.tap,
        "--",
        "set",
        "Interface",
        vm.tap,
        "external_ids:iface-id=vm1",
        f'external_ids:attached-mac="{vm.mac}"',
        'external_ids:ovsnat-fixed-ip="10.0.0.11"',
    )
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    start_server(lab, "vm1-tcp", vm.ns, "tcp", 7000)

    def seen_as():
        reply = tcp_connect(lab, vm.ns, SERVER_IP, 8080, timeout=1)
        return reply.peer_ip if reply.ok else None

    def fip_answers():
        return tcp_connect(lab, lab.srv_ns, "203.0.113.10", 7000, timeout=1).ok

    def eventually(probe, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not (value := probe()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return value

    log = lambda: Path(lab.procs["ctl-hv1"]["log"]).read_text()  # noqa: E731
    assert eventually(lambda: seen_as() == "203.0.113.11"), log()
    bind = subprocess.run(
        [
            sys.executable,
            "-m",
            "ovsnat.cli",
            "bind",
            "--iface-id",
            "vm1",
            "--fip",
            "203.0.113.10",
            "--config",
            str(ds.conf),
        ],
        capture_output=True,
        text=True,
    )
    assert bind.returncode == 0, bind.stderr
    assert eventually(lambda: seen_as() == "203.0.113.10"), log()  # the VM talks first
    assert eventually(fip_answers), log()

    assert named(ds.ok("unstack"), "stop_process") == [["ovsnat"]]
    lab.stop_proc("ctl-hv1")  # what stop_process does
    assert host.vsctl("get-controller", "br-ovsnat").strip() == "tcp:127.0.0.1:6654"
    assert fip_answers() and seen_as() == "203.0.113.10"  # flows outlive the controller

    ds.ok("clean", OVSNAT_VENV=str(tmp_path / "venv-to-clean"))  # never the real venv
    assert host.vsctl(
        "br-exists", "br-ovsnat", check=False
    ) == "" and "br-ovsnat" not in host.vsctl("list-br")
    assert "ex-ovsnat" not in host.vsctl("list-ports", "br-ex")
    assert not ds.conf.exists()
