"""Security groups and port security as the contract carries them (docs/security-groups.md):
groups and their rules once per host on the Bridge row, each port's groups, port security,
allowed address pairs and admin state on its Interface row. Pure: parsing and validation
only. A malformed value raises ConfigError (a group) or PortError (a port) naming the key and
the value; the controller then drops every frame of the ports concerned (fail closed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import netaddr

from ovsnat.model.parse import ConfigError, PortError, _show

KEY_GROUPS = "ovsnat-sg"
KEY_PORT_SECURITY = "ovsnat-port-security"
KEY_PAIRS = "ovsnat-allowed-pairs"
KEY_ADMIN = "ovsnat-admin"
KEY_PAIR_FIPS = "ovsnat-pair-fips"  # vip=fip,...: a FIP on an allowed pair's address
GROUP_PREFIX = "ovsnat-sg-"  # Bridge: ovsnat-sg-<id> = rules
MEMBERS_PREFIX = "ovsnat-sgm-"  # Bridge: ovsnat-sgm-<id> = member addresses
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1}
PORTED = (6, 17)  # protocols whose rules may name ports
MAX_ID = 64
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# A filtered port's conntrack zone is SG_ZONE_BASE + its ofport: above the zones Neutron's
# OVS firewall takes (1-4095, a zone per network), below conn_limit's (20000 + ofport), so
# a port's zone needs no allocation and survives a controller restart (flows/pipeline.md).
SG_ZONE_BASE = 4096


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a group. `proto` None: any protocol; `lo`/`hi` the destination port range
    (tcp/udp) or the ICMP type and code (None: any); the remote is a prefix, a group, or
    neither (anyone)."""

    id: str
    ingress: bool
    proto: int | None = None
    lo: int | None = None
    hi: int | None = None
    prefixes: tuple[netaddr.IPNetwork, ...] = ()
    remote_group: str | None = None
    not_applied: str | None = None  # why this rule is kept but not enforced

    @property
    def applied(self) -> bool:
        return self.not_applied is None


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    rules: tuple[Rule, ...]
    stateful: bool = True


@dataclass(frozen=True, slots=True)
class Pair:
    """An allowed address pair: a CIDR (a /32 for one address) and the MAC it may come from
    (None: the port's own)."""

    cidr: netaddr.IPNetwork
    mac: netaddr.EUI | None = None


@dataclass(frozen=True, slots=True)
class PortSecurity:
    """What a port's row says about filtering it. `groups` None: not filtered (the row has no
    ovsnat-sg key: as before security groups existed)."""

    groups: tuple[str, ...] | None = None
    anti_spoofing: bool = True
    pairs: tuple[Pair, ...] = ()
    admin_down: bool = False
    pair_fips: tuple[tuple[netaddr.IPAddress, netaddr.IPAddress], ...] = ()  # (vip, fip)

    @property
    def filtered(self) -> bool:
        return self.groups is not None and self.anti_spoofing


UNFILTERED = PortSecurity()


def zone_problem(cfg, ofport: int) -> str | None:
    """Why a filtered port's zone (SG_ZONE_BASE + ofport) cannot be used, if it cannot."""
    zone = SG_ZONE_BASE + ofport
    taken = [
        (zone > 0xFFFF, "beyond the 16-bit zones"),
        (zone in (cfg.ct_zone, cfg.fip_frag_ct_zone), "the PAT or FIP fragment zone"),
        (
            cfg.network_ct_zone_base < zone < cfg.network_ct_zone_base + 4095,
            "a VLAN network's PAT zone",
        ),
        (cfg.conn_limit and zone > cfg.conn_limit_zone_base, "conn_limit's counting zones"),
    ]
    for hit, what in taken:
        if hit:
            return (
                f"ofport {ofport} gives security conntrack zone {zone} "
                f"({SG_ZONE_BASE} + ofport), {what}: its security groups cannot be enforced"
            )
    return None


@dataclass(frozen=True)
class HostSecurity:
    """The groups and remote-group members the bridge carries (once per host), and the
    groups whose keys are malformed (their ports fail closed)."""

    groups: Mapping[str, Group]
    members: Mapping[str, frozenset]
    broken: Mapping[str, str]  # group id -> the error naming key and value


NO_GROUPS = HostSecurity({}, {}, {})


