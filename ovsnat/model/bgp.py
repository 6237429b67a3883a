"""The routed uplink's settings (`external_mode = bgp`, docs/bgp.md), validated.

In bgp mode a host has one routed /31 link to each ToR and announces over eBGP exactly the
/32s it holds. These are the `bgp_*` options as a frozen BgpSettings: what `ovsnat bgp
render` turns into FRR's configuration and what the datapath will need (the uplink ports,
the kernel's ports, the link addresses). Pure: no I/O; a bad value raises one ConfigError
naming the option.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import netaddr

from ovsnat.model.parse import ConfigError, _show, parse_int

MODES = ("l2", "bgp")
ASN_MAX = 4294967294  # 4-byte ASNs (RFC 6793); 4294967295 is reserved
# zebra imports kernel tables 1-252 (`ip import-table`); 253-255 are the kernel's own.
TABLE_MAX = 251  # bgp_table (LIVE) and bgp_table + 1 (MOVED) both importable
LIVE, MOVED = 100, 200  # the communities' low halves: <bgp_community_asn>:100 / :200


@dataclass(frozen=True)
class Link:
    """One routed /31 (RFC 3021) to a ToR: the host's address and the ToR's."""

    uplink: str  # the OVS port toward the ToR
    kernel_port: str  # the OVS internal port that holds `local` (FRR and BFD speak on it)
    local: netaddr.IPAddress
    peer: netaddr.IPAddress

    @property
    def cidr(self) -> netaddr.IPNetwork:
        return netaddr.IPNetwork(f"{self.local}/31").cidr


@dataclass(frozen=True)
class RoutedLink:
    """A link as the datapath uses it: its ports' OpenFlow numbers (0: not on the bridge
    yet) and the ToR's MAC (None: not known yet, so no bucket for it)."""

    link: Link
    uplink_ofport: int = 0
    kernel_ofport: int = 0
    tor_mac: netaddr.EUI | None = None

    @property
    def ready(self) -> bool:
        return bool(self.uplink_ofport and self.kernel_ofport)


@dataclass(frozen=True)
class BgpSettings:
    """A host's BGP speaker, as FRR is told to run it and as ovsnat feeds it."""

    asn: int
    router_id: netaddr.IPAddress
    links: tuple[Link, ...]
    announce: tuple[netaddr.IPNetwork, ...]  # /32s inside these may be announced
    accept: tuple[netaddr.IPNetwork, ...]  # routes used for forwarding (default: 0/0)
    protect: tuple[netaddr.IPNetwork, ...]  # ToR loopbacks etc.: never reached by a VM
    table: int = 100  # LIVE routes; MOVED in table + 1
    community_asn: int = 64999
    max_routes: int = 1000
    moved_hold: int = 60
    bfd_interval: int = 200  # ms, both directions
    bfd_multiplier: int = 3
    tor_max_prefix_margin: int = 10  # the ToRs' maximum-prefix: max_routes + this

    @property
    def moved_table(self) -> int:
        return self.table + 1

    @property
    def live_community(self) -> str:
        return f"{self.community_asn}:{LIVE}"

    @property
    def moved_community(self) -> str:
        return f"{self.community_asn}:{MOVED}"

    @property
    def guarded(self) -> tuple[netaddr.IPNetwork, ...]:
        """What no VM's packet may reach: the links themselves and the protected ranges."""
        return tuple(link.cidr for link in self.links) + self.protect


def external_mode(raw: Mapping[str, object]) -> str:
    """`external_mode`: l2 (the default, a shared external segment) or bgp."""
    text = str(raw.get("external_mode") or "l2").strip()
    if text not in MODES:
        raise ConfigError(f"external_mode: {_show(text)} is not one of {', '.join(MODES)}")
    return text


