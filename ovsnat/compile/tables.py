"""The declared pipeline: every table, what it is for, what it may match, do and go to.

`check_flow` holds each generated flow to its table's declaration (as Faucet does), so a
compiler change that wanders outside the design fails in the unit tests, not in production.
flows/pipeline.md documents the same tables; a test keeps the two in sync. The tables'
numbers and the registers' layout are ovsnat.compile.pipeline's.
"""

from __future__ import annotations

from ovsnat.compile import eastwest, metadata_flows
from ovsnat.compile.actions import (
    Conjunction,
    Controller,
    Ct,
    CtClear,
    DecTtl,
    Goto,
    Group,
    Load,
    Meter,
    Move,
    Output,
    OutputReg,
    PopVlan,
    PushVlan,
    SetField,
)
from ovsnat.compile.flows import Flow
from ovsnat.compile.pipeline import (
    CLASSIFY,
    CONN_COUNT,
    CONN_VERDICT,
    DELIVER,
    EGRESS,
    EGRESS_OUT,
    EW_IN,
    EW_ROUTE,
    FABRIC_IN,
    HANDOFF_IN,
    INGRESS,
    META_REPLY,
    NET_PAT_DONE,
    NET_PAT_IN,
    NET_PAT_OUT,
    PAT_GUARD,
    PAT_IN,
    PAT_IN_NET,
    PAT_OUT,
    SG_IN,
    SG_IN_CT,
    SG_OUT,
    SG_OUT_CT,
    UPLINK_ARP,
    VM_ARP,
    VM_L2,
    VM_ROUTE,
    Table,
    declare,
)

ARP_REPLY = {Move, SetField, Output}
FABRIC_OUT = {PushVlan, Output}