def parse_bridge(ids: Mapping[str, str]) -> HostSecurity:
    groups, members, broken = {}, {}, {}
    for key in sorted(ids):
        for prefix, parse, into in (
            (MEMBERS_PREFIX, parse_members, members),
            (GROUP_PREFIX, parse_group, groups),
        ):
            if key.startswith(prefix):
                gid = key[len(prefix) :]
                try:
                    into[gid] = parse(group_id(gid, f"bridge external_ids:{key}"), ids[key])
                except ConfigError as e:
                    broken[gid] = str(e)
                break
    return HostSecurity(groups, members, broken)


def group_id(text: str, what: str, error=ConfigError) -> str:
    if not _ID.fullmatch(text):
        raise error(f"{what}: {_show(text)} is not a group id")
    return text


# --- ports ------------------------------------------------------------------------------------
def parse_port(label: str, ids: Mapping[str, str]) -> PortSecurity:
    groups_text = ids.get(KEY_GROUPS)
    groups = None
    if groups_text is not None:
        what = f"{label}: external_ids:{KEY_GROUPS}"
        groups = tuple(
            sorted(
                {
                    group_id(g.strip(), what, PortError)
                    for g in str(groups_text).split(",")
                    if g.strip()
                }
            )
        )
    security = str(ids.get(KEY_PORT_SECURITY, "on")).strip().lower()
    if security not in ("on", "off"):
        raise PortError(
            f"{label}: external_ids:{KEY_PORT_SECURITY} {_show(security)} is neither on nor off"
        )
    admin = str(ids.get(KEY_ADMIN, "up")).strip().lower()
    if admin not in ("up", "down"):
        raise PortError(f"{label}: external_ids:{KEY_ADMIN} {_show(admin)} is neither up nor down")
    pairs = tuple(
        _pair(label, p.strip()) for p in str(ids.get(KEY_PAIRS, "")).split(",") if p.strip()
    )
    kept = tuple(p for p in pairs if p is not None)
    result = PortSecurity(
        groups if security == "on" else None,
        security == "on",
        kept,
        admin == "down",
        _pair_fips(label, str(ids.get(KEY_PAIR_FIPS, "")), kept),
    )
    return UNFILTERED if result == UNFILTERED else result


def _pair_fips(label: str, text: str, pairs: tuple[Pair, ...]):
    """`vip=fip,...`: each VIP one of the port's single-address pairs."""
    singles = {p.cidr.ip for p in pairs if p.cidr.prefixlen == 32}
    out = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        what = f"{label}: external_ids:{KEY_PAIR_FIPS} {_show(item)}"
        vip, _, fip = item.partition("=")
        try:
            vip_ip, fip_ip = (
                netaddr.IPAddress(v.strip(), 4, netaddr.INET_PTON) for v in (vip, fip)
            )
        except (netaddr.AddrFormatError, ValueError, TypeError):
            raise PortError(f"{what}: not VIP=FIP (two IPv4 addresses)") from None
        if vip_ip not in singles:
            raise PortError(f"{what}: {vip_ip} is not one of the port's allowed address pairs")
        out.append((vip_ip, fip_ip))
    return tuple(sorted(out))


def _pair(label: str, text: str) -> Pair | None:
    what = f"{label}: external_ids:{KEY_PAIRS} {_show(text)}"
    address, _, mac = text.partition("@")
    try:
        cidr = (
            netaddr.IPNetwork(address, flags=netaddr.NOHOST)
            if "/" in address
            else netaddr.IPNetwork(f"{address}/32" if ":" not in address else f"{address}/128")
        )
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise PortError(f"{what}: not an address or CIDR") from None
    if cidr.version == 6:
        return None  # kept by Neutron; ovsnat has no IPv6
    try:
        eui = netaddr.EUI(mac) if mac else None
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise PortError(f"{what}: {_show(mac)} is not a MAC") from None
    if eui is not None and int(eui) >> 40 & 1:
        raise PortError(f"{what}: {_show(mac)} is a multicast MAC")
    return Pair(cidr, eui)


