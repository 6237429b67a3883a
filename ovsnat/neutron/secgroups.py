"""Security groups and port security: Neutron's records -> the contract's OVSDB keys.

Pure (no Neutron import), like keys.py: the server side (ovsnat.neutron.server_sg) feeds it
the dicts Neutron's own code returns (ports, rules, the member addresses of Neutron's
sg_member_ips query) and ships the values to the agent, which only writes them. The
contract (docs/openstack.md, "Security groups: the keys"):

- per port (Interface): `ovsnat-sg` (the port's groups, comma-separated; absent when
  Neutron's [securitygroup] enable_security_group is off), `ovsnat-port-security=off`
  (port_security_enabled False: no groups, no anti-spoofing), `ovsnat-allowed-pairs`
  (`ip[/len][@mac]`, comma-separated), `ovsnat-admin=down` (admin_state_up False);
- per group (Bridge, once per host): `ovsnat-sg-<id>` = `[stateless;]rule;rule...`, one
  rule `<rule-id>,<in|out>,<4|6>,<proto>,<ports>,<remote>`, and `ovsnat-sgm-<id>` = the
  IPv4 members of a group some local rule names as its remote group.

Neutron's semantics come from Neutron's rows, never from here: the default group's rules
are the rules Neutron copied from its default-rule templates when it made the group.
Values are deterministic (rules by id, members by address) so an unchanged group never
causes a write.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# Interface keys (written with the port's other keys: ovsnat.neutron.keys.MANAGED_KEYS)
SG = "ovsnat-sg"
PORT_SECURITY = "ovsnat-port-security"
ALLOWED_PAIRS = "ovsnat-allowed-pairs"
ADMIN = "ovsnat-admin"
PAIR_FIPS = "ovsnat-pair-fips"  # vip=fip: a floating IP on one of the port's pair addresses
PORT_KEYS = (SG, PORT_SECURITY, ALLOWED_PAIRS, ADMIN, PAIR_FIPS)
# Bridge keys, one per group
GROUP_PREFIX = "ovsnat-sg-"
MEMBERS_PREFIX = "ovsnat-sgm-"
STATELESS = "stateless"

# RPC: both directions use this namespace on ovsnat's topics, so the agent's and the
# server's existing endpoints (and their versions) are untouched.
RPC_NAMESPACE = "ovsnat-sg"
RPC_VERSION = "1.0"

# neutron_lib.constants.IP_PROTOCOL_MAP (neutron-lib 3.x, IANA numbers), with its alias
# icmpv6; tests/test_secgroups.py compares it with Neutron's own table.
PROTOCOL_NUMBERS = {
    "ah": 51,
    "dccp": 33,
    "egp": 8,
    "esp": 50,
    "gre": 47,
    "hopopt": 0,
    "icmp": 1,
    "igmp": 2,
    "ip": 0,
    "ipip": 4,
    "ipv6-encap": 41,
    "ipv6-frag": 44,
    "ipv6-icmp": 58,
    "icmpv6": 58,
    "ipv6-nonxt": 59,
    "ipv6-opts": 60,
    "ipv6-route": 43,
    "ospf": 89,
    "pgm": 113,
    "rsvp": 46,
    "sctp": 132,
    "tcp": 6,
    "udp": 17,
    "udplite": 136,
    "vrrp": 112,
}
PROTOCOL_NAMES = {6: "tcp", 17: "udp", 1: "icmp"}  # the contract's names
ICMP_NUMBERS = (1, 58)  # port_range_min/max are type/code (Neutron's API)
ANY = (None, "", "any")  # neutron.common._constants.SG_RULE_PROTO_ANY (and "")
DIRECTIONS = {"ingress": "in", "egress": "out"}
ETHERTYPES = {"IPv4": "4", "IPv6": "6"}


def is_trusted(port: dict) -> bool:
    """neutron_lib.utils.net.is_port_trusted: Neutron's own ports (network:*) are never
    filtered by any firewall driver (security_group_info_for_devices skips them)."""
    return str(port.get("device_owner") or "").startswith("network:")


def _address(value: str) -> str:
    """An address or a CIDR, normalized: a host route (/32, /128) is written as the bare
    address, a network as its network address and length."""
    net = ipaddress.ip_network(value, strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def allowed_pairs(port: dict) -> str:
    """Neutron's allowed_address_pairs as `ip[/len][@mac]`, sorted: Neutron stores every
    pair with a MAC (the port's own when none was given); only another MAC is written. The
    order Neutron lists them in is its database's (MariaDB's primary key: MAC, then
    address), not the user's, so the value is sorted to depend on the pairs alone."""
    own = str(port.get("mac_address") or "").lower()
    out: set[str] = set()
    for pair in port.get("allowed_address_pairs") or []:
        entry = _address(pair["ip_address"])
        mac = str(pair.get("mac_address") or "").lower()
        if mac and mac != own:
            entry += f"@{mac}"
        out.add(entry)
    return ",".join(sorted(out))


