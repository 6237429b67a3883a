"""The flow compiler: desired state in, flows out. Pure and deterministic.

Three kinds of owner, each compiled on its own: host-level flows depend only on the host
config; a network's flows on the config and the network; a VM's flows on the config, its
network and the VM. So one port event recomputes one VM's flows (O(1)), a network's flows
appear with its first VM here and go with its last, and adding or removing a VM never
touches another VM's flows. flows/pipeline.md walks through every table.
"""

from __future__ import annotations

from collections.abc import Iterable

from ovsnat.compile import eastwest, flowident, portsec
from ovsnat.compile.flows import Flow
from ovsnat.compile.host import host_flows
from ovsnat.compile.network import network_flows
from ovsnat.compile.sg_owners import SecurityOwners
from ovsnat.compile.tables import check_flow
from ovsnat.compile.vm import vm_flows
from ovsnat.model import DesiredState


def compile_state(state: DesiredState, check: bool = True) -> list[Flow]:
    """Every flow of the host, in a stable order (table, -priority, text): each owner's,
    settled as the controller settles them (ovsnat.compile.flowident)."""
    cfg = state.config
    nets = {vm.net(cfg) for vm in state.vms} | ({cfg.default_network} - {None})
    sg = SecurityOwners(state.security)
    for vm in state.vms:
        sg.use(vm.name, port_profile(vm))
    routing = state.routing
    ew = eastwest.plan(cfg, routing, {net.name: net for net in nets})
    flows = flowident.resolve(
        [
            (flowident.HOST, host_flows(cfg)),
            *(
                (
                    ("net", net.name),
                    network_flows(cfg, net, routing.of(net.name), ew.local.get(net.name, 0)),
                )
                for net in nets
            ),
            *((vm.name, vm_flows(cfg, vm, vm.net(cfg))) for vm in state.vms),
            *((owner, sg.flows(owner)) for owner in sg.owners()),
            *vip_owners(cfg, state.vms),
            *((o, eastwest.owner_flows(cfg, routing, ew, o)) for o in ew.owners(cfg)),
        ]
    )
    if check:
        for flow in flows:
            check_flow(flow)
    return sort_flows(flows)


def vip_owners(cfg, vms) -> list:
    """The VIPs' shared flows (ovsnat.compile.portsec), nobody having spoken from one yet."""
    ports: dict = {}
    for vm in sorted(vms, key=lambda v: v.name):
        for vip in portsec.vip_addresses(vm):
            ports.setdefault(vip, []).append((vm, vm.net(cfg)))
    return [
        (("vip", int(vip)), portsec.vip_owner_flows(cfg, vip, members))
        for vip, members in sorted(ports.items())
    ]


def port_profile(vm) -> tuple[str, ...] | None:
    """The groups whose profile a port uses (None: unfiltered, or sending nothing)."""
    sec = vm.security
    return sec.groups if sec.filtered and not sec.admin_down else None


def sort_flows(flows: Iterable[Flow]) -> list[Flow]:
    return sorted(flows, key=lambda f: (f.table, -f.priority, f.body()))
