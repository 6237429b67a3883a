"""The flow compiler: desired state in, flows out. Pure and deterministic.

Host-level flows depend only on the host config; a VM's flows depend only on the host config
and that VM. So one port event recomputes one VM's flows (O(1)), and adding or removing a VM
never touches another VM's flows. flows/pipeline.md walks through every table.
"""

from __future__ import annotations

from typing import Iterable

from ovsnat.flows import METER_CONTROLLER, COOKIE_HOST, COOKIE_VM, NO_VLAN, Controller, Ct, CtClear, DecTtl, \
    Flow, Goto, Load, Match, Meter, MeterSpec, Move, Nat, Output, SetField, make_flow, owner_cookie
from ovsnat.icmp import ERROR_TYPES
from ovsnat.model import DesiredState, HostConfig, VmPort, mac_str
from ovsnat.pipeline import CLASSIFY, DELIVER, EGRESS, EGRESS_OUT, INGRESS, PAT_GUARD, \
    PAT_IN, PAT_OUT, UPLINK_ARP, VM_ARP, VM_L2, check_flow

PACKET_IN_METER = 1          # meter id for ovsnat's packet-ins from VMs (ICMP errors)
CLAIM_METER = 2              # ARP on the uplink claiming one of this host's addresses
ICMP_MAX_LEN = 0xFFFF        # the whole ICMP error: the controller sends it on itself
PACKET_IN_RATE_PPS = 100
CLAIM_RATE_PPS = 500         # answers to up to 64 probe rounds at once fit (presence.py)
# Installed before any flow: meter 1 on ovsnat's own packet-in flows, meter 2 on claims seen
# on the uplink (answers to FIP probes must not be crowded out by a VM's ICMP errors), and
# the switch-wide controller meter as a backstop for packet-ins ovsnat did not ask for.
METERS = (MeterSpec(PACKET_IN_METER, PACKET_IN_RATE_PPS),
          MeterSpec(CLAIM_METER, CLAIM_RATE_PPS),
          MeterSpec(METER_CONTROLLER, 2 * PACKET_IN_RATE_PPS))

# Drop-and-count flows for traffic VMs may not send here (see README "What is dropped").
NOT_SERVED = (
    ("ipv6", {}),
    ("ip", {"nw_dst": "224.0.0.0/4"}),             # multicast
    ("ip", {"nw_dst": "255.255.255.255"}),         # limited broadcast
    ("ip", {"nw_dst": "169.254.169.254"}),         # metadata service: not provided
    ("udp", {"tp_src": 68, "tp_dst": 67}),         # DHCP: addresses are static
)


def arp_reply(mac: str, ip: str) -> list:
    """Turn an ARP request into the reply for ip-is-at-mac and send it back where it came
    from (IN_PORT: an output to the packet's own in_port would be skipped)."""
    return [Move("eth_src", "eth_dst"), SetField("eth_src", mac), SetField("arp_op", "2"),
            Move("arp_sha", "arp_tha"), Move("arp_spa", "arp_tpa"),
            SetField("arp_sha", mac), SetField("arp_spa", ip), Output("IN_PORT")]


def hairpin(dst_mac: str) -> list:
    """Loop translated traffic for one of this host's external addresses back into ingress.
    ct_clear: the next conntrack pass must not reuse the connection cached on the packet;
    in_port=0: the final output may be to the port the packet came in on."""
    return [CtClear(), Load("in_port", 0), SetField("eth_dst", dst_mac), Goto(INGRESS)]


