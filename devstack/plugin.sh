# shellcheck shell=bash
#
# devstack/plugin.sh: ovsnat's devstack plugin. devstack sources it as
#     source plugin.sh stack pre-install|install|post-config|extra     (stack.sh)
#     source plugin.sh unstack                              (unstack.sh)
#     source plugin.sh clean                                (clean.sh, after unstack.sh)
# with its own functions loaded (is_service_enabled, run_process, stop_process, iniset, die,
# git_clone, echo_summary). Settings come from devstack/settings; devstack/README.md says what
# each phase does in each mode (OVSNAT_MODE neutron or standalone).

# Neutron mode's parts: the ML2 driver's configuration, the agent, the initial networks.
# shellcheck source=devstack/lib/ovsnat-neutron
source "$(dirname "${BASH_SOURCE[0]}")/lib/ovsnat-neutron"

# The controller's command line: ryu-manager from ovsnat's own virtualenv (run_process needs
# an absolute path), without eventlet's green DNS resolver (16 MB; ovsnat resolves no names).
function _ovsnat_controller_cmd {
    echo "/usr/bin/env EVENTLET_NO_GREENDNS=yes $OVSNAT_VENV/bin/ryu-manager" \
        "--config-file $OVSNAT_CONF" \
        "--ofp-listen-host $OVSNAT_OF_LISTEN_HOST --ofp-tcp-listen-port $OVSNAT_OF_PORT" \
        "ovsnat.app"
}

function _ovsnat_controller_target {
    echo "tcp:$OVSNAT_OF_LISTEN_HOST:$OVSNAT_OF_PORT"
}

# Refuse settings that would make ovsnat fight Neutron (README: "Coexisting with Neutron").
function _ovsnat_check_settings {
    local b
    if [[ "$OVSNAT_MODE" != neutron && "$OVSNAT_MODE" != standalone ]]; then
        die $LINENO "OVSNAT_MODE=$OVSNAT_MODE: neutron or standalone"
    fi
    if [[ "$OVSNAT_BRIDGE" == "$OVSNAT_PUBLIC_BRIDGE" ]]; then
        die $LINENO "OVSNAT_BRIDGE and OVSNAT_PUBLIC_BRIDGE are both $OVSNAT_BRIDGE"
    fi
    if [[ "$OVSNAT_MODE" == neutron ]]; then
        if is_service_enabled ovsnat-agent; then
            _ovsnat_neutron_conflicts
        fi
    elif is_service_enabled q-agt neutron-agent ovn-controller; then
        for b in "${OVS_BRIDGE:-br-int}" "${OVS_PHYSICAL_BRIDGE:-}" "${PUBLIC_BRIDGE:-br-ex}"; do
            if [[ "$OVSNAT_BRIDGE" == "$b" ]]; then
                die $LINENO "OVSNAT_BRIDGE=$OVSNAT_BRIDGE is a Neutron bridge: its agent owns" \
                    "the bridge's controller and deletes flows it did not write. Give ovsnat" \
                    "a bridge of its own (default br-ovsnat)."
            fi
        done
    fi
    if [[ "$OVSNAT_MODE" == standalone && -z "$OVSNAT_SNAT_IP" ]]; then
        die $LINENO "OVSNAT_SNAT_IP is empty: set this host's PAT address in local.conf" \
            "(one per host, inside $OVSNAT_EXTERNAL_CIDR, outside Neutron's allocation pool)."
    fi
    if ! [[ "$OVSNAT_CT_ZONE" =~ ^[0-9]+$ && "$OVSNAT_FIP_FRAG_CT_ZONE" =~ ^[0-9]+$ ]]; then
        die $LINENO "OVSNAT_CT_ZONE and OVSNAT_FIP_FRAG_CT_ZONE must be numbers"
    fi
    local zone
    for zone in "$OVSNAT_CT_ZONE" "$OVSNAT_FIP_FRAG_CT_ZONE"; do
        if (( zone >= 1 && zone <= 4094 )); then
            die $LINENO "conntrack zone $zone is inside 1-4094, the zones of Neutron's OVS" \
                "firewall; pick one above 4094 (default 65000/65001)."
        fi
    done
}

