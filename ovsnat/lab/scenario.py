"""NAT scenarios on the lab: host configs, VM ports and flows, shared by tests, the demo and
the benchmarks."""

from __future__ import annotations

import re

from ovsnat.compiler import METERS, compile_state
from ovsnat.flows import Flow, ofctl_text
from ovsnat.lab.sh import run
from ovsnat.lab.topology import BRIDGE, EXTERNAL_CIDR, INTERNAL_GW, INTERNAL_PREFIX, ROUTER_IP, \
    UPLINK, Lab, Vm
from ovsnat.model import DesiredState, HostConfig, VmPort, build_state

ROUTER_MAC = "02:00:00:00:00:01"        # the VMs' gateway MAC (answered by ovsnat)


def outside_router_mac(lab: Lab) -> str:
    out = run(["ip", "-n", lab.out_ns, "link", "show", "eth0"]).stdout
    return re.search(r"link/ether (\S+)", out).group(1)


def host_options(lab: Lab, host: str, snat_ip: str, **overrides) -> dict:
    """The `[ovsnat]` options for a lab host, as an operator would write them."""
    options = {
        "bridge": BRIDGE, "uplink_port": UPLINK,
        "internal_cidr": f"10.0.0.0/{INTERNAL_PREFIX}", "internal_gateway_ip": INTERNAL_GW,
        "router_mac": ROUTER_MAC, "external_cidr": EXTERNAL_CIDR,
        "external_gateway_ip": ROUTER_IP, "external_gateway_mac": outside_router_mac(lab),
        "snat_ip": snat_ip, "snat_port_min": 20000, "snat_port_max": 29999,
        "ct_zone": 65000, "fip_frag_ct_zone": 65001, "pat_ports_per_vm": 0,
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
    return build_state(cfg, [vm_port(lab, vm) for vm in lab.vms.values() if vm.host == host])


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
    return sum(int(m.group(1)) for line in out.splitlines()
               if all(c in line for c in contains)
               for m in [re.search(r"n_packets=(\d+)", line)] if m)
