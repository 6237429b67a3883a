"""The host-level flows: what every VM of the host shares. The tables' defaults, the way in
from the uplink and out to it, PAT's conntrack passes, the FIP rewrite's one flow, the punts
to the controller, and the flows of the options (per-host PAT, the handoff, connection
limits, the gateway's MAC, DHCP, the fabric). They depend on the host config alone.
"""

from __future__ import annotations

from ovsnat.compile import (
    connlimit,
    eastwest,
    ext_flows,
    handoff_flows,
    metadata_flows,
    routed_flows,
    sg_flows,
)
from ovsnat.compile.actions import (
    Controller,
    Ct,
    CtClear,
    DecTtl,
    Goto,
    Load,
    Meter,
    Move,
    Nat,
    Output,
    SetField,
)
from ovsnat.compile.ext_flows import uplink_vlan
from ovsnat.compile.flows import COOKIE_HOST, NO_VLAN, Flow, Match, make_flow, owner_cookie
from ovsnat.compile.pipeline import (
    CLASSIFY,
    DELIVER,
    EGRESS,
    EGRESS_OUT,
    FABRIC_IN,
    FIP_DONE,
    HAS_FIP,
    INGRESS,
    LEAVING,
    NET_PAT_DONE,
    NET_PAT_IN,
    NET_PAT_OUT,
    OUTSIDE,
    PAT_GUARD,
    PAT_IN,
    PAT_IN_NET,
    PAT_OUT,
    ROUTED,
    TO_KEY_ARP,
    TO_KEY_IP,
    UPLINK_ARP,
    VM_ARP,
    VM_L2,
    VM_ROUTE,
    flag,
)
from ovsnat.compile.punt_flows import (
    CLAIM_METER,
    ICMP_MAX_LEN,
    PACKET_IN_METER,
    UPLINK_METER,
    dhcp_punts,
)
from ovsnat.compile.shared import arp_reply, pat_commit
from ovsnat.model import HostConfig, mac_str
from ovsnat.model.metadata import ENCODED, METADATA_IP
from ovsnat.packets.icmp import ERROR_TYPES

# Drop-and-count flows for traffic VMs may not send here (see README "What is dropped").
NOT_SERVED = (
    ("ipv6", {}),
    ("ip", {"nw_dst": "224.0.0.0/4"}),  # multicast
    ("ip", {"nw_dst": "255.255.255.255"}),  # limited broadcast
    # metadata: a port's own request is steered above this (ovsnat.compile.metadata_flows)
    ("ip", {"nw_dst": str(METADATA_IP)}),
    ("udp", {"tp_src": 68, "tp_dst": 67}),  # DHCP requests ovsnat does not answer
    ("udp", {"tp_src": 67, "tp_dst": 68}),  # DHCP servers: only ovsnat answers
)
LINK_LOCAL = str(ENCODED)  # 169.254.0.0/16
# Tables whose misses are dropped (the others' defaults are their own).
DROPPED = (
    CLASSIFY,
    VM_ARP,
    UPLINK_ARP,
    VM_ROUTE,
    VM_L2,
    EGRESS,
    NET_PAT_OUT,
    NET_PAT_DONE,
    PAT_OUT,
    PAT_GUARD,
    EGRESS_OUT,
    INGRESS,
    PAT_IN,
    PAT_IN_NET,
    NET_PAT_IN,
    DELIVER,
    *sg_flows.TABLES,
    *[t.id for t in metadata_flows.TABLES],
)
EXPIRED = Match.of(proto="ip", nw_ttl=1)  # answered (time exceeded), metered
DEAD = Match.of(proto="ip", nw_ttl=0)
EST_REL = (Match.of(ct_state="+est+trk", proto="ip"), Match.of(ct_state="+rel+trk", proto="ip"))
INVALID = Match.of(ct_state="+inv+trk", proto="ip")


