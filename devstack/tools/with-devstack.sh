#!/usr/bin/env bash
# shellcheck disable=SC1090,SC1091,SC2016,SC2034,SC2153,SC2317
# (devstack's files are sourced from DEVSTACK_DIR; the stubs' bodies are single-quoted on
# purpose; SANDBOX comes from the first, outer run)
#
# devstack/tools/with-devstack.sh: ovsnat's devstack plugin run by devstack's own code: its
# function libraries (functions, functions-common, inc/*, lib/stack, lib/neutron, lib/nova,
# lib/os-vif...), its stackrc and local.conf handling, its plugin machinery (enable_plugin,
# fetch_plugins, run_phase), in stack.sh's order, for every step of stack.sh, unstack.sh and
# clean.sh that involves the plugin, Neutron's configuration or Nova's Neutron settings.
#
#     devstack/tools/with-devstack.sh DEVSTACK_DIR [local.conf.sample|local.conf.compute.sample]
#
# OVS_RUNNING=1: the node already runs Open vSwitch (installed by hand before stack.sh).
# DEVSTACK_DIR is a checkout of openstack/devstack (never copied into ovsnat; CI has none:
# CI runs the stub harness, tests/devstack_harness.py). The ovsnat that runs is this
# checkout's commit OVSNAT_REF (default HEAD: uncommitted changes are not in it), cloned by
# devstack's own git_clone from a file:// URL as the samples' `enable_plugin ovsnat
# file:///opt/ovsnat main` says; local.conf is that commit's sample.
#
# It runs in a mount namespace of its own with /etc, /opt, /usr/local, /var and /run overlaid by
# a sandbox: devstack writes where a real node keeps its files (/etc/neutron, /etc/nova,
# /opt/stack, /etc/systemd/system, /etc/sudoers.d), and none of it reaches this machine. Only
# what needs the internet or a real node is stubbed (the STUBS section; each call recorded
# in the sandbox's calls.log):
#   - packages: apt-get (install_package's apt_get and apt_get_update; the apt-get command),
#     and apache2's a2ensite/a2dissite;
#   - systemd: systemctl ($SYSTEMCTL, restart_service, start_service, stop_service);
#   - the node's switch and NICs: ovs-vsctl, ovs-appctl (an OVS that answers only once the
#     plugin installed and started it), ip;
#   - the cloud: the openstack CLI (no Keystone or Neutron server runs);
#   - Neutron's source (a git clone from opendev): install_neutron; devstack's virtualenv is
#     a copy of ovsnat's .venv-neutron (Neutron 29), its upper-constraints that venv's pins,
#     $NEUTRON_DIR the installed Neutron's data files and samples generated from them;
#   - killing by name (pkill, killall: devstack's stop_neutron; the run shares this
#     machine's processes);
#   - services that need a running cloud or database: init_neutron,
#     start_neutron_service_and_check; sudo (this machine has none; we are root).
# pip is real (ovsnat's own virtualenv and `pip_install --no-deps -e` come from PyPI).
# The result, commit and command are recorded in devstack/README.md.
set -o errexit -o nounset -o pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ "${OVSNAT_WITH_DEVSTACK_INSIDE:-}" != 1 ]]; then
    [[ $# -ge 1 && -f "$1/stackrc" ]] || {
        echo "usage: $0 DEVSTACK_DIR [local.conf.sample|local.conf.compute.sample]" >&2; exit 2; }
    [[ $(id -u) == 0 ]] || { echo "$0: needs root (a mount namespace)" >&2; exit 2; }
    sandbox=$(mktemp -d "${TMPDIR:-/tmp}/ovsnat-devstack.XXXXXX")
    echo "with-devstack: sandbox $sandbox (calls.log, upper/: what devstack wrote)"
    OVSNAT_WITH_DEVSTACK_INSIDE=1 SANDBOX=$sandbox exec unshare --mount --propagation private \
        "$0" "$@"
fi

devstack_src=$(cd "$1" && pwd)
sample=${2:-local.conf.sample}
S=$SANDBOX
mkdir -p "$S/bin" "$S/home" "$S/state"
for dir in /etc /opt /usr/local /var /run; do
    name=${dir//\//_}
    mkdir -p "$S/upper/$name" "$S/work/$name"
    mount -t overlay overlay -o "lowerdir=$dir,upperdir=$S/upper/$name,workdir=$S/work/$name" "$dir"
done
export HOME=$S/home CALLS=$S/calls.log STUB_STATE=$S/state
: >"$CALLS"
if [[ "${OVS_RUNNING:-0}" == 1 ]]; then     # OVS installed and started before stack.sh
    touch "$STUB_STATE/ovs-started"
fi

# --- the node: devstack, ovsnat, Neutron's environment -------------------------------------
TOP_DIR=/opt/devstack
git clone -q "$devstack_src" "$TOP_DIR"
git -C "$TOP_DIR" checkout -q "$(git -C "$devstack_src" rev-parse HEAD)"
ref=$(git -C "$here" rev-parse "${OVSNAT_REF:-HEAD}")
git clone -q --bare "$here" /opt/ovsnat
git -C /opt/ovsnat branch -f main "$ref"
echo "with-devstack: devstack $(git -C "$TOP_DIR" log -1 --format='%h %cs %s')"
echo "with-devstack: ovsnat $(git -C "$here" log -1 --format='%h %s' "$ref") ($sample)"

venv=/opt/stack/data/venv                  # devstack's DEVSTACK_VENV (GLOBAL_VENV=True)
neutron_venv=${VENV_NEUTRON:-$here/.venv-neutron}
mkdir -p /opt/stack/data /opt/stack/requirements
cp -a "$neutron_venv" "$venv"
for f in "$venv"/bin/*; do               # console scripts name the copy's python
    if [[ -f "$f" && ! -L "$f" ]] && head -c 2 "$f" | grep -q '#!'; then
        sed -i "1s|$neutron_venv/|$venv/|" "$f"
    fi
done
"$venv/bin/python" -m pip uninstall -q -y ovsnat           # devstack's plugin installs it
"$venv/bin/python" -m pip freeze --exclude-editable | grep -v '^ovsnat' \
    >/opt/stack/requirements/upper-constraints.txt

# Neutron's tree as devstack's configure_neutron reads it, from the installed Neutron 29.
nd=/opt/stack/neutron
mkdir -p "$nd/tools" "$nd/etc/neutron/plugins/ml2"
cp -a "$venv/etc/neutron/." "$nd/etc/neutron/"
cp "$nd/etc/neutron/rootwrap.conf" "$nd/etc/rootwrap.conf"
cat >"$nd/tools/generate_config_file_samples.sh" <<EOF
#!/bin/bash
# Neutron's own script runs oslo-config-generator on etc/oslo-config-generator/*.conf.
set -e
gen="$venv/bin/oslo-config-generator"
\$gen --output-file etc/neutron.conf.sample --namespace neutron --namespace neutron.agent \
    --namespace neutron.db --namespace neutron.extensions --namespace nova.auth \
    --namespace placement.auth --namespace oslo.log --namespace oslo.messaging \
    --namespace oslo.concurrency --namespace oslo.db --namespace oslo.policy \
    --namespace keystonemiddleware.auth_token >/dev/null 2>&1
\$gen --output-file etc/neutron/plugins/ml2/ml2_conf.ini.sample --namespace neutron.ml2 \
    --namespace oslo.log >/dev/null 2>&1
EOF
chmod +x "$nd/tools/generate_config_file_samples.sh"

# local.conf: ovsnat's sample, then what this run needs of its own.
{
    git -C "$here" show "$ref:devstack/$sample"
    cat <<EOF

[[local|localrc]]
# with-devstack.sh: this node. Tempest (extras.d, enabled by devstack's default list) is not
# ovsnat's, and installing it is a clone from opendev.
disable_service tempest
NO_UPDATE_REPOS=True
LOGFILE=/opt/stack/logs/stack.sh.log
EOF
} >"$TOP_DIR/local.conf"

# --- STUBS: what needs the internet or a real node ------------------------------------------
stub() {      # stub NAME BODY: a command on PATH that records its arguments, then runs BODY
    printf '#!/bin/bash\n(IFS=$'"'"'\\t'"'"'; printf "%%s\\n" "%s	$*" >>"$CALLS")\n%s\n' \
        "$1" "${2:-}" >"$S/bin/$1"
    chmod +x "$S/bin/$1"
}
stub sudo 'while [[ "${1:-}" == -* ]]; do case "$1" in -u|-g) shift 2 ;; *) shift ;; esac; done
exec env "$@"'
stub systemctl 'u="$STUB_STATE/unit-${2:-}"
case "${1:-}" in enable) touch "$u" ;; disable) rm -f "$u" ;; is-enabled) [[ -e "$u" ]] ;; esac'
stub apt-get ''
stub a2ensite ''
stub pkill ''
stub killall ''
stub a2dissite ''
stub ip '[[ "$1 $2" == "link show" && ( "$3" == eth1 || "$3" == eth2 ) ]]'
stub ovs-appctl ''
stub openstack '[[ " $* " != *" network show "* ]]'
stub ovs-vsctl '[[ "$1" == --timeout=* ]] && shift
if [[ ! -e "$STUB_STATE/ovs-started" ]]; then
    echo "ovs-vsctl: unix:/var/run/openvswitch/db.sock: database connection failed" >&2
    exit 1
fi
case "$1" in
    show) ;;
    br-exists) [[ -e "$STUB_STATE/bridge-$2" ]] ;;
    list-br) [[ -e "$STUB_STATE/bridge-br-int" ]] && echo br-int; true ;;
    get-controller) cat "$STUB_STATE/controller-$2" 2>/dev/null || true ;;
    set-controller) echo "$3" >"$STUB_STATE/controller-$2" ;;
    get-manager) cat "$STUB_STATE/manager" 2>/dev/null || true ;;
    set-manager) echo "$2" >"$STUB_STATE/manager" ;;
    *) [[ " $* " == *" add-br "* ]] && touch "$STUB_STATE/bridge-br-int"
       [[ " $* " == *" del-br br-int "* ]] && rm -f "$STUB_STATE/bridge-br-int"; true ;;
esac'
export PATH=$S/bin:$PATH

# --- the stack user (devstack's own script, as on a fresh node; it reads local.conf's
# localrc, which stack.sh extracts first) ----------------------------------------------------
(set +o nounset; source "$TOP_DIR/functions"
 extract_localrc_section "$TOP_DIR/local.conf" "$TOP_DIR/localrc" "$TOP_DIR/.localrc.auto")
# What packages stack.sh installs on every node would have made (the apt-get stub installs
# nothing): sudo's drop-in directory, apache2's (install_apache_uwsgi) for configure_neutron.
mkdir -p /etc/sudoers.d /etc/apache2/sites-available
"$TOP_DIR/tools/create-stack-user.sh" | sed 's/^/with-devstack: create-stack-user: /'

# --- stack.sh, as far as ovsnat is concerned ------------------------------------------------
cd "$TOP_DIR"
set +o nounset +o pipefail                    # as stack.sh: devstack's code expects neither
# stack.sh's own first settings (its lines 60-99)
LC_ALL=C.UTF-8          # stack.sh: en_US.utf8, which this machine has not generated
export LC_ALL TOP_DIR
PATH=$PATH:/usr/local/bin:/usr/local/sbin:/usr/sbin:/sbin
FILES=$TOP_DIR/files
source "$TOP_DIR/functions"
source "$TOP_DIR/lib/stack"
GetDistro
rm -f "$TOP_DIR/.localrc.auto"
extract_localrc_section "$TOP_DIR/local.conf" "$TOP_DIR/localrc" "$TOP_DIR/.localrc.auto"
source "$TOP_DIR/stackrc"
set -o errexit
mkdir -p /opt/stack/logs

function apt_get { echo -e "apt_get\t$*" >>"$CALLS"; }
function apt_get_update { echo -e "apt_get_update\t$*" >>"$CALLS"; }
function restart_service {
    echo -e "restart_service\t$*" >>"$CALLS"
    [[ "$1" == openvswitch-switch ]] && touch "$STUB_STATE/ovs-started"
    return 0
}
function start_service { echo -e "start_service\t$*" >>"$CALLS"; }
function stop_service { echo -e "stop_service\t$*" >>"$CALLS"; }
SYSTEMCTL="$S/bin/systemctl"

async_init
source "$TOP_DIR/lib/database"
source "$TOP_DIR/lib/rpc_backend"
fetch_plugins
run_phase override_defaults
for lib in apache tls infra libraries lvm horizon keystone glance nova placement cinder swift \
        neutron ldap dstat atop tcpdump etcd3 os-vif; do
    source "$TOP_DIR/lib/$lib"
done
function install_neutron { echo -e "install_neutron\t(Neutron 29 is in $venv)" >>"$CALLS"; }
function init_neutron { echo -e "init_neutron" >>"$CALLS"; }
function start_neutron_service_and_check { echo -e "start_neutron_service_and_check" >>"$CALLS"; }
run_phase source
echo "with-devstack: ENABLED_SERVICES=$ENABLED_SERVICES Q_AGENT=$Q_AGENT"

step() { echo "with-devstack: --- $*"; echo -e "--- $*" >>"$CALLS"; }
step "stack.sh: pre-install"
run_phase stack pre-install
if is_service_enabled neutron; then
    install_neutron_agent_packages
    stack_install_service neutron
fi
step "stack.sh: install"
run_phase stack install
if is_service_enabled neutron; then
    configure_neutron
    if is_service_enabled "$DATABASE_BACKENDS" && is_service_enabled neutron; then
        init_neutron
    fi
fi
if is_service_enabled nova neutron; then
    sudo install -d "$NOVA_CONF_DIR" && touch "$NOVA_CONF"        # configure_nova's
    configure_os_vif
fi
if is_service_enabled nova; then
    configure_neutron_nova
fi
step "stack.sh: post-config"
run_phase stack post-config
merge_config_group "$TOP_DIR/local.conf" post-config
if is_service_enabled q-svc neutron-api; then
    configure_neutron_after_post_config
    start_neutron_service_and_check
fi
if is_service_enabled neutron; then
    start_neutron
fi
step "stack.sh: extra"
merge_config_group "$TOP_DIR/local.conf" extra
run_phase stack extra
step "check: the units devstack wrote start what exists"
for unit in /etc/systemd/system/devstack@ovsnat*.service; do
    cmd=$(iniget "$unit" Service ExecStart)
    echo "with-devstack: $(basename "$unit"): $cmd"
    read -r -a argv <<<"$cmd"
    [[ "${argv[0]}" == /usr/bin/env ]] && argv=("${argv[@]:2}")
    [[ -x "${argv[0]}" ]] || die $LINENO "$unit: ${argv[0]} is not there"
    files=()
    for ((i = 1; i < ${#argv[@]}; i++)); do
        if [[ "${argv[i]}" == --config-file ]]; then
            [[ -r "${argv[i + 1]}" ]] || die $LINENO "$unit: ${argv[i + 1]} is not there"
            files+=("${argv[i + 1]}")
        fi
    done
    if [[ "$unit" == *ovsnat-agent* ]]; then     # the agent's own option parsing
        "$(dirname "${argv[0]}")/python" - "${files[@]}" <<'PY'
import sys
from oslo_service import backend; backend.init_backend(backend.BackendType.THREADING)
from oslo_config import cfg
from neutron.common import config as common_config
from oslo_messaging import opts as messaging_opts
common_config.register_common_config_options()
for group, options in messaging_opts.list_opts():   # transport_url: oslo.messaging's option
    cfg.CONF.register_opts(options, group)
try:
    from ovsnat.neutron import opts
except ImportError:                  # an OVSNAT_REF from before the options moved to [ovs]
    cfg.CONF([a for f in sys.argv[1:] for a in ("--config-file", f)], project="neutron")
    print(f"with-devstack: the agent reads transport_url={cfg.CONF.transport_url!r}")
    sys.exit(0 if cfg.CONF.transport_url else "no transport_url")
opts.register(cfg.CONF)
cfg.CONF([a for f in sys.argv[1:] for a in ("--config-file", f)], project="neutron")
print(f"with-devstack: the agent reads transport_url={cfg.CONF.transport_url!r}, "
      f"[ovs] integration_bridge={cfg.CONF.OVS.integration_bridge}, "
      f"[ovsnat] controller_config={cfg.CONF.ovsnat.controller_config}")
assert cfg.CONF.transport_url, "no transport_url: the agent cannot reach RabbitMQ"
from ovsnat.neutron.hostlimits import ControllerLimits
report = ControllerLimits(cfg.CONF.ovsnat.controller_config).report()
print(f"with-devstack: the agent reports the controller's limits: {report}")
assert report, "the agent could not read the controller's configuration"
PY
    fi
done
[[ -e "$STUB_STATE/bridge-br-int" ]] || die $LINENO "no br-int after stack.sh"

step "unstack.sh"
load_plugin_settings
if is_service_enabled neutron; then
    enable_neutron_server_services
fi
run_phase unstack
if is_service_enabled neutron; then
    stop_neutron
    cleanup_neutron
fi
[[ -e "$STUB_STATE/bridge-br-int" ]] ||
    die $LINENO "unstack.sh deleted br-int (ovsnat's bridge, with its VMs' ports)"
echo "with-devstack: br-int is still there after unstack.sh"
step "clean.sh"
run_phase clean
cleanup_neutron
step "done"
echo "with-devstack: OK; files devstack and the plugin wrote: $S/upper; calls: $CALLS"