# --- stack install --------------------------------------------------------------------------
# Open vSwitch as devstack installs it for its own OVS agent (lib/neutron_plugins/ovs_base:
# the distribution's packages, then the service started), which devstack does only for
# q-agt, q-dhcp, q-l3 or OVN, none of which runs beside ovsnat in Neutron mode. A running
# OVS (devstack's own, or one installed before) is left as it is.
function install_ovsnat_ovs {
    if sudo ovs-vsctl --timeout=5 show >/dev/null 2>&1; then
        return
    fi
    # shellcheck disable=SC2046  # devstack's package list for openvswitch, one word each
    install_package $(get_packages openvswitch)
    if is_ubuntu; then
        restart_service openvswitch-switch
    else
        restart_service openvswitch
        sudo systemctl enable openvswitch
    fi
    sudo ovs-vsctl --timeout=30 show >/dev/null ||
        die $LINENO "Open vSwitch does not answer after its installation (ovs-vsctl show)"
}

# The same steps as scripts/install.sh, in a virtualenv of ovsnat's own (see settings).
function install_ovsnat {
    if [[ ! -d "$OVSNAT_DIR" ]]; then
        git_clone "$OVSNAT_REPO" "$OVSNAT_DIR" "$OVSNAT_BRANCH"
    fi
    if [[ ! -x "$OVSNAT_VENV/bin/python" ]]; then
        "$OVSNAT_BASE_PYTHON" -m venv "$OVSNAT_VENV" ||
            die $LINENO "cannot create the virtualenv $OVSNAT_VENV (is python3-venv installed?)"
    fi
    local pip=("$OVSNAT_VENV/bin/python" -m pip install -q --disable-pip-version-check)
    # ryu 4.34 only builds with an old setuptools and without build isolation.
    "${pip[@]}" 'setuptools<68' wheel pbr ||
        die $LINENO "pip could not install setuptools<68 into $OVSNAT_VENV"
    "${pip[@]}" --no-build-isolation -c "$OVSNAT_DIR/constraints.txt" -e "${OVSNAT_DIR}[ryu]" ||
        die $LINENO "pip could not install ovsnat[ryu] from $OVSNAT_DIR"
    # ryu-manager imports a name current eventlet lacks: ovsnat's import shim provides it.
    "$OVSNAT_VENV/bin/python" -m ovsnat.ryu_compat --install ||
        die $LINENO "could not install ovsnat's ryu import shim"
    "$OVSNAT_VENV/bin/ryu-manager" --version >/dev/null 2>&1 ||
        die $LINENO "$OVSNAT_VENV/bin/ryu-manager does not start"
}

# --- stack post-config ----------------------------------------------------------------------
# Write ovsnat.conf from the OVSNAT_* variables (option names: ovsnat/options.py). A
# [[post-config|/etc/ovsnat/ovsnat.conf]] block in local.conf is merged in after this phase.
function configure_ovsnat {
    _ovsnat_check_settings
    sudo install -d -o "$STACK_USER" "$OVSNAT_CONF_DIR"
    rm -f "$OVSNAT_CONF"
    local s=ovsnat
    iniset "$OVSNAT_CONF" $s bridge "$OVSNAT_BRIDGE"
    iniset "$OVSNAT_CONF" $s uplink_port "$OVSNAT_UPLINK_PORT"
    iniset "$OVSNAT_CONF" $s internal_cidr "$OVSNAT_INTERNAL_CIDR"
    iniset "$OVSNAT_CONF" $s internal_gateway_ip "$OVSNAT_INTERNAL_GATEWAY_IP"
    iniset "$OVSNAT_CONF" $s router_mac "$OVSNAT_ROUTER_MAC"
    iniset "$OVSNAT_CONF" $s external_cidr "$OVSNAT_EXTERNAL_CIDR"
    iniset "$OVSNAT_CONF" $s external_gateway_ip "$OVSNAT_EXTERNAL_GATEWAY_IP"
    iniset "$OVSNAT_CONF" $s external_gateway_mac "$OVSNAT_EXTERNAL_GATEWAY_MAC"
    iniset "$OVSNAT_CONF" $s snat_ip "$OVSNAT_SNAT_IP"
    iniset "$OVSNAT_CONF" $s snat_port_min "$OVSNAT_SNAT_PORT_MIN"
    iniset "$OVSNAT_CONF" $s snat_port_max "$OVSNAT_SNAT_PORT_MAX"
    iniset "$OVSNAT_CONF" $s pat_ports_per_vm "$OVSNAT_PAT_PORTS_PER_VM"
    iniset "$OVSNAT_CONF" $s ct_zone "$OVSNAT_CT_ZONE"
    iniset "$OVSNAT_CONF" $s fip_frag_ct_zone "$OVSNAT_FIP_FRAG_CT_ZONE"
    iniset "$OVSNAT_CONF" $s mac_prefix "$OVSNAT_MAC_PREFIX"
    iniset "$OVSNAT_CONF" $s fip_activation "$OVSNAT_FIP_ACTIVATION"
    iniset "$OVSNAT_CONF" $s fabric_port "$OVSNAT_FABRIC_PORT"
    iniset "$OVSNAT_CONF" $s ovsdb_connection "$OVSNAT_OVSDB_CONNECTION"
}