def host_flows(cfg: HostConfig) -> list[Flow]:
    cfg.require_snat()
    c = owner_cookie(COOKIE_HOST, 0)
    up = cfg.uplink_ofport
    snat, snat_mac = str(cfg.snat_ip), mac_str(cfg.snat_mac)
    ttl_guard = [Match.of(proto="ip", nw_ttl=0), Match.of(proto="ip", nw_ttl=1)]
    flows = [
        # classify
        *[make_flow(c, CLASSIFY, 400, Match.of(proto=p, **m), []) for p, m in NOT_SERVED],
        make_flow(c, CLASSIFY, 100, Match.of(proto="ip", in_port=up, vlan_tci=NO_VLAN),
                  [Goto(INGRESS)]),
        make_flow(c, CLASSIFY, 100, Match.of(proto="arp", in_port=up, vlan_tci=NO_VLAN),
                  [Goto(UPLINK_ARP)]),
        make_flow(c, CLASSIFY, 0, Match(), []),
        # ARP
        make_flow(c, VM_ARP, 200, Match.of(proto="arp", arp_tpa=cfg.internal_gateway_ip,
                                           arp_op=1),
                  arp_reply(mac_str(cfg.router_mac), str(cfg.internal_gateway_ip))),
        make_flow(c, VM_ARP, 0, Match(), []),
        make_flow(c, UPLINK_ARP, 200, Match.of(proto="arp", arp_tpa=snat, arp_op=1),
                  arp_reply(snat_mac, snat)),
        # Anyone else on the external network claiming our SNAT IP: tell the controller.
        make_flow(c, UPLINK_ARP, 250, Match.of(proto="arp", arp_spa=snat),
                  [Meter(CLAIM_METER), Controller()]),
        make_flow(c, UPLINK_ARP, 0, Match(), []),
        # L2 / routing decision
        make_flow(c, VM_L2, 50, Match.of(proto="ip", dl_dst=mac_str(cfg.router_mac)),
                  [Goto(EGRESS)]),
        make_flow(c, VM_L2, 0, Match(), []),
        # egress
        *[make_flow(c, EGRESS, 300, m, []) for m in ttl_guard],
        make_flow(c, EGRESS, 250, Match.of(proto="ip", nw_dst=cfg.internal_cidr), []),
        make_flow(c, EGRESS, 50, Match.of(proto="ip"),
                  [Ct(zone=cfg.ct_zone, table=PAT_OUT, nat=Nat())]),
        make_flow(c, EGRESS, 0, Match(), []),
        make_flow(c, PAT_OUT, 200, Match.of(ct_state="+inv+trk", proto="ip"), []),
        make_flow(c, PAT_OUT, 100, Match.of(ct_state="+est+trk", proto="ip"), [Goto(PAT_GUARD)]),
        make_flow(c, PAT_OUT, 100, Match.of(ct_state="+rel+trk", proto="ip"), [Goto(PAT_GUARD)]),
        make_flow(c, PAT_OUT, 0, Match(), []),
        make_flow(c, PAT_GUARD, 100, Match.of(proto="ip", nw_src=snat),
                  [SetField("eth_src", snat_mac), Goto(EGRESS_OUT)]),
        make_flow(c, PAT_GUARD, 0, Match(), []),
        make_flow(c, EGRESS_OUT, 200, Match.of(proto="ip", nw_dst=snat), hairpin(snat_mac)),
        make_flow(c, EGRESS_OUT, 0, Match(), []),
        # ingress
        *[make_flow(c, INGRESS, 300, m, []) for m in ttl_guard],
        make_flow(c, INGRESS, 100, Match.of(proto="ip", dl_dst=snat_mac, nw_dst=snat),
                  [Ct(zone=cfg.ct_zone, table=PAT_IN, nat=Nat())]),
        make_flow(c, INGRESS, 0, Match(), []),
        make_flow(c, PAT_IN, 100, Match.of(ct_state="+est+trk", proto="ip"), [Goto(DELIVER)]),
        make_flow(c, PAT_IN, 100, Match.of(ct_state="+rel+trk", proto="ip"), [Goto(DELIVER)]),
        make_flow(c, PAT_IN, 0, Match(), []),
        make_flow(c, DELIVER, 0, Match(), []),
    ]
    if not cfg.pat_ports_per_vm:
        flows.append(make_flow(c, PAT_OUT, 50, Match.of(ct_state="+new+trk", proto="ip"),
                               [_pat_commit(cfg, cfg.snat_port_min, cfg.snat_port_max)]))
    if cfg.external_gateway_mac is not None:
        flows.append(make_flow(c, EGRESS_OUT, 100, Match.of(proto="ip"), [
            DecTtl(), SetField("eth_dst", mac_str(cfg.external_gateway_mac)), Output(up)]))
    if cfg.learn_gateway_mac:
        # Learn and follow the gateway's MAC: a copy of every ARP it sends reaches the
        # controller (rate-limited by the switch-wide controller meter), and the original
        # continues through the pipeline.
        flows.append(make_flow(c, CLASSIFY, 110, Match.of(
            proto="arp", in_port=up, vlan_tci=NO_VLAN, arp_spa=cfg.external_gateway_ip),
            [Controller(), Goto(UPLINK_ARP)]))
    return flows


