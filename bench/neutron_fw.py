"""How many flows Neutron's OVS firewall driver installs on one host for a configuration: a
formula written from its code (openstack/neutron at 2131d26, 2026-08-07;
neutron/agent/linux/openvswitch_firewall/firewall.py and rules.py, table numbers from
neutron-lib's neutron_lib/plugins/ml2/ovs_constants.py), not its code. Defaults assumed:
one IPv4 fixed IP and no allowed address pair per port, no IPv6 address (the link-local one
only), `permitted_ethertypes` empty, `explicitly_egress_direct` False, a VLAN network, every
port in one network. Each term names the function it comes from.

Per port, base (OVSFirewallDriver.initialize_port_flows and add_flows_from_rules):
  initialize_port_flows: 1 (TRANSIENT_TABLE in_port) + per MAC 2 (install_physical_direct_flow,
    VLAN; TRANSIENT_TABLE dl_dst+dl_vlan)                                               = 3
  _initialize_egress: per IPv4 (MAC, IP) 3 (ARP, RARP, IP into conntrack); per IPv6 pair,
    the link-local one OFPort.update adds, 5 (_initialize_egress_ipv6_icmp: 3 allowed + 1
    restricted ICMPv6 types; the IPv6 conntrack flow); DHCP discovery 3 (IPv4 pair and
    0.0.0.0, IPv6 pair); DHCP server ban 2; RA drop 1; drop the rest 1; ACCEPT_OR_INGRESS
    per MAC 1, per ethertype 2, reg_port 1                                              = 19
  _initialize_ingress: ARP 1, ICMPv6 4 (3 types + RA), DHCP offers 2, track untracked 2
    (per ethertype), tracked 1                                                          = 10
  _initialize_tracked_ingress and _initialize_tracked_egress: ct_mark invalid 1, est-reply
    and related 2, not established 1, per ethertype 2: 6 each; their `+inv` flow has no
    port match, so the switch holds one per table for every port                        = 12
                                                                               per port = 44
Per host: a drop flow in each of the 5 OVS_FIREWALL_TABLES (_drop_all_unmatched_flows), 1
  (_initialize_common_flows), 4 (_initialize_third_party_tables), the 2 shared `+inv`  = 12

Per port, a rule without a remote group (add_flows_from_rules -> create_flows_from_rule_and_port,
  then _accept_flow -> rules.create_accept_flows: one flow per ct_state, established and new):
  2 x m(rule), m = the masked blocks of a TCP/UDP/SCTP port range (utils.port_rule_masking:
  the fewest aligned power-of-two blocks; `blocks` below counts them), else 1. A
  remote_ip_prefix is one match field: Neutron rules have one prefix each.
Per port, rules naming a remote group (_add_non_ip_conj_flows): grouped by (direction,
  ethertype, protocol); TCP/UDP/SCTP groups split into disjoint port segments
  (rules.merge_port_ranges), others merged by equal port fields (rules.merge_common_rules);
  each segment 2 x m(segment) flows (rules.substitute_conjunction_actions, dimension 2, one
  per ct_state); then 2 accept flows per conjunction id (rules.create_conj_flows). A
  conjunction id belongs to (the rule's group, the remote group, direction, ethertype)
  (ConjIdMap.get_conj_id) plus 2 x the rule's priority offset (rules.flow_priority_offset:
  0 any protocol, 1 ICMP without type, 2 ICMP type without code, 3 otherwise).
Per network, per remote-group member (ConjIPFlowManager.update_flows_for_vlan ->
  rules.create_flows_for_ip_address_and_mac): per direction, 2 flows (one per ct_state) for
  each priority offset among the conjunction ids of the groups that name a group the address
  is in, whatever the number of ports or of rules.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ovsnat.model.secgroups import HostSecurity, Rule

PER_PORT_BASE = 44
PER_HOST = 12
PORTED = (6, 17, 132)  # tcp, udp, sctp: REVERSE_IP_PROTOCOL_MAP_WITH_PORTS


def blocks(lo: int, hi: int) -> int:
    """The fewest aligned power-of-two blocks covering [lo, hi] (as many as
    utils.port_rule_masking returns: checked equal on 20,000 random ranges)."""
    n = 0
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        lo, n = lo + size, n + 1
    return n


def matches(rule: Rule) -> int:
    """m(rule): create_flows_from_rule_and_port's flows for one rule (before ct_states)."""
    if rule.proto in PORTED and rule.lo is not None:
        return blocks(rule.lo, rule.hi)
    return 1