def parse_bgp(raw: Mapping[str, object], external_cidr: netaddr.IPNetwork) -> BgpSettings:
    """The bgp_* options (external_mode = bgp); external_cidr is what is announced when
    bgp_announce is empty."""
    uplinks = _names(raw, "bgp_uplinks")
    kernel_ports = _names(raw, "bgp_kernel_ports")
    addresses = _cidrs(raw, "bgp_links")
    if not 1 <= len(uplinks) <= 4:
        raise ConfigError(f"bgp_uplinks: {len(uplinks)} ports; give one per ToR (1-4)")
    for name, values in (("bgp_kernel_ports", kernel_ports), ("bgp_links", addresses)):
        if len(values) != len(uplinks):
            raise ConfigError(
                f"{name}: {len(values)} given for {len(uplinks)} bgp_uplinks (one per ToR, "
                "in the same order)"
            )
    links = tuple(
        _link(up, kp, cidr) for up, kp, cidr in zip(uplinks, kernel_ports, addresses, strict=True)
    )
    announce = _cidrs(raw, "bgp_announce") or (external_cidr,)
    settings = BgpSettings(
        asn=_integer(raw, "bgp_asn", 1, ASN_MAX, None),
        router_id=_router_id(raw, links),
        links=links,
        announce=announce,
        accept=_cidrs(raw, "bgp_accept") or (netaddr.IPNetwork("0.0.0.0/0"),),
        protect=_cidrs(raw, "bgp_protect"),
        table=_integer(raw, "bgp_table", 1, TABLE_MAX, 100),
        community_asn=_integer(raw, "bgp_community_asn", 1, 65535, 64999),
        max_routes=_integer(raw, "bgp_max_routes", 1, 100000, 1000),
        moved_hold=_integer(raw, "bgp_moved_hold", 1, 86400, 60),
        bfd_interval=_integer(raw, "bgp_bfd_interval", 50, 60000, 200),
        bfd_multiplier=_integer(raw, "bgp_bfd_multiplier", 2, 255, 3),
    )
    _check(settings)
    return settings


def _check(s: BgpSettings) -> None:
    ports = [p for link in s.links for p in (link.uplink, link.kernel_port)]
    if len(set(ports)) != len(ports):
        raise ConfigError(
            f"bgp_kernel_ports: {', '.join(ports)}: every uplink and kernel port is its own"
        )
    for i, link in enumerate(s.links):
        for other in s.links[i + 1 :]:
            if link.cidr == other.cidr:
                raise ConfigError(f"bgp_links: {link.cidr} is given twice (one /31 per ToR)")
    for net in s.announce:
        for link in s.links:
            if link.cidr.first <= net.last and net.first <= link.cidr.last:
                raise ConfigError(f"bgp_links: {link.cidr} overlaps bgp_announce {net}")


def _link(uplink: str, kernel_port: str, cidr: netaddr.IPNetwork) -> Link:
    if cidr.prefixlen != 31:
        raise ConfigError(
            f"bgp_links: {cidr} is not a /31 (the host's address on a point-to-point link, "
            "RFC 3021; the other address is the ToR's)"
        )
    local = cidr.ip
    peer = netaddr.IPAddress(int(local) ^ 1)
    return Link(uplink, kernel_port, local, peer)


def _router_id(raw: Mapping[str, object], links: tuple[Link, ...]) -> netaddr.IPAddress:
    text = str(raw.get("bgp_router_id") or "").strip()
    if not text:
        return links[0].local
    try:
        return netaddr.IPAddress(text, version=4)
    except (netaddr.AddrFormatError, ValueError):
        raise ConfigError(f"bgp_router_id: {_show(text)} is not an IPv4 address") from None


def _names(raw: Mapping[str, object], name: str) -> tuple[str, ...]:
    items = _items(raw, name)
    for item in items:
        if len(item) > 15 or not re.fullmatch(r"[A-Za-z0-9_.-]+", item):
            raise ConfigError(f"{name}: {_show(item)} is not a valid port name")
    if not items:
        raise ConfigError(f"{name}: required in external_mode bgp")
    return items


def _cidrs(raw: Mapping[str, object], name: str) -> tuple[netaddr.IPNetwork, ...]:
    out = []
    for item in _items(raw, name):
        if "/" not in item:
            raise ConfigError(f"{name}: {_show(item)} has no prefix length")
        net = _cidr(item, name)
        if name != "bgp_links" and net.ip != net.network:  # a link is its host's address
            raise ConfigError(f"{name}: {item} has host bits set (did you mean {net.cidr}?)")
        out.append(net)
    return tuple(out)


def _cidr(text: str, name: str) -> netaddr.IPNetwork:
    """An IPv4 address with its prefix length, any length (a /32 loopback, 0.0.0.0/0)."""
    try:
        return netaddr.IPNetwork(text, version=4)
    except (netaddr.AddrFormatError, ValueError):
        raise ConfigError(f"{name}: {_show(text)} is not an IPv4 address/prefix") from None


def _items(raw: Mapping[str, object], name: str) -> tuple[str, ...]:
    text = str(raw.get(name) or "")
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _integer(raw: Mapping[str, object], name: str, lo: int, hi: int, default: int | None) -> int:
    value = raw.get(name)
    text = "" if value is None else str(value).strip()
    if not text:
        if default is None:
            raise ConfigError(f"{name}: required in external_mode bgp")
        return default
    return parse_int(text, name, lo, hi)