def _pat_commit(cfg: HostConfig, lo: int, hi: int) -> Ct:
    return Ct(zone=cfg.ct_zone, table=PAT_GUARD, commit=True,
              nat=Nat("src", str(cfg.snat_ip), lo, hi))


def vm_flows(cfg: HostConfig, vm: VmPort, active: bool = True) -> list[Flow]:
    """A VM's flows. `active=False` is a FIP VM whose presence on this host is not proven
    yet (see README "Live migration"): its FIP stays dark (no ARP answers, no translation,
    its routed traffic dropped), a copy of its frames goes to the controller (the first one
    proves the VM is here), and so do ARP claims and probes for its FIP from the uplink
    (another host answering for it, or probing it at the same time)."""
    c = owner_cookie(COOKIE_VM, int(vm.fixed_ip))
    port, mac, fixed = vm.ofport, mac_str(vm.mac), str(vm.fixed_ip)
    pending = vm.fip is not None and not active
    probe = [Controller()] if pending else []
    flows = [
        make_flow(c, CLASSIFY, 100, Match.of(proto="ip", in_port=port, vlan_tci=NO_VLAN,
                                             dl_src=mac, nw_src=fixed), probe + [Goto(VM_L2)]),
        make_flow(c, CLASSIFY, 100, Match.of(proto="arp", in_port=port, vlan_tci=NO_VLAN,
                                             dl_src=mac, arp_spa=fixed, arp_sha=mac),
                  probe + [Goto(VM_ARP)]),
        make_flow(c, VM_ARP, 100, Match.of(proto="arp", arp_tpa=fixed), [Output(port)]),
        make_flow(c, VM_L2, 100, Match.of(proto="ip", dl_dst=mac, nw_dst=fixed), [Output(port)]),
        make_flow(c, DELIVER, 100, Match.of(proto="ip", nw_dst=fixed), [
            SetField("eth_src", mac_str(cfg.router_mac)), SetField("eth_dst", mac),
            DecTtl(), Output(port)]),
    ]
    if vm.fip is not None:
        # Someone else on the external network claims this FIP (an answer to our probe, a
        # GARP from the host a VM migrated to, or a misconfigured duplicate): tell the
        # controller. The same flow dark or live, so activation does not touch it.
        flows.append(make_flow(c, UPLINK_ARP, 250, Match.of(proto="arp", arp_spa=str(vm.fip)),
                               [Meter(CLAIM_METER), Controller()]))
    if pending:
        flows += [
            # Anything else from the port (QEMU's RARP after a live migration) also tells.
            make_flow(c, CLASSIFY, 90, Match.of(in_port=port), [Controller()]),
            make_flow(c, EGRESS, 100, Match.of(proto="ip", nw_src=fixed), []),
            # Another host probing this FIP while we probe it (RFC 5227 simultaneous probes).
            make_flow(c, UPLINK_ARP, 240, Match.of(proto="arp", arp_spa="0.0.0.0",
                                                   arp_tpa=str(vm.fip), arp_op=1),
                      [Meter(CLAIM_METER), Controller()]),
        ]
    elif vm.fip is not None:
        flows += fip_flows(cfg, vm, c)
    elif cfg.pat_ports_per_vm:
        lo, hi = vm.pat_block(cfg)
        flows.append(make_flow(c, PAT_OUT, 50, Match.of(ct_state="+new+trk", proto="ip",
                                                        nw_src=fixed),
                               [_pat_commit(cfg, lo, hi)]))
    return flows


