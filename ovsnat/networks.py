"""Tenant networks: segments of the physical L2 fabric (untagged, or one VLAN each).

A port names its network in its Interface row (`ovsnat-network`, `ovsnat-cidr`,
`ovsnat-gateway`, `ovsnat-vlan`); a port without `ovsnat-network` belongs to the host's
default network from `[ovsnat]` (internal_cidr, internal_gateway_ip, untagged). Pure: the
values here are parsed and checked; which port's definition wins when ports disagree is the
host state's business (ovsnat.state), as for addresses.

Inside a host a network is known by its id: its VLAN, 0 when untagged (at most one untagged
network per host: it is the fabric's untagged segment). The id keys the packet's network
register, the VM cookies of VLAN networks, the network's own conntrack zone
(network_ct_zone_base + VLAN) and its transit address (transit_cidr + VLAN << 10): the
first step of PAT, so that equal fixed IPs of two networks never meet in the shared zone.
"""

from __future__ import annotations

import re
import sys
import weakref
from dataclasses import dataclass
from typing import Mapping

import netaddr

from ovsnat.parse import ConfigError, PortError, parse_cidr, parse_ipv4, _show
from ovsnat.validate import gateway_problem

KEY_NETWORK = "ovsnat-network"
KEY_CIDR = "ovsnat-cidr"
KEY_GATEWAY = "ovsnat-gateway"
KEY_VLAN = "ovsnat-vlan"
NETWORK_KEYS = (KEY_NETWORK, KEY_CIDR, KEY_GATEWAY, KEY_VLAN)
DEFAULT = ""                      # the name of the host's default network
MAX_NAME = 64
VLAN_BITS = 12
OFFSET_BITS = 10                  # transit addresses per VLAN network (transit_cidr is a /10)


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Network:
    name: str                     # DEFAULT for the host's default network
    cidr: netaddr.IPNetwork
    gateway: netaddr.IPAddress
    vlan: int | None = None       # None: untagged on the fabric

    @property
    def id(self) -> int:
        return self.vlan or 0

    @property
    def label(self) -> str:
        return self.name or "(default)"

    def contains(self, ip: netaddr.IPAddress) -> bool:
        return self.cidr.first <= int(ip) <= self.cidr.last

    def host_address(self, ip: netaddr.IPAddress) -> bool:
        return self.cidr.first < int(ip) < self.cidr.last


# Weak: a network no port holds any more is forgotten (ports name networks, so a map that
# kept every one ever seen would grow with whatever values were ever written to OVSDB).
_interned: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def intern(net: Network) -> Network:
    """One object per distinct network: 10,000 ports of 100 networks hold 100 of them."""
    key = (net.name, net.cidr, net.gateway, net.vlan)
    return _interned.setdefault(key, net)


def parse(label: str, external_ids: Mapping[str, str]) -> Network | None:
    """The network a port's external_ids name, or None (the host's default network). Raises
    PortError naming the port, the key and the value."""
    name = str(external_ids.get(KEY_NETWORK, "")).strip()
    if not name:
        stray = [k for k in (KEY_CIDR, KEY_GATEWAY, KEY_VLAN) if k in external_ids]
        if stray:
            raise PortError(f"{label}: external_ids:{stray[0]} is set but "
                            f"external_ids:{KEY_NETWORK} is not")
        return None
    if len(name) > MAX_NAME or not name.isprintable() or not re.fullmatch(r"[^\s,]+", name):
        raise PortError(f"{label}: external_ids:{KEY_NETWORK} {_show(name)} is not a network "
                        f"name (up to {MAX_NAME} printable characters, no spaces or commas)")
    for key in (KEY_CIDR, KEY_GATEWAY):
        if not str(external_ids.get(key, "")).strip():
            raise PortError(f"{label}: external_ids:{key} is missing (network {name})")
    what = f"{label}: external_ids:{KEY_CIDR}"
    try:
        cidr = parse_cidr(external_ids[KEY_CIDR], what)
    except ConfigError as e:
        raise PortError(str(e)) from None
    gateway = parse_ipv4(external_ids[KEY_GATEWAY], f"{label}: external_ids:{KEY_GATEWAY}",
                         PortError)
    vlan = _vlan(label, external_ids.get(KEY_VLAN))
    problem = gateway_problem(name, cidr, gateway, f"external_ids:{KEY_GATEWAY}")
    if problem:
        raise PortError(f"{label}: {problem}")
    return intern(Network(sys.intern(name), cidr, gateway, vlan))


def _vlan(label: str, value) -> int | None:
    text = str(value if value is not None else "").strip()
    if not text:
        return None
    if not re.fullmatch(r"[0-9]{1,4}", text) or not 1 <= int(text) <= 4094:
        raise PortError(f"{label}: external_ids:{KEY_VLAN} {_show(value)} is not a VLAN "
                        "(1-4094)")
    return int(text)


# --- per-network numbers -----------------------------------------------------------------------
def zone(base: int, net: Network) -> int:
    """The VLAN network's own conntrack zone (PAT step one, FIP fragments)."""
    return base + net.id


def transit(transit_cidr: netaddr.IPNetwork, net: Network, offset: int = 0) -> netaddr.IPAddress:
    """The network's transit address (offset 0), or one VM's (per-VM PAT blocks)."""
    return netaddr.IPAddress(transit_cidr.first | net.id << OFFSET_BITS | offset)


def transit_range(transit_cidr: netaddr.IPNetwork, net: Network) -> netaddr.IPNetwork:
    """All transit addresses of one network, as a CIDR (the return path's match)."""
    return netaddr.IPNetwork(f"{transit(transit_cidr, net)}/{32 - OFFSET_BITS}")


# Where `transit_cidr = auto` (the default) looks, in order: the reserved class E space
# (240.0.0.0/4, "reserved for future use" and routed nowhere), so no operator's network,
# external or tenant, can be in it. Transit addresses exist only inside the datapath.
TRANSIT_CANDIDATES = tuple(netaddr.IPNetwork(f"{240 + i // 4}.{(i % 4) * 64}.0.0/10")
                           for i in range(64))


def auto_transit(avoid) -> netaddr.IPNetwork:
    """The first candidate /10 that overlaps none of `avoid` (the external network, the
    default network); a port inside it is refused with the reason (VmPort.check)."""
    for cidr in TRANSIT_CANDIDATES:
        if not any(a is not None and cidr.first <= a.last and a.first <= cidr.last
                   for a in avoid):
            return cidr
    raise ConfigError("transit_cidr: every candidate in 240.0.0.0/4 overlaps the external "
                      "or default network; set transit_cidr to a free /10")


def transit_option(raw: Mapping) -> netaddr.IPNetwork:
    """transit_cidr as configured, or (empty or `auto`, the default) chosen at start where
    no real address can be (auto_transit)."""
    text = str(raw.get("transit_cidr") or "").strip()
    if text and text != "auto":
        return parse_cidr(text, "transit_cidr")
    avoid = [parse_cidr(raw[name], name) for name in ("external_cidr", "internal_cidr")
             if str(raw.get(name) or "").strip()]
    return auto_transit(avoid)


def check_transit_cidr(cidr: netaddr.IPNetwork) -> None:
    if cidr.prefixlen != 32 - VLAN_BITS - OFFSET_BITS:
        raise ConfigError(f"transit_cidr: {cidr} must be a /{32 - VLAN_BITS - OFFSET_BITS} "
                          f"({VLAN_BITS} bits of VLAN, {OFFSET_BITS} of VM offset)")