def port_sg_keys(port: dict, groups_enabled: bool) -> dict[str, str]:
    """The security keys of one Neutron port dict (as the ML2 plugin's get_ports returns
    it). `groups_enabled`: Neutron's [securitygroup] enable_security_group; off, Neutron's
    API has no groups and no port is filtered (Neutron's agents run the noop firewall),
    but port security (anti-spoofing) still holds as in Neutron's OVS agent, whose ARP
    spoofing protection depends on port_security_enabled only."""
    keys: dict[str, str] = {}
    if port.get("admin_state_up") is False:
        keys[ADMIN] = "down"
    if is_trusted(port):
        return keys
    if port.get("port_security_enabled") is False:
        keys[PORT_SECURITY] = "off"
        return keys
    pairs = allowed_pairs(port)
    if pairs:
        keys[ALLOWED_PAIRS] = pairs
    if groups_enabled:
        keys[SG] = ",".join(sorted(port.get("security_groups") or []))
    return keys


def single_pairs(port: dict) -> set[str]:
    """A port's allowed-pair addresses that are one IPv4 address (a VIP it may hold)."""
    if port.get("port_security_enabled") is False:
        return set()
    out = set()
    for pair in port.get("allowed_address_pairs") or []:
        text = str(pair.get("ip_address", ""))
        if ":" not in text and (text.endswith("/32") or "/" not in text):
            out.add(text.split("/")[0])
    return out


def pair_fips_value(vips: set[str], fips) -> str:
    """`vip=fip,...` for the (fixed address, floating address) of the FIPs on these VIPs."""
    return ",".join(sorted(f"{fixed}={floating}" for fixed, floating in fips if fixed in vips))


def port_groups(keys: dict[str, str] | None) -> set[str]:
    """The groups a port's keys name (none when it is not filtered)."""
    value = (keys or {}).get(SG)
    return {g for g in value.split(",") if g} if value else set()


def protocol(rule: dict) -> str:
    """Neutron's protocol (a name, an alias, a number as a string, or any) as the contract
    writes it; ValueError for anything Neutron's API would not have accepted."""
    proto = rule.get("protocol")
    if proto in ANY:
        return "any"
    proto = str(proto).lower()
    number = PROTOCOL_NUMBERS.get(proto)
    if number is None:
        if not proto.isdigit() or not 0 <= int(proto) <= 255:
            raise ValueError(f"protocol {rule.get('protocol')!r}")
        number = int(proto)
    if rule.get("ethertype") == "IPv6" and number == 1:
        number = 58  # Neutron canonicalizes IPv6 ICMP the same way
    return PROTOCOL_NAMES.get(number, str(number))


def ports(rule: dict, proto: str) -> str:
    """`-`, `N`, `N-M` (ports), or for ICMP `T`, `T/C` (port_range_min/max = type/code)."""
    lo, hi = rule.get("port_range_min"), rule.get("port_range_max")
    if lo is None:
        if hi is not None:
            raise ValueError(f"port_range_max {hi} without port_range_min")
        return "-"
    if proto == "icmp" or proto in {str(n) for n in ICMP_NUMBERS}:
        return f"{int(lo)}" if hi is None else f"{int(lo)}/{int(hi)}"
    hi = lo if hi is None else hi
    return f"{int(lo)}" if int(lo) == int(hi) else f"{int(lo)}-{int(hi)}"


def _version(ethertype: str) -> int:
    return 6 if ethertype == "IPv6" else 4


def remote(rule: dict, address_groups: dict[str, list[str]]) -> str | None:
    """`-`, `p:<cidr>`, `g:<group>`, or `a:<cidr>+<cidr>` (an address group expanded into
    its addresses of the rule's IP version, as Neutron's firewall drivers match it). None:
    the rule can match nothing (an address group with no address of that version), which
    allows exactly what leaving it out allows."""
    if rule.get("remote_group_id"):
        return f"g:{rule['remote_group_id']}"
    if rule.get("remote_address_group_id"):
        version = _version(rule.get("ethertype", "IPv4"))
        cidrs = sorted(
            {
                _address(c)
                for c in address_groups.get(rule["remote_address_group_id"], [])
                if ipaddress.ip_network(c, strict=False).version == version
            },
            key=_sort_key,
        )
        return f"a:{'+'.join(cidrs)}" if cidrs else None
    prefix = rule.get("normalized_cidr") or rule.get("remote_ip_prefix")
    return f"p:{ipaddress.ip_network(prefix, strict=False)}" if prefix else "-"