def fip_responder_key(cfg: HostConfig, vm: VmPort) -> tuple[int, int]:
    """(table, cookie) of the ARP responder of an active FIP: if the switch holds it, the
    FIP was active here before a controller restart."""
    f = next(f for f in fip_flows(cfg, vm, owner_cookie(COOKIE_VM, int(vm.fixed_ip)))
             if f.table == UPLINK_ARP and f.priority == 200)
    return f.table, f.cookie


def fip_flows(cfg: HostConfig, vm: VmPort, c: int) -> list[Flow]:
    """Static 1:1 NAT: stateless set_field both ways. Fragments take conntrack NAT instead,
    because the userspace datapath does not fix a first fragment's UDP checksum after a
    set_field (the datagram would arrive corrupt); conntrack reassembles and fixes it."""
    fip, fixed = str(vm.fip), str(vm.fixed_ip)
    fip_mac = mac_str(cfg.ip_mac(vm.fip))
    zone = cfg.fip_frag_ct_zone
    return [
        make_flow(c, UPLINK_ARP, 200, Match.of(proto="arp", arp_tpa=fip, arp_op=1),
                  arp_reply(fip_mac, fip)),
        make_flow(c, EGRESS, 100, Match.of(proto="ip", nw_src=fixed), [
            SetField("ip_src", fip), SetField("eth_src", fip_mac), Goto(EGRESS_OUT)]),
        make_flow(c, EGRESS, 110, Match.of(proto="ip", nw_src=fixed, nw_frag="yes"), [
            SetField("eth_src", fip_mac),
            Ct(zone=zone, table=EGRESS_OUT, commit=True, nat=Nat("src", fip))]),
        make_flow(c, EGRESS_OUT, 200, Match.of(proto="ip", nw_dst=fip), hairpin(fip_mac)),
        make_flow(c, INGRESS, 100, Match.of(proto="ip", dl_dst=fip_mac, nw_dst=fip), [
            SetField("ip_dst", fixed), Goto(DELIVER)]),
        make_flow(c, INGRESS, 110, Match.of(proto="ip", dl_dst=fip_mac, nw_dst=fip,
                                            nw_frag="yes"),
                  [Ct(zone=zone, table=DELIVER, commit=True, nat=Nat("dst", fixed))]),
        # ICMP errors quote the untranslated header: the controller fixes both (metered).
        *[make_flow(c, INGRESS, 105, Match.of(proto="icmp", dl_dst=fip_mac, nw_dst=fip,
                                              icmp_type=t), [Meter(PACKET_IN_METER),
                                                             Controller(ICMP_MAX_LEN)])
          for t in ERROR_TYPES],
        *[make_flow(c, EGRESS, 105, Match.of(proto="icmp", nw_src=fixed, icmp_type=t),
                    [Meter(PACKET_IN_METER), Controller(ICMP_MAX_LEN)])
          for t in ERROR_TYPES],
    ]


def compile_state(state: DesiredState, check: bool = True) -> list[Flow]:
    """Every flow of the host, in a stable order (table, -priority, text)."""
    flows = host_flows(state.config)
    for vm in state.vms:
        flows += vm_flows(state.config, vm)
    if check:
        for flow in flows:
            check_flow(flow)
    return sort_flows(flows)


def sort_flows(flows: Iterable[Flow]) -> list[Flow]:
    return sorted(flows, key=lambda f: (f.table, -f.priority, f.body()))