def host_flows(cfg: HostConfig) -> list[Flow]:
    cfg.require_snat()
    c = owner_cookie(COOKIE_HOST, 0)
    flows = [
        *_arrivals(cfg, c),
        *_egress(cfg, c),
        *_ingress(cfg, c),
        *[_drop(c, table) for table in DROPPED],
    ]
    if not cfg.pat_ports_per_vm:
        new = Match.of(ct_state="+new+trk", proto="ip", **handoff_flows.not_handed(cfg))
        flows.append(
            make_flow(c, PAT_OUT, 50, new, [pat_commit(cfg, cfg.snat_port_min, cfg.snat_port_max)])
        )
    router = mac_str(cfg.router_mac)
    flows += handoff_flows.host_flows(cfg, c) + connlimit.host_flows(cfg, c, router)
    flows += _gateway(cfg, c)
    if cfg.dhcp.enabled:
        flows += dhcp_punts(cfg, c)
    if cfg.fabric_ofport:
        flows += _fabric(cfg, c)
    flows += ext_flows.host_flows(cfg, c) + metadata_flows.host_flows(cfg, c)
    return flows + eastwest.host_part(cfg, c) + sg_flows.host_flows(c)


def _drop(c: int, table: int, prio: int = 0, match: Match = Match()) -> Flow:
    return make_flow(c, table, prio, match, [])


def _icmp_punts(c: int, table: int, meter: int) -> list[Flow]:
    """ICMP errors that went through a FIP quote the untranslated header: the controller
    fixes it (metered)."""
    return [
        make_flow(
            c,
            table,
            105,
            Match.of(proto="icmp", reg5=flag(FIP_DONE), icmp_type=t),
            [Meter(meter), Controller(ICMP_MAX_LEN)],
        )
        for t in ERROR_TYPES
    ]


def _arrivals(cfg: HostConfig, c: int) -> list[Flow]:
    """What arrives from the VMs and the outside: what is not served, the uplink's (or the
    routed uplinks': ovsnat.compile.routed_flows), routed or switched."""
    router = mac_str(cfg.router_mac)
    return [
        *[_drop(c, CLASSIFY, 400, Match.of(proto=p, **m)) for p, m in NOT_SERVED],
        *(routed_flows.arrivals(cfg, c) if cfg.bgp else _uplink(cfg, c)),
        make_flow(c, VM_ROUTE, 100, Match.of(proto="ip", dl_dst=router), [Goto(EGRESS)]),
        make_flow(c, VM_ROUTE, 10, Match.of(proto="ip"), [TO_KEY_IP, Goto(VM_L2)]),
        make_flow(c, VM_ARP, 10, Match.of(proto="arp"), [TO_KEY_ARP, Goto(VM_L2)]),
    ]


def _uplink(cfg: HostConfig, c: int) -> list[Flow]:
    """The shared external segment (l2 mode): the uplink's IP and ARP, the SNAT IP's."""
    up = cfg.uplink_ofport
    snat, snat_mac = str(cfg.snat_ip), mac_str(cfg.snat_mac)
    return [
        # Link-local sources never come from outside (RFC 3927): nothing from the uplink
        # passes for 169.254.169.254, the metadata replies' source.
        _drop(c, CLASSIFY, 400, Match.of(proto="ip", in_port=up, nw_src=LINK_LOCAL)),
        # Marked as from outside: no source there is a remote group's member (sg_flows).
        make_flow(
            c,
            CLASSIFY,
            100,
            Match.of(proto="ip", in_port=up, vlan_tci=NO_VLAN),
            [Load("reg5", 1, OUTSIDE), Goto(INGRESS)],
        ),
        make_flow(
            c,
            CLASSIFY,
            100,
            Match.of(proto="arp", in_port=up, vlan_tci=NO_VLAN),
            [Goto(UPLINK_ARP)],
        ),
        make_flow(
            c,
            UPLINK_ARP,
            200,
            Match.of(proto="arp", **uplink_vlan(cfg, cfg.snat_ip), arp_tpa=snat, arp_op=1),
            arp_reply(snat_mac, snat),
        ),
        # Anyone else on the external network claiming our SNAT IP: tell the controller.
        make_flow(
            c,
            UPLINK_ARP,
            250,
            Match.of(proto="arp", **uplink_vlan(cfg, cfg.snat_ip), arp_spa=snat),
            [Meter(CLAIM_METER), Controller()],
        ),
    ]


