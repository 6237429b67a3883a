"""Routers as the contract carries them (docs/routers.md): which router holds each network,
and what the router lets its networks reach, on the Bridge row once per host.

- `ovsnat-net-<network>` = `router=<router-id>` or `router=-` (on no router), and for
  east-west routing (item 2) the network's definition: `;cidr=<cidr>;gw=<ip>;vlan=<1-4094|->`
  (all three or none);
- `ovsnat-router-<router-id>` = `ext=<external-network-id>` or `ext=-`, `;snat=on|off`;
- the hosts' routed MACs and the networks' remote neighbours (ovsnat.model.eastwest).

A network without a key is routed as every network was before routers existed (LEGACY:
gateway, PAT, FIPs), so a deployment without Neutron keeps working; the Neutron agent
always writes the key. Pure: parsing only. A bad value fails safe (a network isolated, a
router without gateway) and is kept as a problem naming the key and the value, which the
controller logs once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ovsnat.model import eastwest
from ovsnat.model.externals import EXT_PREFIX
from ovsnat.model.networks import Network, intern
from ovsnat.model.parse import ConfigError, _show, parse_cidr, parse_fields, parse_ipv4
from ovsnat.model.validate import gateway_problem

NET_PREFIX = "ovsnat-net-"
ROUTER_PREFIX = "ovsnat-router-"
NONE = "-"
_ID = eastwest.ID  # router, network and host ids share one form
_NETWORK = re.compile(r"[^\s,]{1,64}")  # as ovsnat-network names it (ovsnat.model.networks)


@dataclass(frozen=True, slots=True)
class Routing:
    """What a network's VMs may reach through their gateway. `router` None: the network is on
    no router (an isolated L2 segment: no routing, no PAT, no FIP); `external` None: its
    router has no gateway (no PAT, no FIP); `snat`: the gateway does PAT."""

    router: str | None
    external: str | None = None
    snat: bool = False
    why: str = ""  # set when a bad or missing key decided it (shown in `ovsnat status`)
    net: Network | None = None  # the network's definition in its key (east-west)
    tag: int = 0  # its router's tag when the network is routed east-west here, else 0

    @property
    def east_west(self) -> bool:
        return self.tag != 0

    @property
    def routed(self) -> bool:
        return self.router is not None

    @property
    def fips(self) -> bool:
        return self.routed and self.external is not None

    @property
    def pat(self) -> bool:
        return self.fips and self.snat

    def describe(self) -> str:
        if not self.routed:
            text = "on no router: isolated (DHCP only)"
        elif self is LEGACY:
            text = "no key: routed as before routers (gateway, PAT, FIPs)"
        elif self.external is None:
            text = f"router {self.router} without gateway: no PAT, no FIP"
        else:
            snat = "PAT and FIPs" if self.snat else "FIPs only (snat off)"
            text = f"router {self.router}, gateway {self.external}: {snat}"
        if self.east_west:
            text += "; east-west"
        return f"{text} ({self.why})" if self.why else text


LEGACY = Routing(router="", external="", snat=True)
ISOLATED = Routing(router=None)


@dataclass(frozen=True)
class HostRouting:
    """The bridge's routing keys, parsed. `of(network)` answers for any network name."""

    nets: Mapping[str, Routing] = field(default_factory=dict)
    problems: Mapping[str, str] = field(default_factory=dict)  # key -> error (key and value)
    hosts: eastwest.Hosts = field(default_factory=eastwest.Hosts)
    neighbours: Mapping[str, tuple[eastwest.Neighbour, ...]] = field(default_factory=dict)

    def of(self, network: str) -> Routing:
        return self.nets.get(network, LEGACY) if network else LEGACY

    def east_west(self) -> dict[str, Routing]:
        """The networks routed east-west here (their keys define them), by name."""
        return {n: r for n, r in self.nets.items() if r.east_west}


NO_KEYS = HostRouting()