def offset(rule: Rule) -> int:
    """rules.flow_priority_offset of a remote-group rule (its conjunction offset is 0)."""
    if rule.proto is None:
        return 0
    if rule.proto == 1:
        if rule.lo is None:
            return 1
        if rule.hi is None:
            return 2
    return 3


def segments(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """rules.merge_port_ranges' disjoint segments of the union (no range: 1-65535); one
    segment covering everything is a rule without ports."""
    if len(ranges) == 1:
        return ranges
    cuts = sorted({lo for lo, _ in ranges} | {hi + 1 for _, hi in ranges})
    out = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        if any(lo <= a and b - 1 <= hi for lo, hi in ranges):
            out.append((a, b - 1))
    return out


@dataclass
class Count:
    base: int = 0  # per-port base flows and the host's
    rules: int = 0  # rules without a remote group, every port
    remote_rules: int = 0  # rules naming a remote group: their dimension and accept flows
    members: int = 0  # remote-group member flows

    @property
    def total(self) -> int:
        return self.base + self.rules + self.remote_rules + self.members

    def as_dict(self) -> dict:
        return {**self.__dict__, "total": self.total}


def port_rules(groups) -> tuple[int, int, set]:
    """(plain rule flows, remote rule flows, conjunction ids) of one port in `groups`."""
    plain, remote_flows = 0, 0
    by_key: dict[tuple, list[tuple[Rule, str]]] = defaultdict(list)
    for g in groups:
        for r in g.rules:
            if not r.applied:
                continue
            if r.remote_group is None:
                plain += 2 * matches(r)
            else:
                by_key[(r.ingress, r.proto)].append((r, g.id))
    conj = set()
    for (ingress, proto), rules in by_key.items():
        conj |= {(gid, r.remote_group, ingress, offset(r)) for r, gid in rules}
        if proto in PORTED:
            ranges = [(r.lo, r.hi) if r.lo is not None else (1, 65535) for r, _ in rules]
            segs = segments(ranges)
            if segs == [(1, 65535)]:
                remote_flows += 2
            else:
                remote_flows += sum(2 * blocks(lo, hi) for lo, hi in segs)
        else:
            remote_flows += 2 * len({(r.lo, r.hi) for r, _ in rules})
    return plain, remote_flows + 2 * len(conj), conj


def count(port_groups: list[tuple[str, ...]], security: HostSecurity, networks: int = 1) -> Count:
    """Neutron's flows for ports in `port_groups` (each port's group ids), the groups and
    members as `security` has them, the ports in one network (`networks` > 1: the member
    flows are per network, as ConjIPFlowManager keeps them per VLAN)."""
    c = Count(base=PER_HOST + PER_PORT_BASE * len(port_groups))
    conj_ids: set = set()
    for groups in port_groups:
        plain, remote, conj = port_rules([security.groups[g] for g in groups])
        c.rules += plain
        c.remote_rules += remote
        conj_ids |= conj
    for ingress in (True, False):
        offsets_by_addr: dict[str, set[int]] = defaultdict(set)
        for _, remote, direction, off in conj_ids:
            if direction == ingress:
                for ip in security.members.get(remote, ()):
                    offsets_by_addr[str(ip)].add(off)
        c.members += networks * sum(2 * len(o) for o in offsets_by_addr.values())
    return c