# ovsnat's own validation of the file as it will be started (after local.conf's merges), and
# of OVSNAT_FIP_RANGE against it and Neutron's floating IP pool: one clear message at stack
# time instead of a controller that exits at every restart.
function _ovsnat_check_config {
    local error
    error=$(OVSNAT_FIP_RANGE="$OVSNAT_FIP_RANGE" OVSNAT_MODE="$OVSNAT_MODE" \
            NEUTRON_POOL="${Q_FLOATING_ALLOCATION_POOL:-}" \
            "$OVSNAT_VENV/bin/python" - "$OVSNAT_CONF" 2>&1 <<'EOF'
import os, sys
import netaddr
from ovsnat.model import ConfigError, HostConfig, parse_ipv4
from ovsnat.options import read_ini

path = sys.argv[1]
try:
    values = read_ini(path)
    values["uplink_ofport"] = 0
    cfg = HostConfig.parse(values)
    if os.environ["OVSNAT_MODE"] == "neutron":    # FIPs and SNAT addresses are Neutron's
        sys.exit(0)
    first, dash, last = os.environ["OVSNAT_FIP_RANGE"].partition("-")
    if not dash:
        raise ConfigError(f"OVSNAT_FIP_RANGE: {os.environ['OVSNAT_FIP_RANGE']!r} is not FIRST-LAST")
    fips = netaddr.IPRange(parse_ipv4(first, "OVSNAT_FIP_RANGE"),
                           parse_ipv4(last, "OVSNAT_FIP_RANGE"))
    if fips.first <= cfg.external_cidr.first or fips.last >= cfg.external_cidr.last:
        raise ConfigError(f"OVSNAT_FIP_RANGE: {fips} is not inside the host addresses of "
                          f"external_cidr {cfg.external_cidr}")
    for name, ip in (("snat_ip", cfg.snat_ip), ("external_gateway_ip", cfg.external_gateway_ip)):
        if ip in fips:
            raise ConfigError(f"OVSNAT_FIP_RANGE: {fips} holds {name} {ip}")
    pool = dict(kv.split("=", 1) for kv in os.environ["NEUTRON_POOL"].split(",") if "=" in kv)
    if "start" in pool and "end" in pool:
        neutron = netaddr.IPRange(parse_ipv4(pool["start"], "Q_FLOATING_ALLOCATION_POOL"),
                                  parse_ipv4(pool["end"], "Q_FLOATING_ALLOCATION_POOL"))
        if cfg.snat_ip in neutron:
            raise ConfigError(f"snat_ip: {cfg.snat_ip} is inside Neutron's "
                              f"Q_FLOATING_ALLOCATION_POOL {neutron}")
        if fips.first <= neutron.last and neutron.first <= fips.last:
            raise ConfigError(f"OVSNAT_FIP_RANGE: {fips} overlaps Neutron's "
                              f"Q_FLOATING_ALLOCATION_POOL {neutron}: its L3 agent could "
                              "NAT those addresses too")
except (ValueError, OSError, netaddr.AddrFormatError) as e:
    sys.exit(f"{path}: {e}")
EOF
    ) || die $LINENO "invalid ovsnat configuration: $error"
}