def rule_entry(rule: dict, address_groups: dict[str, list[str]]) -> str | None:
    """One rule as the contract writes it; None when it matches nothing; ValueError for a
    value Neutron's API would have refused (the caller logs it and leaves the rule out:
    every rule only allows, so a rule left out can only block more)."""
    direction = DIRECTIONS.get(rule.get("direction"))
    ethertype = ETHERTYPES.get(rule.get("ethertype"))
    if direction is None or ethertype is None:
        raise ValueError(f"direction {rule.get('direction')!r} ethertype {rule.get('ethertype')!r}")
    proto = protocol(rule)
    where = remote(rule, address_groups)
    if where is None:
        return None
    return ",".join((rule["id"], direction, ethertype, proto, ports(rule, proto), where))


@dataclass(frozen=True)
class GroupValue:
    """A group's Bridge value, the remote groups its rules name, and the rules left out
    (rule id -> why)."""

    value: str
    remotes: tuple[str, ...]
    refused: tuple[tuple[str, str], ...] = ()


def group_value(
    stateful: bool, rules: list[dict], address_groups: dict[str, list[str]] | None = None
) -> GroupValue:
    """`ovsnat-sg-<id>` for a group: its rules by id, `stateless;` first for Neutron's
    stateful=False."""
    entries: list[str] = []
    refused: list[tuple[str, str]] = []
    for rule in sorted(rules, key=lambda r: r["id"]):
        try:
            entry = rule_entry(rule, address_groups or {})
        except ValueError as e:
            refused.append((rule["id"], str(e)))
            continue
        if entry is not None:
            entries.append(entry)
    remotes = tuple(sorted({r["remote_group_id"] for r in rules if r.get("remote_group_id")}))
    value = ";".join(([] if stateful else [STATELESS]) + entries)
    return GroupValue(value, remotes, tuple(refused))


def _sort_key(value: str) -> tuple:
    net = ipaddress.ip_network(value, strict=False)
    return (net.version, int(net.network_address), net.prefixlen)


def members_value(addresses) -> str:
    """`ovsnat-sgm-<id>`: the group's IPv4 members, as Neutron's sg_member_ips has them
    (fixed IPs and allowed-address-pair addresses, the latter possibly networks), sorted."""
    v4 = {_address(a) for a in addresses if ipaddress.ip_network(a, strict=False).version == 4}
    return ",".join(sorted(v4, key=_sort_key))


def bridge_keys(groups: dict[str, str], members: dict[str, str]) -> dict[str, str]:
    """The Bridge keys for these group values and member values."""
    keys = {GROUP_PREFIX + gid: value for gid, value in groups.items()}
    keys.update({MEMBERS_PREFIX + gid: value for gid, value in members.items()})
    return keys


def is_group_key(key: str) -> bool:
    """A Bridge key the agent manages (ovsnat-snat-ip and others are not)."""
    return key.startswith(GROUP_PREFIX) or key.startswith(MEMBERS_PREFIX)


@dataclass(frozen=True)
class Fetch:
    """What an agent asks the server for in one call: the rules of `groups`, the members
    of `members`, and (the server adds them) the members of the remote groups of `groups`
    that are not in `known`."""

    groups: tuple[str, ...]
    members: tuple[str, ...]
    known: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.groups or self.members)


def plan_fetch(
    own: set[str],
    remotes_of: dict[str, frozenset],
    members_known: set[str],
    rules_dirty: set[str],
    members_dirty: set[str],
    full: bool,
) -> Fetch:
    """The agent's fetch, given its local ports' groups (`own`), the remote groups of the
    groups it holds, the member lists it holds, and the ids the server's pushes named since
    (rules changed, members changed). A group is fetched when new, when its rules changed,
    or when a remote group its rules name changed (a deleted group takes the rules naming
    it with it); a member list when new or changed; everything after a (re)sync."""
    held = {g for g in own if g in remotes_of}
    namers = {g for g in held if remotes_of[g] & rules_dirty}
    groups = own if full else (own - held) | (own & rules_dirty) | namers
    remotes = set().union(*(remotes_of[g] for g in held))
    members = remotes if full else (remotes - members_known) | (remotes & members_dirty)
    return Fetch(
        tuple(sorted(groups)), tuple(sorted(members)), tuple(sorted(members_known - members))
    )