def _egress(cfg: HostConfig, c: int) -> list[Flow]:
    """Routed from a VM: a FIP VM's source rewritten, TTLs, the networks' zones into the
    shared PAT zone, PAT's guard, then one more ingress lookup (hairpins)."""
    snat, snat_mac = str(cfg.snat_ip), mac_str(cfg.snat_mac)
    return [
        # A VM with a FIP (flag and FIP set where its port is classified): its source becomes
        # the FIP, its MAC the FIP's (mac_prefix + the FIP), statelessly.
        make_flow(
            c,
            EGRESS,
            100,
            Match.of(proto="ip", reg5=flag(HAS_FIP)),
            [
                Move("reg8", "ip_src"),
                Move("reg8", "eth_src", (0, 31)),
                Load("eth_src", int(cfg.mac_prefix.replace(":", ""), 16), span=(32, 47)),
                Load("reg5", 1, FIP_DONE),
                Goto(EGRESS_OUT),
            ],
        ),
        _drop(c, EGRESS, 300, DEAD),
        # A router never forwards link-local destinations (RFC 3927), whatever their TTL
        _drop(c, EGRESS, 310, Match.of(proto="ip", nw_dst=LINK_LOCAL)),
        *routed_flows.guarded(cfg, c),
        make_flow(c, EGRESS, 300, EXPIRED, [Meter(PACKET_IN_METER), Controller()]),
        _drop(c, NET_PAT_OUT, 200, INVALID),
        *[make_flow(c, NET_PAT_OUT, 100, m, [Goto(NET_PAT_DONE)]) for m in EST_REL],
        make_flow(
            c,
            NET_PAT_DONE,
            100,
            Match.of(proto="ip", nw_src=cfg.transit_cidr),
            [CtClear(), Ct(zone=cfg.ct_zone, table=PAT_OUT, nat=Nat())],
        ),
        _drop(c, PAT_OUT, 200, INVALID),
        *[make_flow(c, PAT_OUT, 100, m, [Goto(PAT_GUARD)]) for m in EST_REL],
        make_flow(
            c,
            PAT_GUARD,
            100,
            Match.of(proto="ip", nw_src=snat),
            [SetField("eth_src", snat_mac), Goto(EGRESS_OUT)],
        ),
        *_icmp_punts(c, EGRESS_OUT, PACKET_IN_METER),
        # Everything translated looks up ingress once more: a destination that is one of
        # this host's own external addresses hairpins; the rest leaves (INGRESS, prio 10).
        # ct_clear: the next conntrack pass must not reuse the connection cached on the
        # packet; in_port=0: the final output may be to the port the packet came in on.
        make_flow(
            c,
            EGRESS_OUT,
            100,
            Match.of(proto="ip"),
            [CtClear(), Load("in_port", 0), Load("reg5", 1, LEAVING), Goto(INGRESS)],
        ),
    ]