# --- stack extra ----------------------------------------------------------------------------
# ovsnat's bridge: secure fail mode (no flows: no traffic, never a flooding learning switch),
# OpenFlow 1.3, no in-band, and its uplink.
function _ovsnat_create_bridge {
    sudo ovs-vsctl --may-exist add-br "$OVSNAT_BRIDGE" \
        -- set Bridge "$OVSNAT_BRIDGE" fail_mode=secure protocols=OpenFlow13 \
        "datapath_type=$OVSNAT_DATAPATH_TYPE" other_config:disable-in-band=true
    if [[ -n "$OVSNAT_PUBLIC_BRIDGE" ]]; then
        sudo ovs-vsctl br-exists "$OVSNAT_PUBLIC_BRIDGE" ||
            die $LINENO "OVSNAT_PUBLIC_BRIDGE=$OVSNAT_PUBLIC_BRIDGE does not exist: point it at" \
                "the bridge that reaches the external network, or set it to \"\" and" \
                "OVSNAT_UPLINK_PORT to a NIC on that network"
        # A patch pair: OVSNAT_UPLINK_PORT on ovsnat's bridge, its peer on the public bridge
        # (an ordinary port there; ovsnat writes no flow on that bridge).
        sudo ovs-vsctl \
            -- --may-exist add-port "$OVSNAT_BRIDGE" "$OVSNAT_UPLINK_PORT" \
            -- set Interface "$OVSNAT_UPLINK_PORT" type=patch \
               "options:peer=$OVSNAT_PUBLIC_PEER_PORT" \
            -- --may-exist add-port "$OVSNAT_PUBLIC_BRIDGE" "$OVSNAT_PUBLIC_PEER_PORT" \
            -- set Interface "$OVSNAT_PUBLIC_PEER_PORT" type=patch \
               "options:peer=$OVSNAT_UPLINK_PORT"
    else
        ip link show "$OVSNAT_UPLINK_PORT" >/dev/null 2>&1 ||
            die $LINENO "OVSNAT_UPLINK_PORT=$OVSNAT_UPLINK_PORT is not a network interface"
        sudo ovs-vsctl --may-exist add-port "$OVSNAT_BRIDGE" "$OVSNAT_UPLINK_PORT"
    fi
    if [[ -n "$OVSNAT_FABRIC_PORT" ]]; then
        ip link show "$OVSNAT_FABRIC_PORT" >/dev/null 2>&1 ||
            die $LINENO "OVSNAT_FABRIC_PORT=$OVSNAT_FABRIC_PORT is not a network interface"
        sudo ovs-vsctl --may-exist add-port "$OVSNAT_BRIDGE" "$OVSNAT_FABRIC_PORT"
    fi
}

