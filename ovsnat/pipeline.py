"""The declared pipeline: every table, what it is for, what it may match, do and go to.

`check_flow` holds each generated flow to its table's declaration (as Faucet does), so a
compiler change that wanders outside the design fails in the unit tests, not in production.
flows/pipeline.md documents the same tables; a test keeps the two in sync.
"""

from __future__ import annotations

from dataclasses import dataclass

from ovsnat.flows import Ct, CtClear, Controller, DecTtl, Flow, Goto, Load, Meter, Move, \
    Output, SetField


@dataclass(frozen=True)
class Table:
    id: int
    name: str
    purpose: str
    matches: frozenset[str]
    actions: frozenset[type]
    next_tables: frozenset[int] = frozenset()


def _t(id, name, purpose, matches, actions, next_tables=()):
    return Table(id, name, purpose, frozenset(matches.split()), frozenset(actions),
                 frozenset(next_tables))


CLASSIFY, VM_ARP, UPLINK_ARP, VM_L2 = 0, 10, 15, 20
EGRESS, PAT_OUT, PAT_GUARD, EGRESS_OUT = 30, 35, 38, 40
INGRESS, PAT_IN, DELIVER = 50, 55, 60

ARP_REPLY = {Move, SetField, Output}

TABLES: tuple[Table, ...] = (
    _t(CLASSIFY, "classify",
       "Admit untagged frames by where they come from: a VM port with the VM's own MAC and "
       "fixed IP (IP) or MAC and sender address (ARP), or the uplink. Drop and count IPv6, "
       "multicast, broadcast, DHCP and metadata traffic; drop everything else. When the "
       "gateway MAC is learned dynamically, copy the gateway's ARP to the controller; while a "
       "FIP VM's presence is unproven, copy its frames to the controller (activation).",
       "proto in_port vlan_tci dl_src nw_src nw_dst arp_spa arp_sha tp_src tp_dst",
       {Goto, Controller}, {VM_ARP, UPLINK_ARP, VM_L2, INGRESS}),
    _t(VM_ARP, "vm_arp",
       "ARP from VMs: answer for the VMs' gateway with the router MAC; deliver ARP for a "
       "local VM's fixed IP to that VM only.",
       "proto arp_op arp_tpa", ARP_REPLY),
    _t(UPLINK_ARP, "uplink_arp",
       "ARP from the external network: answer only for this host's FIPs and SNAT IP, each "
       "with its own MAC; ARP from anyone else claiming one of this host's FIPs goes to the "
       "controller (metered): another host took the FIP over.",
       "proto arp_op arp_spa arp_tpa", ARP_REPLY | {Controller, Meter}),
    _t(VM_L2, "vm_l2",
       "IP from a VM: to another local VM's MAC and IP (east-west, no routing), or to the "
       "router MAC (routed).",
       "proto dl_dst nw_dst", {Output, Goto}, {EGRESS}),
    _t(EGRESS, "egress",
       "Routed from a VM. TTL<=1 dropped and counted; internal destinations dropped; a VM "
       "with a FIP gets its source rewritten statelessly (fragments via conntrack, zone "
       "fip_frag_ct_zone); ICMP errors a FIP VM sends go to the controller (metered), which "
       "translates their quoted header too; any other VM goes to PAT (conntrack lookup in "
       "zone ct_zone).",
       "proto nw_src nw_dst nw_ttl nw_frag icmp_type", {SetField, Ct, Goto, Meter, Controller},
       {PAT_OUT, EGRESS_OUT}),
    _t(PAT_OUT, "pat_out",
       "After the PAT conntrack lookup: drop invalid, pass established and related (already "
       "translated), commit new connections with nat(src=snat_ip:range).",
       "ct_state proto nw_src", {Ct, Goto}, {PAT_GUARD}),
    _t(PAT_GUARD, "pat_guard",
       "Leak guard: only packets whose source now is the SNAT IP continue; anything else "
       "(an exhausted port range leaves the private source) is dropped and counted.",
       "proto nw_src", {SetField, Goto}, {EGRESS_OUT}),
    _t(EGRESS_OUT, "egress_out",
       "Translated traffic to one of this host's own external addresses loops back into "
       "ingress (hairpin); everything else leaves to the external gateway with dec_ttl.",
       "proto nw_dst", {CtClear, Load, SetField, DecTtl, Output, Goto}, {INGRESS}),
    _t(INGRESS, "ingress",
       "Routed to this host (uplink or hairpin). TTL<=1 dropped and counted; a FIP is "
       "rewritten to its VM's fixed IP (fragments via conntrack; ICMP errors via the metered "
       "controller, which also translates the quoted header); the SNAT IP goes through the "
       "PAT conntrack lookup; anything else is dropped.",
       "proto dl_dst nw_dst nw_ttl nw_frag icmp_type", {SetField, Ct, Goto, Meter, Controller},
       {PAT_IN, DELIVER}),
    _t(PAT_IN, "pat_in",
       "After the reverse PAT lookup: only replies of known connections (established or "
       "related) pass; unsolicited packets to the SNAT IP are dropped and counted.",
       "ct_state proto", {Goto}, {DELIVER}),
    _t(DELIVER, "deliver",
       "To the VM owning the (now internal) destination: router MAC as source, dec_ttl, "
       "output to its port.",
       "proto nw_dst", {SetField, DecTtl, Output}),
)

BY_ID = {t.id: t for t in TABLES}


class PipelineViolation(AssertionError):
    pass


def check_flow(flow: Flow) -> None:
    """Raise PipelineViolation if `flow` does something its table does not declare."""
    table = BY_ID.get(flow.table)
    if table is None:
        raise PipelineViolation(f"{flow.text()}: table {flow.table} is not declared")
    extra = flow.match.names() - table.matches
    if extra:
        raise PipelineViolation(f"{flow.text()}: table {table.name} may not match {extra}")
    for action in flow.actions:
        if type(action) not in table.actions:
            raise PipelineViolation(f"{flow.text()}: table {table.name} may not use "
                                    f"{type(action).__name__}")
    bad = flow.gotos() - table.next_tables
    if bad:
        raise PipelineViolation(f"{flow.text()}: table {table.name} may not go to {bad}")
    if DecTtl() in flow.actions and flow.match.get("proto") != "ip":
        # OVS refuses dec_ttl without an ip match under OpenFlow 1.3 (and fails the bundle).
        raise PipelineViolation(f"{flow.text()}: dec_ttl needs an ip match")


def check_flows(flows) -> None:
    for flow in flows:
        check_flow(flow)
