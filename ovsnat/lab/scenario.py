"""NAT scenarios on the lab: host configs, VM ports and flows, shared by tests, the demo and
the benchmarks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from ovsnat.compile.compiler import compile_state
from ovsnat.compile.flows import Flow, ofctl_text
from ovsnat.compile.punt_flows import METERS
from ovsnat.core.state import build_state
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import (
    BRIDGE,
    EXTERNAL_CIDR,
    INTERNAL_GW,
    INTERNAL_PREFIX,
    ROUTER_IP,
    UPLINK,
    Lab,
    Vm,
)
from ovsnat.model import DesiredState, HostConfig, PortError, Rejection, VmPort

ROUTER_MAC = "02:00:00:00:00:01"  # the VMs' gateway MAC (answered by ovsnat)


def outside_router_mac(lab: Lab) -> str:
    out = run(["ip", "-n", lab.out_ns, "link", "show", "eth0"]).stdout
    return re.search(r"link/ether (\S+)", out).group(1)


def host_options(lab: Lab, host: str, snat_ip: str, **overrides) -> dict:
    """The `[ovsnat]` options for a lab host, as an operator would write them."""
    options = {
        "bridge": BRIDGE,
        "uplink_port": UPLINK,
        "internal_cidr": f"10.0.0.0/{INTERNAL_PREFIX}",
        "internal_gateway_ip": INTERNAL_GW,
        "router_mac": ROUTER_MAC,
        "external_cidr": EXTERNAL_CIDR,
        "external_gateway_ip": ROUTER_IP,
        "external_gateway_mac": outside_router_mac(lab),
        "snat_ip": snat_ip,
        "snat_port_min": 20000,
        "snat_port_max": 29999,
        "ct_zone": 65000,
        "fip_frag_ct_zone": 65001,
        "pat_ports_per_vm": 0,
    }
    options.update(overrides)
    return options


def host_config(lab: Lab, host: str, snat_ip: str, **overrides) -> HostConfig:
    options = host_options(lab, host, snat_ip, **overrides)
    options["uplink_ofport"] = lab.hosts[host].ofport(UPLINK)
    return HostConfig.parse(options)


def vm_port(lab: Lab, vm: Vm) -> VmPort:
    ids = {"iface-id": vm.name, "attached-mac": vm.mac, **vm.external_ids}
    return VmPort.from_external_ids(vm.tap, lab.hosts[vm.host].ofport(vm.tap), ids)


def desired_state(lab: Lab, host: str, cfg: HostConfig) -> DesiredState:
    """From the lab's records of the VMs it plugged on `host`."""
    return build_state(cfg, [vm_port(lab, vm) for vm in lab.vms.values() if vm.host == host])


def ovsdb_rows(lab: Lab, host: str) -> dict[str, tuple[int, dict]]:
    """Interface name -> (ofport, external_ids) of br-int's ports, read from OVSDB."""
    h = lab.hosts[host]
    rows = {}
    for port in h.vsctl("list-ports", BRIDGE).split():
        out = json.loads(
            h.vsctl(
                "--format=json", "--columns=name,ofport,external_ids", "list", "Interface", port
            )
        )
        name, ofport, ids = out["data"][0]
        rows[name] = (ofport if isinstance(ofport, int) else -1, dict(ids[1]))
    return rows


def desired_state_from_ovsdb(lab: Lab, host: str, cfg: HostConfig) -> DesiredState:
    """What the controller should program, from what OVSDB says now (the controller's
    own view), with the same parsing and clash rules."""
    ports = []
    for name, (ofport, ids) in sorted(ovsdb_rows(lab, host).items()):
        if "ovsnat-fixed-ip" not in ids and "ovsnat-fip" not in ids:
            continue
        try:
            ports.append(VmPort.from_external_ids(name, ofport, ids))
        except PortError as e:
            ports.append(Rejection(name, str(e)))
    return build_state(cfg, ports)


def program_with_ofctl(lab: Lab, host: str, cfg: HostConfig) -> list[Flow]:
    """Compile the host's flows and install them with `ovs-ofctl --bundle` (no controller)."""
    flows = compile_state(desired_state(lab, host, cfg))
    install_meters(lab.hosts[host])
    lab.hosts[host].install_flows(ofctl_text(flows))
    return flows


def install_meters(host) -> None:
    existing = host.ofctl("dump-meters", BRIDGE)
    for meter in METERS:
        if meter.text().split(",")[0] + " " not in existing:
            host.ofctl("add-meter", BRIDGE, meter.text())


def flow_packets(lab: Lab, host: str, table: int, *contains: str) -> int:
    """Sum of n_packets over the flows of `table` whose dump line holds every `contains`
    substring (e.g. "priority=0" for the table's default drop)."""
    out = lab.hosts[host].ofctl("dump-flows", BRIDGE, f"table={table}")
    return sum(
        int(m.group(1))
        for line in out.splitlines()
        if all(c in line for c in contains)
        for m in [re.search(r"n_packets=(\d+)", line)]
        if m
    )


# --- the controller on a lab host ----------------------------------------------------------
OF_PORT = 6653