# Point the bridge at the controller. Started first (run_process), then set-controller with
# max_backoff=1000, so OVS connects within a second instead of backing off for 8 s. A bridge
# that already points at ovsnat is left alone: rewriting its Controller row is needless churn.
# A bridge with someone else's controller is refused, never taken over.
function _ovsnat_set_controller {
    local target current
    target=$(_ovsnat_controller_target)
    current=$(sudo ovs-vsctl get-controller "$OVSNAT_BRIDGE")
    current=${current//[[:space:]]/}
    if [[ -n "$current" && "$current" != "$target" ]]; then
        die $LINENO "bridge $OVSNAT_BRIDGE already has controller $current; ovsnat needs a" \
            "bridge of its own (expected $target or none)"
    fi
    if [[ -z "$current" ]]; then
        sudo ovs-vsctl set-controller "$OVSNAT_BRIDGE" "$target"
    fi
    sudo ovs-vsctl set Controller "$OVSNAT_BRIDGE" max_backoff=1000 inactivity_probe=5000 \
        -- set Bridge "$OVSNAT_BRIDGE" fail_mode=secure
}

function start_ovsnat {
    _ovsnat_check_settings
    _ovsnat_check_config
    _ovsnat_create_bridge
    # As root: the controller reads the local OVSDB socket, which only root may open.
    run_process ovsnat "$(_ovsnat_controller_cmd)" "" root
    _ovsnat_set_controller
}

# --- unstack --------------------------------------------------------------------------------
# Stop the process only. The bridge keeps its Controller row and its flows: with
# fail_mode=secure, flows survive a controller that is away, so FIPs and established PAT
# sessions keep working, and the next stack.sh resyncs by diff (nothing is sent when nothing
# changed). Deleting the bridge's last Controller row (ovs-vsctl del-controller) would make
# ovs-vswitchd flush every flow of the bridge: every VM on it would lose its NAT, and in
# secure mode all of its traffic.
function stop_ovsnat {
    stop_process ovsnat
}

# --- clean ----------------------------------------------------------------------------------
# clean.sh removes state on purpose: the bridge (its flows and controller go with it), the
# patch peer, ovsnat's PAT conntrack entries, the config and the virtualenv.
function cleanup_ovsnat {
    if [[ -n "$OVSNAT_PUBLIC_BRIDGE" ]]; then
        sudo ovs-vsctl --if-exists del-port "$OVSNAT_PUBLIC_BRIDGE" "$OVSNAT_PUBLIC_PEER_PORT"
    fi
    sudo ovs-vsctl --if-exists del-br "$OVSNAT_BRIDGE"
    local zone
    for zone in "$OVSNAT_CT_ZONE" "$OVSNAT_FIP_FRAG_CT_ZONE"; do
        sudo ovs-appctl dpctl/flush-conntrack "zone=$zone" >/dev/null 2>&1 || true
    done
    sudo rm -rf "$OVSNAT_CONF_DIR"
    rm -rf "$OVSNAT_VENV"
}

# --- dispatch -------------------------------------------------------------------------------
# ovsnat: the controller (both modes); ovsnat-agent and ovsnat-ml2: Neutron mode's parts
# (devstack/lib/ovsnat-neutron). The agent starts after the controller, which marks the ports
# whose flows are in (the agent reports those up to Neutron).
if [[ "${1:-}" == "stack" && "${2:-}" == "pre-install" ]]; then
    if [[ "$OVSNAT_MODE" == neutron ]] && is_service_enabled ovsnat-agent ovsnat-ml2; then
        _ovsnat_neutron_check_node
    fi
elif [[ "${1:-}" == "stack" && "${2:-}" == "install" ]]; then
    if is_service_enabled ovsnat; then
        echo_summary "Installing Open vSwitch and ovsnat"
        install_ovsnat_ovs
        install_ovsnat
    fi
    if is_service_enabled ovsnat-agent ovsnat-ml2; then
        echo_summary "Installing ovsnat into Neutron's environment"
        install_ovsnat_neutron
    fi
elif [[ "${1:-}" == "stack" && "${2:-}" == "post-config" ]]; then
    if is_service_enabled ovsnat; then
        echo_summary "Configuring ovsnat"
        configure_ovsnat
    fi
    if is_service_enabled ovsnat-ml2; then
        echo_summary "Configuring ML2 for ovsnat"
        configure_ovsnat_ml2
    fi
    if is_service_enabled ovsnat-agent; then
        configure_ovsnat_agent
    fi
elif [[ "${1:-}" == "stack" && "${2:-}" == "extra" ]]; then
    if is_service_enabled ovsnat; then
        echo_summary "Starting ovsnat"
        start_ovsnat
    fi
    if is_service_enabled ovsnat-agent; then
        echo_summary "Starting ovsnat-neutron-agent"
        start_ovsnat_agent
    fi
    if is_service_enabled ovsnat-ml2 && [[ "$OVSNAT_CREATE_NETWORKS" == True ]]; then
        echo_summary "Creating the networks ovsnat serves"
        create_ovsnat_networks
    fi
elif [[ "${1:-}" == "unstack" ]]; then
    if is_service_enabled ovsnat-agent; then
        stop_process ovsnat-agent
    fi
    if is_service_enabled ovsnat; then
        stop_ovsnat
    fi
elif [[ "${1:-}" == "clean" ]]; then
    if is_service_enabled ovsnat; then
        cleanup_ovsnat
    fi
    if is_service_enabled ovsnat-agent; then
        cleanup_ovsnat_neutron
    fi
fi