def _ingress(cfg: HostConfig, c: int) -> list[Flow]:
    """Arrived from outside (or hairpinned): TTLs, the SNAT IP's way back through PAT, ICMP
    errors in fragments, then delivery as routed traffic."""
    snat, router = str(cfg.snat_ip), mac_str(cfg.router_mac)
    return [
        _drop(c, INGRESS, 300, DEAD),
        make_flow(c, INGRESS, 300, EXPIRED, [Meter(UPLINK_METER), Controller()]),
        make_flow(
            c,
            INGRESS,
            100,
            Match.of(proto="ip", nw_dst=snat),
            [Ct(zone=cfg.ct_zone, table=PAT_IN, nat=Nat())],
        ),
        # An ICMP error that arrives in fragments: its first fragment (which quotes the
        # header) goes to the controller, which translates it for a FIP VM and sends it on
        # whole, truncated; to the SNAT IP, conntrack reassembles and translates as ever.
        *[
            make_flow(
                c,
                INGRESS,
                115,
                Match.of(proto="icmp", nw_frag="first", icmp_type=t),
                [Meter(UPLINK_METER), Controller(ICMP_MAX_LEN)],
            )
            for t in ERROR_TYPES
        ],
        make_flow(
            c,
            INGRESS,
            120,
            Match.of(proto="ip", nw_dst=snat, nw_frag="yes"),
            [Ct(zone=cfg.ct_zone, table=PAT_IN, nat=Nat())],
        ),
        *[make_flow(c, PAT_IN, 100, m, [Goto(PAT_IN_NET)]) for m in EST_REL],
        *[make_flow(c, NET_PAT_IN, 100, m, [Goto(DELIVER)]) for m in EST_REL],
        *_icmp_punts(c, DELIVER, UPLINK_METER),
        make_flow(
            c,
            DELIVER,
            100,
            Match.of(proto="ip"),
            [
                SetField("eth_src", router),
                DecTtl(),
                Load("reg5", 1, ROUTED),
                TO_KEY_IP,
                Goto(VM_L2),
            ],
        ),
    ]


def _gateway(cfg: HostConfig, c: int) -> list[Flow]:
    """Out of the uplink to the external gateway, once its MAC is known; and, when it is
    learned, a copy of its ARP to the controller. (bgp mode: the ToRs' select group.)"""
    if cfg.bgp:
        return routed_flows.leaving(c)
    up, flows = cfg.uplink_ofport, []
    if cfg.external_gateway_mac is not None:
        flows.append(
            make_flow(
                c,
                INGRESS,
                10,
                Match.of(proto="ip", reg5=flag(LEAVING)),
                [DecTtl(), SetField("eth_dst", mac_str(cfg.external_gateway_mac)), Output(up)],
            )
        )
    if cfg.learn_gateway_mac:
        # Learn and follow the gateway's MAC: a copy of every ARP it sends reaches the
        # controller (only the copy is metered, with the uplink's claims), and the original
        # continues through the pipeline.
        flows.append(
            make_flow(
                c,
                CLASSIFY,
                110,
                Match.of(
                    proto="arp", in_port=up, vlan_tci=NO_VLAN, arp_spa=cfg.external_gateway_ip
                ),
                [Controller(meter=CLAIM_METER), Goto(UPLINK_ARP)],
            )
        )
    return flows


def _fabric(cfg: HostConfig, c: int) -> list[Flow]:
    router = mac_str(cfg.router_mac)
    return [
        # A VM's RARP (QEMU's, after a live migration) goes to the controller, which
        # passes it on to the fabric in the VM's VLAN, so the fabric learns the move.
        make_flow(c, CLASSIFY, 85, Match.of(proto="rarp"), [Meter(PACKET_IN_METER), Controller()]),
        # Only VMs' RARPs: the relayed ones of other hosts stay on the fabric.
        *[
            _drop(c, CLASSIFY, 86, Match.of(proto="rarp", in_port=port))
            for port in (cfg.fabric_ofport, *routed_flows.outside_ports(cfg))
        ],
        # Routing stays on each host: the router MAC never crosses the fabric.
        _drop(c, FABRIC_IN, 200, Match.of(dl_src=router)),
        _drop(c, FABRIC_IN, 200, Match.of(dl_dst=router)),
        make_flow(c, FABRIC_IN, 100, Match.of(proto="arp"), [Goto(VM_ARP)]),
        make_flow(c, FABRIC_IN, 100, Match.of(proto="ip"), [TO_KEY_IP, Goto(VM_L2)]),
        _drop(c, FABRIC_IN),
    ]