# --- groups (Bridge keys) ---------------------------------------------------------------------
def parse_group(gid: str, text: str) -> Group:
    """`ovsnat-sg-<gid>`'s value: [stateless;]rule;rule;..."""
    what = f"bridge external_ids:{GROUP_PREFIX}{gid}"
    parts = [p.strip() for p in str(text).split(";") if p.strip()]
    stateful = True
    if parts and parts[0] == "stateless":
        stateful, parts = False, parts[1:]
    rules = tuple(_rule(what, p) for p in parts)
    ids = [r.id for r in rules]
    if len(ids) != len(set(ids)):
        raise ConfigError(f"{what}: a rule id appears twice")
    return Group(gid, rules, stateful)


def _rule(what: str, text: str) -> Rule:
    fields = text.split(",")
    if len(fields) != 6:
        raise ConfigError(f"{what}: rule {_show(text)} has {len(fields)} fields, not 6")
    rid, direction, ether, proto_text, ports, remote = (f.strip() for f in fields)
    where = f"{what}: rule {_show(rid)}"
    group_id(rid, f"{what}: rule id", ConfigError)
    if direction not in ("in", "out"):
        raise ConfigError(f"{where}: direction {_show(direction)} is neither in nor out")
    if ether not in ("4", "6"):
        raise ConfigError(f"{where}: ethertype {_show(ether)} is neither 4 nor 6")
    proto = _proto(where, proto_text)
    lo, hi = _ports(where, proto, ports)
    prefixes, group = _remote(where, remote)
    not_applied = None
    if ether == "6":
        not_applied = "an IPv6 rule (ovsnat has no IPv6)"
    elif remote[:2] in ("p:", "a:") and not prefixes:
        not_applied = "IPv6 remote addresses only (ovsnat has no IPv6)"
    elif proto is not None and proto not in PORTED and proto != 1 and ports != "-":
        not_applied = f"ports on protocol {proto}"
    return Rule(rid, direction == "in", proto, lo, hi, prefixes, group, not_applied)


def _proto(where: str, text: str) -> int | None:
    if text == "any":
        return None
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    if text.isdigit() and int(text) <= 255:
        return int(text)
    raise ConfigError(f"{where}: protocol {_show(text)} is not any, tcp, udp, icmp or 0-255")


def _ports(where: str, proto: int | None, text: str) -> tuple[int | None, int | None]:
    if text == "-":
        return None, None
    if proto == 1:  # icmp: type or type/code
        kind, _, code = text.partition("/")
        values = [kind] + ([code] if code else [])
        if not all(v.isdigit() and int(v) <= 255 for v in values):
            raise ConfigError(f"{where}: ICMP type/code {_show(text)} is not T or T/C")
        return int(kind), (int(code) if code else None)
    lo_text, _, hi_text = text.partition("-")
    hi_text = hi_text or lo_text
    if not (lo_text.isdigit() and hi_text.isdigit()):
        raise ConfigError(f"{where}: port range {_show(text)} is not N or N-M")
    lo, hi = int(lo_text), int(hi_text)
    if not 1 <= lo <= hi <= 65535:
        raise ConfigError(f"{where}: port range {lo}-{hi} is not within 1-65535, low to high")
    return lo, hi


def _remote(where: str, text: str) -> tuple[tuple[netaddr.IPNetwork, ...], str | None]:
    if text == "-":
        return (), None
    kind, _, value = text.partition(":")
    if kind == "g":
        return (), group_id(value, f"{where}: remote group")
    if kind not in ("p", "a"):
        raise ConfigError(f"{where}: remote {_show(text)} is not -, p:CIDR, g:GROUP or a:CIDR+CIDR")
    try:
        nets = tuple(netaddr.IPNetwork(c, flags=netaddr.NOHOST) for c in value.split("+"))
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ConfigError(f"{where}: remote {_show(text)} is not a list of CIDRs") from None
    return tuple(n for n in nets if n.version == 4), None


def parse_members(gid: str, text: str) -> frozenset[netaddr.IPAddress]:
    what = f"bridge external_ids:{MEMBERS_PREFIX}{gid}"
    out = set()
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            ip = netaddr.IPAddress(item, 4, netaddr.INET_PTON)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            raise ConfigError(f"{what}: {_show(item)} is not an IPv4 address") from None
        out.add(ip)
    return frozenset(out)


def port_ranges(lo: int, hi: int) -> list[tuple[int, int]]:
    """A port range as (value, mask) pairs OVS can match (the fewest aligned blocks)."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 0xFFFF & ~(size - 1)))
        lo += size
    return out
