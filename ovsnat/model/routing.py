"""Routers as the contract carries them (docs/routers.md): which router holds each network,
and what the router lets its networks reach, on the Bridge row once per host.

- `ovsnat-net-<network>` = `router=<router-id>` or `router=-` (on no router);
- `ovsnat-router-<router-id>` = `ext=<external-network-id>` or `ext=-`, `;snat=on|off`.

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

from ovsnat.model.parse import _show

NET_PREFIX = "ovsnat-net-"
ROUTER_PREFIX = "ovsnat-router-"
NONE = "-"
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
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
        return f"{text} ({self.why})" if self.why else text


LEGACY = Routing(router="", external="", snat=True)
ISOLATED = Routing(router=None)


@dataclass(frozen=True)
class HostRouting:
    """The bridge's routing keys, parsed. `of(network)` answers for any network name."""

    nets: Mapping[str, Routing] = field(default_factory=dict)
    problems: Mapping[str, str] = field(default_factory=dict)  # key -> error (key and value)

    def of(self, network: str) -> Routing:
        return self.nets.get(network, LEGACY) if network else LEGACY


NO_KEYS = HostRouting()


def parse_bridge(ids: Mapping[str, str]) -> HostRouting:
    """Every network's routing from the bridge's keys; each bad key one problem."""
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
    nets: dict[str, Routing] = {}
    for key in sorted(k for k in ids if k.startswith(NET_PREFIX)):
        name, what = key[len(NET_PREFIX) :], f"bridge external_ids:{key}"
        if not _NETWORK.fullmatch(name) or not name.isprintable():
            problems[key] = f"{what}: {_show(name)} is not a network name; key ignored"
            continue
        try:
            rid = _fields(ids[key], ("router",), what)["router"]
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
            nets[name] = router if isinstance(router, Routing) else Routing(rid, why=router)
    return HostRouting(nets, problems)


def _router(rid: str, value, what: str) -> Routing:
    f = _fields(value, ("ext", "snat"), what)
    ext, snat = f["ext"], f["snat"]
    if ext != NONE and not _ID.fullmatch(ext):
        raise ValueError(f"{what}: ext {_show(ext)} is not a network id or {NONE}")
    if snat not in ("on", "off"):
        raise ValueError(f"{what}: snat {_show(snat)} is not on or off")
    return Routing(rid, None if ext == NONE else ext, snat == "on")


def _fields(value, names: tuple[str, ...], what: str) -> dict[str, str]:
    """`name=value;...`, each of `names` exactly once and nothing else."""
    text = str(value).strip()
    out: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, val = part.strip().partition("=")
        if not eq or name not in names or name in out or not val.strip():
            raise ValueError(f"{what}: {_show(value)} is not {';'.join(n + '=...' for n in names)}")
        out[name] = val.strip()
    missing = [n for n in names if n not in out]
    if missing:
        raise ValueError(f"{what}: {_show(value)} has no {missing[0]}=")
    return out


def served(port, routing: Routing):
    """The port as its network's routing lets it be served: a network that serves no FIP
    (on no router, or a router without gateway) holds the port's FIPs inert, as if it had
    none (no answer, no probe, no translation). Returns the port unchanged otherwise."""
    if routing.fips or (port.fip is None and not port.security.pair_fips):
        return port
    return replace(port, fip=None, security=replace(port.security, pair_fips=()))
