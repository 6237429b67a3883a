"""A network's own flows: its gateway, its fabric segment, its way into and out of PAT, its
part of east-west routing. They exist while the network has an accepted port on this host
(the default network's always), and depend on nothing but the host config, the network,
its routing and its router's tag (docs/routers.md)."""

from __future__ import annotations

from ovsnat.compile import eastwest, handoff_flows
from ovsnat.compile.actions import Ct, CtClear, Goto, Load, Nat, PopVlan
from ovsnat.compile.flows import COOKIE_NET, NO_VLAN, Flow, Match, make_flow, owner_cookie
from ovsnat.compile.pipeline import (
    CLASSIFY,
    DELIVER,
    EGRESS,
    FABRIC_IN,
    FROM_FABRIC,
    NET_PAT_DONE,
    NET_PAT_IN,
    NET_PAT_OUT,
    PAT_IN_NET,
    PAT_OUT,
    ROUTED,
    TO_KEY_ARP,
    VM_ARP,
    VM_L2,
    VM_ROUTE,
    no_flag,
    reg6,
)
from ovsnat.compile.shared import arp_reply, fabric_out
from ovsnat.model import HostConfig, mac_str, networks
from ovsnat.model.networks import Network
from ovsnat.model.routing import LEGACY, Routing


def network_flows(
    cfg: HostConfig, net: Network, route: Routing = LEGACY, ew_tag: int = 0
) -> list[Flow]:
    """A network's own flows: its gateway, its fabric segment, its way into and out of PAT.
    The untagged network goes straight to the shared PAT zone; a VLAN network first through
    its own zone, to its transit address, so overlapping fixed IPs never meet there. Its
    routing (docs/routers.md) decides what its gateway does: on no router, nothing routed
    (the gateway's ARP is still answered: it is the DHCP server's identifier); without PAT,
    nothing leaves but through a FIP; routed east-west (`ew_tag`, its router's tag when
    its key defines it as its ports do: ovsnat.compile.eastwest), its routed packets look
    for the router's other networks first."""
    c = owner_cookie(COOKIE_NET, net.id)
    r6 = reg6(net)
    gw = str(net.gateway)
    flows = [
        make_flow(
            c,
            VM_ARP,
            200,
            Match.of(proto="arp", reg5=no_flag(FROM_FABRIC), reg6=r6, arp_tpa=gw, arp_op=1),
            arp_reply(mac_str(cfg.router_mac), gw),
        ),
    ]
    if not route.routed:  # above conn_limit's counting (110): nothing to count
        router = mac_str(cfg.router_mac)
        flows.append(make_flow(c, VM_ROUTE, 120, Match.of(proto="ip", reg6=r6, dl_dst=router), []))
    else:
        flows.append(make_flow(c, EGRESS, 250, Match.of(proto="ip", reg6=r6, nw_dst=net.cidr), []))
    if route.pat:
        flows += _pat_flows(cfg, net, c, cfg.external_vlan(route.external))
    elif route.routed:  # counted apart from the table's default drop
        flows.append(make_flow(c, EGRESS, 50, Match.of(proto="ip", reg6=r6), []))
    flows += eastwest.network_part(cfg, net, ew_tag, c)
    return flows + _fabric_flows(cfg, net, c, ew_tag)


def _pat_flows(cfg: HostConfig, net: Network, c: int, ext_vlan: int) -> list[Flow]:
    """The network's way into PAT and the way back for its replies. `ext_vlan`: its
    router's gateway network's VLAN, which picks the SNAT address (ovsnat.compile.ext_flows;
    0: the untagged network's)."""
    r6 = reg6(net)
    ext = [Load("reg2", ext_vlan)] if ext_vlan else []
    if net.vlan is None:
        return [
            make_flow(
                c,
                EGRESS,
                50,
                Match.of(proto="ip", reg6=r6),
                [*ext, Ct(zone=cfg.ct_zone, table=PAT_OUT, nat=Nat())],
            ),
            make_flow(
                c,
                PAT_IN_NET,
                100,
                Match.of(proto="ip", nw_dst=net.cidr),
                [Load("reg6", 0), Goto(DELIVER)],
            ),
        ]
    zone = networks.zone(cfg.network_ct_zone_base, net)
    return [
        make_flow(
            c,
            EGRESS,
            50,
            Match.of(proto="ip", reg6=r6),
            [*ext, Ct(zone=zone, table=NET_PAT_OUT, nat=Nat())],
        ),
        make_flow(
            c,
            NET_PAT_OUT,
            50,
            Match.of(ct_state="+new+trk", proto="ip", reg6=r6, **handoff_flows.not_handed(cfg)),
            [
                Ct(
                    zone=zone,
                    table=NET_PAT_DONE,
                    commit=True,
                    nat=Nat("src", str(networks.transit(cfg.transit_cidr, net))),
                )
            ],
        ),
        make_flow(
            c,
            PAT_IN_NET,
            100,
            Match.of(proto="ip", nw_dst=networks.transit_range(cfg.transit_cidr, net)),
            [Load("reg6", net.id), CtClear(), Ct(zone=zone, table=NET_PAT_IN, nat=Nat())],
        ),
    ]


def _fabric_flows(cfg: HostConfig, net: Network, c: int, ew_tag: int) -> list[Flow]:
    """The network's segment of the fabric: in from it, ARP and switched IP out to it."""
    if not cfg.fabric_ofport:
        return []
    r6 = reg6(net)
    from_fabric = (
        Match.of(in_port=cfg.fabric_ofport, dl_vlan=net.vlan)
        if net.vlan
        else Match.of(in_port=cfg.fabric_ofport, vlan_tci=NO_VLAN)
    )
    tag = ([PopVlan(), Load("reg6", net.id)] if net.vlan else []) + eastwest.classify_tag(ew_tag)
    return [
        make_flow(
            c, CLASSIFY, 100, from_fabric, tag + [Load("reg5", 1, FROM_FABRIC), Goto(FABRIC_IN)]
        ),
        # ARP from a local VM reaches the fabric as a switch floods it (GARPs, requests
        # for VMs elsewhere), then goes on to local delivery.
        make_flow(
            c,
            VM_ARP,
            100,
            Match.of(proto="arp", reg5=no_flag(FROM_FABRIC), reg6=r6),
            fabric_out(cfg, net) + ([PopVlan()] if net.vlan else []) + [TO_KEY_ARP, Goto(VM_L2)],
        ),
        make_flow(
            c,
            VM_L2,
            50,
            Match.of(proto="ip", reg5=no_flag(ROUTED), reg6=r6),
            fabric_out(cfg, net),
        ),
    ]