def parse_bridge(ids: Mapping[str, str], externals: frozenset[str] | None = None) -> HostRouting:
    """Every network's routing from the bridge's keys; each bad key one problem.
    `externals`: the external networks this host has a good `ovsnat-ext-*` key for (None:
    no such key at all, so every gateway is the options' network, ovsnat.model.externals)."""
    problems: dict[str, str] = {}
    routers: dict[str, Routing | str] = {}  # id -> its routing, or the error that broke it
    for key in sorted(k for k in ids if k.startswith(ROUTER_PREFIX)):
        rid, what = key[len(ROUTER_PREFIX) :], f"bridge external_ids:{key}"
        if not _ID.fullmatch(rid):
            problems[key] = f"{what}: {_show(rid)} is not a router id; key ignored"
            continue
        try:
            routers[rid] = _router(rid, ids[key], what)
        except ValueError as e:
            problems[key] = f"{e}; its networks get no PAT and no FIP"
            routers[rid] = "its key is malformed"
            continue
        ext = routers[rid].external
        if externals is not None and ext is not None and ext not in externals:
            problems[key] = (
                f"{what}: its gateway network {ext} has no good key {EXT_PREFIX}{ext} on "
                "this host; its networks get no PAT and no FIP"
            )
            routers[rid] = f"gateway network {ext} not served here"
    nets: dict[str, Routing] = {}
    for key in sorted(k for k in ids if k.startswith(NET_PREFIX)):
        name, what = key[len(NET_PREFIX) :], f"bridge external_ids:{key}"
        if not _NETWORK.fullmatch(name) or not name.isprintable():
            problems[key] = f"{what}: {_show(name)} is not a network name; key ignored"
            continue
        try:
            f = parse_fields(ids[key], ("router",), what, DEFINITION)
            rid, net = f["router"], _definition(name, f, ids[key], what)
        except ValueError as e:
            problems[key] = f"{e}; network {name} is isolated"
            nets[name] = replace(ISOLATED, why=f"{key} is malformed")
            continue
        if rid == NONE:
            nets[name] = ISOLATED
        elif not _ID.fullmatch(rid):
            problems[key] = f"{what}: router {_show(rid)} is not a router id; network isolated"
            nets[name] = replace(ISOLATED, why=f"{key} is malformed")
        else:
            router = routers.get(rid)
            if router is None:
                problems[key] = (
                    f"{what}: router {rid} has no key {ROUTER_PREFIX}{rid}; "
                    f"network {name} gets no PAT and no FIP"
                )
                router = f"no key {ROUTER_PREFIX}{rid}"
            routing = router if isinstance(router, Routing) else Routing(rid, why=router)
            nets[name] = replace(routing, net=net) if net is not None else routing
    nets = _east_west(nets, problems)
    cidrs = {n: r.net.cidr for n, r in nets.items() if r.east_west}
    neighbours = eastwest.parse_neighbours(ids, cidrs, problems)
    return HostRouting(nets, problems, eastwest.parse_hosts(ids, problems), neighbours)


DEFINITION = ("cidr", "gw", "vlan")


def _definition(name: str, f: dict[str, str], value, what: str) -> Network | None:
    """The network as its key defines it (all of cidr, gw, vlan), or None (none of them)."""
    given = [n for n in DEFINITION if n in f]
    if not given:
        return None
    if len(given) < len(DEFINITION):
        missing = next(n for n in DEFINITION if n not in f)
        raise ValueError(f"{what}: {_show(value)} defines the network without {missing}=")
    try:
        cidr = parse_cidr(f["cidr"], f"{what}: cidr")
        gw = parse_ipv4(f["gw"], f"{what}: gw")
    except ConfigError as e:
        raise ValueError(str(e)) from None
    problem = gateway_problem(name, cidr, gw, f"{what}: gw")
    if problem:
        raise ValueError(problem)
    vlan = f["vlan"]
    if vlan != NONE and not (re.fullmatch(r"[0-9]{1,4}", vlan) and 1 <= int(vlan) <= 4094):
        raise ValueError(f"{what}: vlan {_show(vlan)} is not a VLAN (1-4094) or {NONE}")
    return intern(Network(name, cidr, gw, None if vlan == NONE else int(vlan)))


def _east_west(nets: dict[str, Routing], problems: dict[str, str]) -> dict[str, Routing]:
    """Tag the networks routed east-west: on a router, defined by their keys. Neutron
    refuses overlapping subnets on one router, and a VLAN is one network's on a host: if the
    keys show either anyway, the later network (by name) is not routed east-west, said."""
    routers = {r.router for r in nets.values() if r.router and r.net is not None}
    tags = eastwest.router_tags(routers)
    out = dict(nets)
    kept: list[Network] = []
    for name in sorted(nets):
        r = nets[name]
        if not r.router or r.net is None:
            continue
        clash = next((k for k in kept if _clash(k, r.net, nets[k.name].router == r.router)), None)
        if clash is not None:
            key = f"{NET_PREFIX}{name}"
            problems[key] = (
                f"bridge external_ids:{key}: network {name} ({r.net.cidr}, VLAN "
                f"{r.net.vlan or NONE}) clashes with network {clash.name} ({clash.cidr}, VLAN "
                f"{clash.vlan or NONE}); {name} is not routed east-west"
            )
            continue
        kept.append(r.net)
        out[name] = replace(r, tag=tags[r.router])
    return out


def _clash(a: Network, b: Network, same_router: bool) -> bool:
    overlap = a.cidr.first <= b.cidr.last and b.cidr.first <= a.cidr.last
    return a.id == b.id or (same_router and overlap)


def _router(rid: str, value, what: str) -> Routing:
    f = parse_fields(value, ("ext", "snat"), what)
    ext, snat = f["ext"], f["snat"]
    if ext != NONE and not _ID.fullmatch(ext):
        raise ValueError(f"{what}: ext {_show(ext)} is not a network id or {NONE}")
    if snat not in ("on", "off"):
        raise ValueError(f"{what}: snat {_show(snat)} is not on or off")
    return Routing(rid, None if ext == NONE else ext, snat == "on")


def served(port, routing: Routing):
    """The port as its network's routing lets it be served: a network that serves no FIP
    (on no router, or a router without gateway) holds the port's FIPs inert, as if it had
    none (no answer, no probe, no translation). Returns the port unchanged otherwise."""
    if routing.fips or (port.fip is None and not port.security.pair_fips):
        return port
    return replace(port, fip=None, security=replace(port.security, pair_fips=()))
