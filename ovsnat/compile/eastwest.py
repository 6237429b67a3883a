"""East-west routing between the networks of one router, on the sending VM's host
(docs/routers.md, item 2; walk in flows/pipeline.md).

A VM's packet to its gateway whose network is routed east-west here gets its router's tag
(register 3) in vm_route and looks the destination up in `ew_route`, one flow per network
of that router: there it takes the destination's network and goes to `deliver` like any
routed packet (router MAC as source, TTL decremented once), and `vm_l2` hands it to a local
VM (through its security groups) or, for a remote neighbour, out on the fabric in the
network's VLAN with this host's routed MAC as source and the neighbour's MAC as
destination. From the fabric, a frame from another host's routed MAC goes through
`ew_in` (its source must be in a network of the destination's router) and `ew_in_port`
(its destination must be a local VM's MAC), its source becoming the router MAC; a
routed-looking frame (its source in another network of the router) from any other MAC is
dropped in `fabric_in`.

Owners: a local network's part is in its own flows (ovsnat.compile.network); each network
routed to from here (a network of a router with a local network) owns its destination,
guard and neighbour flows (("ew", name), cookie kind 0xac, owner its VLAN); the hosts'
routed MACs are one owner (("hostmacs", ""), kind 0xad); each VM its ew_in_port flow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ovsnat.compile.actions import Ct, Goto, Load, Move, SetField
from ovsnat.compile.flows import COOKIE_EW, COOKIE_HOSTMACS, Flow, Match, make_flow, owner_cookie
from ovsnat.compile.pipeline import (
    CONN_COUNT,
    DELIVER,
    EGRESS,
    EW_IN,
    EW_IN_PORT,
    EW_ROUTE,
    FABRIC_IN,
    FROM_FABRIC,
    ROUTED,
    TO_KEY_IP,
    VM_L2,
    VM_ROUTE,
    declare,
    reg6,
)
from ovsnat.compile.shared import fabric_out
from ovsnat.model import HostConfig, VmPort, mac_str
from ovsnat.model.networks import Network
from ovsnat.model.routing import HostRouting, Routing
from ovsnat.model.validate import network_problem

TABLES = (
    declare(
        EW_IN,
        "ew_in",
        "A frame from another host's routed MAC: only IP whose source is in a network of "
        "the router of the network it arrived in goes on (networks of different routers "
        "never meet); anything else is dropped.",
        "proto reg3 nw_src",
        {Goto},
        {EW_IN_PORT},
    ),
    declare(
        EW_IN_PORT,
        "ew_in_port",
        "A routed frame from another host, to a local VM's MAC (one flow per VM): its "
        "source becomes the router MAC and it is delivered by vm_l2 as routed; to any other "
        "MAC it is dropped.",
        "proto reg6 dl_dst",
        {SetField, Load, Move, Goto},
        {VM_L2},
    ),
    declare(
        EW_ROUTE,
        "ew_route",
        "East-west: TTL 0 and 1 go on to egress (dropped or answered there); a destination "
        "in the sender's own network too (egress drops it); a destination in another network "
        "of the sender's router (reg3; one flow per network) takes that network (reg6) and "
        "is delivered as routed (deliver, vm_l2: to a local VM, or to a remote one over the "
        "fabric); anything else goes on to egress (through the VM's counting zone when it "
        "has a connection limit).",
        "proto reg3 reg5 reg6 nw_dst nw_ttl",
        {Load, Goto, Ct},
        {CONN_COUNT, EGRESS, DELIVER},
    ),
)
HOSTMACS = ("hostmacs", "")
# vm_l2's neighbour flows: routed here (ROUTED), never a frame from the fabric (which a
# neighbour flow would send back to it).
ROUTED_HERE = f"{1 << ROUTED:#x}/{1 << ROUTED | 1 << FROM_FABRIC:#x}"


@dataclass(frozen=True)
class Plan:
    """Which networks are routed east-west here. `local`: this host's networks that are
    (name -> their router's tag); `dests`: every network they may reach (of a router with
    a local network here, the local ones included); `problems`: networks left out because
    of this host (a key that defines a network otherwise than its ports do, names a VLAN
    a local network of another name has, or what the host reserves)."""

    local: Mapping[str, int] = field(default_factory=dict)
    dests: Mapping[str, Routing] = field(default_factory=dict)
    problems: Mapping[str, str] = field(default_factory=dict)

    def owners(self, cfg: HostConfig) -> list:
        names = [("ew", n) for n in sorted(self.dests)]
        return names + ([HOSTMACS] if self.local and cfg.fabric_ofport else [])


NO_PLAN = Plan()


def plan(cfg: HostConfig, routing: HostRouting, local: Mapping[str, Network]) -> Plan:
    """The plan from the bridge's keys and this host's networks (name -> definition, the
    default network's too). A network with no port here is held to what the host reserves
    as a port's network is (ovsnat.model.validate.network_problem)."""
    tags: dict[str, int] = {}
    kept: dict[str, Routing] = {}
    problems: dict[str, str] = {}
    by_id = {n.id: n for n in local.values()}
    for name, r in sorted(routing.east_west().items()):
        reserved = name not in local and network_problem(name, r.net.cidr, r.net.vlan, cfg.limits)
        if reserved:
            problems[name] = f"{reserved}; not routed east-west"
            continue
        if name in local and local[name] != r.net:
            mine = local[name]
            problems[name] = (
                f"network {name}: its ports define it as {mine.cidr} (gateway {mine.gateway}, "
                f"VLAN {mine.vlan or '-'}), its key as {r.net.cidr} (gateway {r.net.gateway}, "
                f"VLAN {r.net.vlan or '-'}); not routed east-west"
            )
            continue
        other = by_id.get(r.net.id)
        if name not in local and other is not None:
            problems[name] = (
                f"network {name}: VLAN {r.net.vlan or '-'} is network {other.label}'s on "
                "this host; not routed east-west"
            )
            continue
        kept[name] = r
        if name in local:
            tags[name] = r.tag
    present = {kept[n].router for n in tags}
    dests = {n: r for n, r in kept.items() if r.router in present}
    return Plan(tags, dests, problems)


def inputs(cfg: HostConfig, routing: HostRouting, p: Plan, owner) -> tuple:
    """What one of the plan's owners' flows depend on (the same inputs, the same flows)."""
    if owner == HOSTMACS:
        return (owner in p.owners(cfg), routing.hosts)
    name = owner[1]
    return (p.dests.get(name), routing.neighbours.get(name, ()), routing.hosts.mac)


def owner_flows(cfg: HostConfig, routing: HostRouting, p: Plan, owner) -> list[Flow]:
    """The flows of one of the plan's owners."""
    if owner == HOSTMACS:
        return hostmac_flows(cfg, routing) if owner in p.owners(cfg) else []
    route = p.dests.get(owner[1])
    if route is None:
        return []
    return dest_flows(cfg, route, routing.neighbours.get(owner[1], ()), routing.hosts.mac)


# --- a local network's part (owned by the network) -----------------------------------------
def network_part(cfg: HostConfig, net: Network, tag: int, c: int) -> list[Flow]:
    """Its routed packets tagged with its router and looked up in ew_route (above
    conn_limit's counting, which ew_route's miss does); its own addresses through the
    gateway go on to egress's drop; from the fabric, its own sources are switched traffic,
    not routed-looking."""
    if not tag:
        return []
    r6, router = reg6(net), mac_str(cfg.router_mac)
    flows = [
        make_flow(
            c,
            VM_ROUTE,
            115,
            Match.of(proto="ip", reg6=r6, dl_dst=router),
            [Load("reg3", tag), Goto(EW_ROUTE)],
        ),
        make_flow(c, EW_ROUTE, 200, Match.of(proto="ip", reg6=r6, nw_dst=net.cidr), [Goto(EGRESS)]),
    ]
    if cfg.fabric_ofport:
        own = Match.of(proto="ip", reg6=r6, nw_src=net.cidr)
        flows.append(make_flow(c, FABRIC_IN, 160, own, [TO_KEY_IP, Goto(VM_L2)]))
    return flows


def classify_tag(tag: int) -> list:
    """Loaded where a frame of an east-west network comes in from the fabric."""
    return [Load("reg3", tag)] if tag else []


# --- a network routed to (owned by ("ew", name)) ---------------------------------------------
def dest_flows(cfg: HostConfig, route: Routing, neighbours, own_mac) -> list[Flow]:
    net, tag = route.net, route.tag
    c = owner_cookie(COOKIE_EW, net.id)
    to_net = Match.of(proto="ip", reg3=f"{tag:#x}", nw_dst=net.cidr)
    flows = [make_flow(c, EW_ROUTE, 100, to_net, [Load("reg6", net.id), Goto(DELIVER)])]
    if not cfg.fabric_ofport:
        return flows
    from_net = Match.of(proto="ip", reg3=f"{tag:#x}", nw_src=net.cidr)
    flows += [
        # Routed-looking (from another network of the router) but from no known host.
        make_flow(c, FABRIC_IN, 150, from_net, []),
        make_flow(c, EW_IN, 100, from_net, [Goto(EW_IN_PORT)]),
    ]
    if own_mac is None:
        return flows
    src = SetField("eth_src", mac_str(own_mac))
    for nb in neighbours:
        match = Match.of(proto="ip", reg5=ROUTED_HERE, reg6=reg6(net), reg7=f"{int(nb.ip):#x}")
        actions = [src, SetField("eth_dst", mac_str(nb.mac)), *fabric_out(cfg, net)]
        flows.append(make_flow(c, VM_L2, 60, match, actions))
    return flows


# --- the hosts' routed MACs (owned by HOSTMACS) --------------------------------------------
def hostmac_flows(cfg: HostConfig, routing: HostRouting) -> list[Flow]:
    """From the fabric: this host's own routed MAC never; another host's on to ew_in."""
    hosts = routing.hosts
    if hosts.mac is None or not cfg.fabric_ofport:
        return []
    c = owner_cookie(COOKIE_HOSTMACS, 0)
    flows = [make_flow(c, FABRIC_IN, 200, Match.of(dl_src=mac_str(hosts.mac)), [])]
    for _, mac in sorted(hosts.others.items()):
        flows.append(make_flow(c, FABRIC_IN, 190, Match.of(dl_src=mac_str(mac)), [Goto(EW_IN)]))
    return flows


# --- a VM's part (owned by the VM) and the host-level flows ----------------------------------
def port_flow(cfg: HostConfig, vm: VmPort, net: Network, c: int) -> list[Flow]:
    """A routed frame from another host, to this VM's MAC: delivered as routed, from the
    router MAC (so a VM only ever sees its gateway's)."""
    if not cfg.fabric_ofport:
        return []
    match = Match.of(proto="ip", reg6=reg6(net), dl_dst=mac_str(vm.mac))
    actions = [
        SetField("eth_src", mac_str(cfg.router_mac)),
        Load("reg5", 1, ROUTED),
        TO_KEY_IP,
        Goto(VM_L2),
    ]
    return [make_flow(c, EW_IN_PORT, 100, match, actions)]


def host_part(cfg: HostConfig, c: int) -> list[Flow]:
    """TTL 0 and 1 on to egress (which drops or answers them) before any destination; a
    destination in no network of the router goes on to egress too (FIP, PAT). From the
    fabric, what ew_in and ew_in_port do not take is dropped."""
    flows = [
        make_flow(c, EW_ROUTE, 300, Match.of(proto="ip", nw_ttl=0), [Goto(EGRESS)]),
        make_flow(c, EW_ROUTE, 300, Match.of(proto="ip", nw_ttl=1), [Goto(EGRESS)]),
        make_flow(c, EW_ROUTE, 0, Match(), [Goto(EGRESS)]),
    ]
    if cfg.fabric_ofport:
        flows += [make_flow(c, t, 0, Match(), []) for t in (EW_IN, EW_IN_PORT)]
    return flows