def write_config(lab: Lab, host: str, snat_ip: str, **overrides) -> str:
    """Write the host's ovsnat.conf (as an operator would) and return its path."""
    options = host_options(lab, host, snat_ip, **overrides)
    options["ovsdb_connection"] = f"unix:{lab.hosts[host].ovs.db_sock}"
    options["status_file"] = os.path.join(lab.hosts[host].rundir, "ovsnat-status.json")
    path = os.path.join(lab.hosts[host].rundir, "ovsnat.conf")
    with open(path, "w") as f:
        f.write(
            "[ovsnat]\n" + "".join(f"{k} = {'' if v is None else v}\n" for k, v in options.items())
        )
    return path


# How ovsnat's controller is meant to run (README): eventlet's green DNS resolver imports
# dnspython, 16 MB of RSS for a process that resolves no names (OVSDB and OpenFlow remotes
# are addresses or unix sockets).
CONTROLLER_ENV = {"EVENTLET_NO_GREENDNS": "yes"}


def controller_argv(conf: str, framework: str = "ryu") -> list[str]:
    bindir = os.path.dirname(sys.executable)
    program = "ryu-manager" if framework == "ryu" else "ovsnat-agent"
    argv = [
        os.path.join(bindir, program),
        "--config-file",
        conf,
        "--ofp-listen-host",
        "127.0.0.1",
        "--ofp-tcp-listen-port",
        str(OF_PORT),
    ]
    return argv + (["ovsnat.app"] if framework == "ryu" else [])


def start_controller(
    lab: Lab,
    host: str,
    snat_ip: str | None = None,
    framework: str = "ryu",
    point_bridge: bool = True,
    ovs_env: bool = True,
    **overrides,
) -> str:
    """Start ovsnat's controller inside the host's namespace (listening on its loopback) and
    point br-int at it. Returns the process name in lab.procs (its log is beside it).
    ovs_env=False: without the host's OVS_RUNDIR (and OVS_LOGDIR, OVS_DBDIR) in its
    environment, as a controller started by hand or by a unit file that does not set it."""
    h = lab.hosts[host]
    conf = os.path.join(h.rundir, "ovsnat.conf")
    if snat_ip is not None or not os.path.exists(conf):
        conf = write_config(lab, host, snat_ip, **overrides)
    name = f"ctl-{host}"
    env = (
        {**h.ovs.env, **CONTROLLER_ENV}
        if ovs_env
        else {**CONTROLLER_ENV, **{k: "" for k in h.ovs.env}}
    )
    lab.spawn(name, controller_argv(conf, framework), ns=h.ns, env=env)
    if point_bridge and not h.vsctl("get-controller", BRIDGE).strip():
        point_bridge_at_controller(h)
    return name


def controller_row_args() -> list[str]:
    """ovs-vsctl arguments pointing br-int at the controller, as the README does: one
    transaction creating the Controller row with its settings. max_backoff=1000: reconnect
    within a second of a restarted controller. OVS 3.1 applies it to the connection only in
    a reconfiguration made while connected; the controller asks for one once in sync
    (ovsnat.core.effects.Reconfigure), so it holds after ovs-vswitchd restarts too."""
    return [
        "--",
        "--id=@c",
        "create",
        "Controller",
        f'target="tcp:127.0.0.1:{OF_PORT}"',
        "max_backoff=1000",
        "inactivity_probe=5000",
        "--",
        "set",
        "Bridge",
        BRIDGE,
        "controller=@c",
    ]


def point_bridge_at_controller(h) -> None:
    h.vsctl(*controller_row_args())


def stop_controller(lab: Lab, host: str) -> None:
    """Stop the process only: the bridge keeps its Controller row (removing the last one
    makes ovs-vswitchd flush every flow) and its flows (fail_mode=secure)."""
    lab.stop_proc(f"ctl-{host}")


def status(lab: Lab, host: str) -> dict:
    """The controller's status file (rewritten every second; {} before the first)."""
    try:
        with open(os.path.join(lab.hosts[host].rundir, "ovsnat-status.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def wait_in_sync(lab: Lab, host: str, timeout: float = 30) -> dict:
    """Until the host's controller is connected to its switch and in sync (its status file
    says so). A controller needs a few seconds to start on a loaded machine: a test that
    moves a VM to a host whose controller is not up yet measures the start, not ovsnat."""
    return wait_for(
        lambda: (lambda st: st if st.get("datapath") and st.get("in_sync") else None)(
            status(lab, host)
        ),
        timeout,
        what=f"{host}'s controller in sync",
    )


def cli(lab: Lab, host: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The `ovsnat` command on `host`, as its operator runs it (its config, its OVS)."""
    h = lab.hosts[host]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ovsnat.cli",
            *args,
            "--config",
            os.path.join(h.rundir, "ovsnat.conf"),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, **h.ovs.env),
        timeout=timeout,
    )


def controller_log(lab: Lab, host: str) -> str:
    info = lab.procs.get(f"ctl-{host}")
    path = info["log"] if info else os.path.join(lab.dir, f"ctl-{host}.log")
    return open(path).read() if os.path.exists(path) else ""


def counter_reaches(
    lab: Lab, host: str, table: int, target: int, *contains: str, timeout: float = 5.0
) -> int:
    """Wait until flow_packets(...) >= target and return it. OVS folds datapath hits into
    OpenFlow counters periodically (revalidation), not at once, so a counter read right
    after the packets were sent may lag."""
    from ovsnat.lab.sh import LabError, wait_for

    try:
        return wait_for(
            lambda: (n := flow_packets(lab, host, table, *contains)) >= target and n,
            timeout,
            interval=0.1,
            what="a flow counter",
        )
    except LabError:
        return flow_packets(lab, host, table, *contains)