_DECLARED: tuple[Table, ...] = (
    declare(
        CLASSIFY,
        "classify",
        "Admit untagged frames by where they come from: a VM port with the VM's own MAC and "
        "fixed IP (IP) or MAC and sender address (ARP), tagging the packet with the VM's "
        "network (reg6); the uplink; the fabric port, one flow per network (its VLAN popped, "
        "the network in reg6, the from-fabric flag set). A VM's DHCP request goes to the "
        "controller (metered), which answers it (from the uplink or the fabric it is "
        "dropped). A VM port over its share of packet-ins of a kind (DHCP, RARP, presence "
        "copies) has that kind dropped here for a while by flows with a hard timeout. Drop "
        "and count IPv6, multicast, broadcast, DHCP server frames and metadata traffic but a "
        "port's own request to the metadata proxy (its MAC and fixed IP, to "
        "169.254.169.254:80, marked with its encoded address) and the proxy's replies; "
        "drop link-local sources from the uplink; drop everything else. When the gateway MAC "
        "is learned dynamically, copy the gateway's "
        "ARP to the controller (only the copy metered); while a FIP VM's presence is "
        "unproven, copy its frames to the controller (the copies metered; activation) until "
        "one proves it or none can; with a fabric, a VM's RARP goes to the controller "
        "(metered), which passes it on to the fabric (the fabric's and uplink's are dropped). "
        "bgp mode: a routed uplink's ARP and IP for the link's own address go to its kernel "
        "port, its other IP to ingress; the kernel port's frames go out of its uplink only.",
        "proto in_port vlan_tci dl_vlan dl_src nw_src nw_dst arp_spa arp_tpa arp_sha tp_src tp_dst",
        {Goto, Controller, Load, PopVlan, Meter, Output},
        {FABRIC_IN, VM_ARP, UPLINK_ARP, SG_OUT_CT, VM_ROUTE, HANDOFF_IN, INGRESS, META_REPLY},
    ),
    declare(
        FABRIC_IN,
        "fabric_in",
        "Frames from the fabric, already in their network: never with the router MAC, this "
        "host's routed MAC or a local VM's MAC as source, never to the router MAC; another "
        "host's routed MAC goes to ew_in (a routed packet, east-west); a routed-looking "
        "frame (its source in another network of its network's router) from any other MAC "
        "is dropped; ARP and IP go on to the network's delivery tables. A gratuitous ARP "
        "for an address a local port has as an allowed pair is copied to the controller "
        "(metered): another host's VM holds that VIP now.",
        "proto reg3 reg6 dl_src dl_dst nw_src arp_spa arp_tpa",
        {Goto, Move, Controller},
        {EW_IN, VM_ARP, VM_L2},
    ),
    declare(
        VM_ARP,
        "vm_arp",
        "ARP within a network: answer a VM's request for its gateway, or for "
        "169.254.169.254 when metadata is on, with the router MAC (not from the fabric); any "
        "other ARP from a local VM is copied to the fabric (as a switch "
        "floods it: GARPs and requests reach the other hosts); then vm_l2 delivers it to the "
        "local VM whose fixed IP is its target, if any.",
        "proto reg5 reg6 arp_op arp_tpa",
        ARP_REPLY | FABRIC_OUT | {PopVlan, Goto},
        {VM_L2},
    ),
    declare(
        UPLINK_ARP,
        "uplink_arp",
        "ARP from the external network: answer only for this host's FIPs and SNAT IP, each "
        "with its own MAC; ARP claiming one of them, and probes for a dark FIP, go to the "
        "controller (metered): another host answers for it, or took it over. A VIP's FIP's "
        "own ARP (the new holder's host announcing it) is dropped, never answered. With tagged "
        "external networks, each address is answered only in its own network's VLAN.",
        "proto vlan_tci dl_vlan arp_op arp_spa arp_tpa",
        ARP_REPLY | {Controller, Meter},
    ),
    declare(
        SG_OUT_CT,
        "sg_out_ct",
        "IP from a filtered port (its security profile in reg9, zone in reg10): looked up in "
        "the port's own conntrack zone (a stateless profile's go on untracked).",
        "proto reg9",
        {Ct, Goto},
        {SG_OUT},
    ),
    declare(
        SG_OUT,
        "sg_out",
        "The port's egress rules: invalid dropped; replies and related on to vm_route; every "
        "other packet meets the rules of the port's profile (remote groups as conjunctions "
        "with their members' addresses): a new connection allowed is committed in the port's "
        "zone, a later packet allowed goes on; a later packet no rule allows any more marks "
        "its connection dead (ct_mark 0x2), and a dead connection's packets are dropped; "
        "anything else is dropped by the port's own flow, which counts it.",
        "ct_state ct_mark proto reg9 nw_proto nw_dst tp_dst icmp_type icmp_code conj_id in_port",
        {Ct, Conjunction, Goto},
        {VM_ROUTE},
    ),
    declare(
        VM_ROUTE,
        "vm_route",
        "IP from a VM: to the router MAC is routed (egress; first through the VM's counting "
        "zone when it has a connection limit), except from a network on no router, where "
        "it is dropped by the network's own flow (docs/routers.md), and from a network "
        "routed east-west, which gets its router's tag (reg3) and goes to ew_route first; "
        "anything else is switched within the VM's network. A port's own request to "
        "169.254.169.254:80 (marked in classify) goes to the metadata proxy, its source the "
        "port's encoded address (register 8).",
        "proto reg5 reg6 dl_dst",
        {Goto, Move, Ct, Load, SetField, Output},
        {CONN_COUNT, EW_ROUTE, EGRESS, VM_L2},
    ),
    declare(
        CONN_COUNT,
        "conn_count",
        "A VM with a connection limit (conn_limit): after a lookup in its own counting zone "
        "(conn_limit_zone_base + its ofport, limited with dpctl/ct-set-limits), a new "
        "connection is committed there with ct_mark 1, which fails once the zone is full; "
        "everything else, and a session that began on another host (handoff), goes on to "
        "egress uncounted.",
        "ct_state proto reg5 tcp_flags",
        {Ct, Goto},
        {CONN_VERDICT, EGRESS},
    ),
    declare(
        CONN_VERDICT,
        "conn_verdict",
        "A connection the counting zone took (ct_mark 1) goes on to egress; one it refused is "
        "dropped by the VM's own flow, which counts its refusals.",
        "ct_mark reg4",
        {Goto},
        {EGRESS},
    ),
    declare(
        HANDOFF_IN,
        "handoff_in",
        "Frames of the handoff VLAN (ovsnat.core.handoff): a departed VM's packets, broadcast "
        "by the host it moved to, go on through egress as if the VM were still here, where only "
        "connections this host's conntrack already holds pass; replies for a VM that arrived "
        "here, sent by the host it left, are delivered to it as routed traffic. Anything "
        "else is dropped.",
        "proto dl_src dl_dst nw_src nw_dst",
        {Load, SetField, Move, Goto},
        {EGRESS, VM_L2},
    ),
    declare(
        EGRESS,
        "egress",
        "Routed from a VM. TTL 1 goes to the controller (metered; a port over its share is "
        "dropped here for a while), which answers time exceeded from the network's gateway; "
        "TTL 0 and link-local destinations are dropped (bgp mode: the links and protected "
        "ranges too); destinations in the VM's own "
        "network "
        "dropped; a VM with a FIP (its flag and FIP set in classify) gets its source "
        "rewritten statelessly to the FIP and the FIP's MAC by one host-level flow (fragments "
        "via conntrack, per VM) and the FIP flag set; any other VM goes to PAT: the untagged "
        "network straight to the shared PAT zone, a VLAN network first through its own zone "
        "(a network whose router does no PAT, snat off or no gateway: dropped by the "
        "network's own flow).",
        "proto reg5 reg6 in_port nw_src nw_dst nw_ttl nw_frag",
        {SetField, Ct, Goto, Load, Move, Meter, Controller},
        {NET_PAT_OUT, PAT_OUT, EGRESS_OUT},
    ),
    declare(
        NET_PAT_OUT,
        "net_pat_out",
        "A VLAN network's own conntrack zone: drop invalid, pass established and related, "
        "commit new connections with nat(src=the network's transit address), so equal fixed "
        "IPs of two networks never meet in the shared PAT zone. Never a commit for a handed "
        "packet; a TCP segment without SYN from a VM in its arrival grace is a session that "
        "began on another host: broadcast on the handoff VLAN, not committed.",
        "ct_state proto reg5 reg6 nw_src tcp_flags",
        {Ct, Goto, SetField, PushVlan, Output},
        {NET_PAT_DONE},
    ),
    declare(
        NET_PAT_DONE,
        "net_pat_done",
        "Only packets whose source now is a transit address go on, into the shared PAT zone; "
        "anything else (the network's zone could not translate it) is dropped and counted.",
        "proto nw_src",
        {CtClear, Ct},
        {PAT_OUT},
    ),
    declare(
        PAT_OUT,
        "pat_out",
        "After the shared PAT conntrack lookup: drop invalid, pass established and related "
        "(already translated), commit new connections with nat(src=snat_ip:range); as in "
        "net_pat_out, never for a handed packet, and a TCP segment without SYN from a VM in "
        "its arrival grace goes to the handoff VLAN instead. A network whose router's gateway "
        "is a tagged external network (its VLAN in reg2) commits to that network's SNAT "
        "address instead.",
        "ct_state proto reg2 reg5 reg6 nw_src tcp_flags",
        {Ct, Goto, SetField, PushVlan, Output},
        {PAT_GUARD},
    ),
    declare(
        PAT_GUARD,
        "pat_guard",
        "Leak guard: only packets whose source now is the SNAT IP continue; anything else "
        "(an exhausted port range leaves the private source) is dropped and counted.",
        "proto nw_src",
        {SetField, Goto},
        {EGRESS_OUT},
    ),
    declare(
        EGRESS_OUT,
        "egress_out",
        "Translated traffic: ICMP errors a FIP VM sent go to the controller (metered; a port "
        "over its share is dropped here for a while), which translates their quoted header "
        "too; everything else looks up ingress once more with "
        "the leaving flag, so traffic to one of this host's own external addresses hairpins.",
        "proto reg5 in_port icmp_type",
        {CtClear, Load, Goto, Meter, Controller},
        {INGRESS},
    ),
    declare(
        INGRESS,
        "ingress",
        "Routed to this host (uplink or hairpin). TTL 1 goes to the controller (metered apart "
        "from the VMs' punts), which "
        "answers time exceeded from the FIP or SNAT IP it was sent to; TTL 0 is dropped; the "
        "first fragment of an ICMP error goes to the controller too (it translates it for a "
        "FIP VM, whole); a FIP is "
        "rewritten to its VM's fixed IP and network (fragments via conntrack) with the FIP flag "
        "set; the SNAT IP goes through the shared PAT lookup; leaving traffic goes to the "
        "external gateway with dec_ttl, in the VLAN of the external network its source "
        "belongs to (bgp mode: to the ToRs' select group); anything else is dropped.",
        "proto reg5 nw_src nw_dst nw_ttl nw_frag icmp_type",
        {SetField, Ct, Goto, Load, DecTtl, PushVlan, Output, Meter, Controller, Group},
        {PAT_IN, DELIVER},
    ),
    declare(
        PAT_IN,
        "pat_in",
        "After the reverse PAT lookup: only replies of known connections (established or "
        "related) pass; unsolicited packets to the SNAT IP are dropped and counted.",
        "ct_state proto",
        {Goto},
        {PAT_IN_NET},
    ),
    declare(
        PAT_IN_NET,
        "pat_in_net",
        "Which network a PAT reply belongs to: the untagged network by its CIDR, a VLAN network "
        "by its transit address (then through the network's zone once more).",
        "proto nw_dst",
        {Load, Goto, CtClear, Ct},
        {DELIVER, NET_PAT_IN},
    ),
    declare(
        NET_PAT_IN,
        "net_pat_in",
        "After a VLAN network's reverse lookup: established and related replies pass.",
        "ct_state proto",
        {Goto},
        {DELIVER},
    ),
    declare(
        DELIVER,
        "deliver",
        "Routed to a VM: ICMP errors for a FIP VM go to the controller (metered), which "
        "translates their quoted header; the rest gets the router MAC as source, dec_ttl and "
        "the routed flag, and is delivered by vm_l2.",
        "proto reg5 icmp_type",
        {SetField, DecTtl, Load, Move, Goto, Meter, Controller},
        {VM_L2},
    ),
    declare(
        VM_L2,
        "vm_l2",
        "Delivery within a network by register 7 (the IP destination or ARP target, copied "
        "there on the way in), one flow per local VM for both: to that VM with its MAC as "
        "destination; IP for no local VM, when switched rather than routed, to the fabric in "
        "the network's VLAN. Routed traffic leaves on the fabric only to a remote neighbour "
        "of an east-west network (its MAC, this host's routed MAC as source, one flow per "
        "neighbour; never a frame that came from the fabric), or as a reply for a VM "
        "that left this host within its handoff grace: to the handoff VLAN, for the host it "
        "went to. IP for a filtered port goes through its ingress rules instead (its profile, "
        "zone and port loaded into registers 9-11); a port that is administratively down "
        "gets nothing.",
        "proto reg5 reg6 reg7",
        {SetField, Output, PushVlan, Load, Goto},
        {SG_IN_CT},
    ),
    declare(
        SG_IN_CT,
        "sg_in_ct",
        "IP to a filtered port: its earlier conntrack state cleared (PAT's or a network's "
        "zone), looked up in the port's own zone (a stateless profile's go on untracked).",
        "proto reg9",
        {CtClear, Ct, Goto},
        {SG_IN},
    ),
    declare(
        SG_IN,
        "sg_in",
        "The port's ingress rules, as sg_out's, delivering out of the port in reg11; a "
        "packet handed over the handoff VLAN (a session the host the VM left holds) is "
        "committed and delivered.",
        "ct_state ct_mark proto reg5 reg9 reg11 nw_proto nw_src tp_dst icmp_type icmp_code conj_id",
        {Ct, Conjunction, OutputReg},
    ),
)

# Every table by its number; east-west routing and metadata declare their own.
TABLES: tuple[Table, ...] = tuple(
    sorted((*_DECLARED, *eastwest.TABLES, *metadata_flows.TABLES), key=lambda t: t.id)
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
            raise PipelineViolation(
                f"{flow.text()}: table {table.name} may not use {type(action).__name__}"
            )
    bad = flow.gotos() - table.next_tables
    if bad:
        raise PipelineViolation(f"{flow.text()}: table {table.name} may not go to {bad}")
    if any(isinstance(a, Goto) and a.table <= flow.table for a in flow.actions):
        # OVS refuses a goto_table backwards (OFPBIC_BAD_TABLE_ID) and fails the bundle.
        raise PipelineViolation(f"{flow.text()}: goto_table must go to a later table")
    if DecTtl() in flow.actions and flow.match.get("proto") != "ip":
        # OVS refuses dec_ttl without an ip match under OpenFlow 1.3 (and fails the bundle).
        raise PipelineViolation(f"{flow.text()}: dec_ttl needs an ip match")


def check_flows(flows) -> None:
    for flow in flows:
        check_flow(flow)
