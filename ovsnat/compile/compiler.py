"""The flow compiler: desired state in, flows out. Pure and deterministic.

Three kinds of owner, each compiled on its own: host-level flows depend only on the host
config; a network's flows on the config and the network; a VM's flows on the config, its
network and the VM. So one port event recomputes one VM's flows (O(1)), a network's flows
appear with its first VM here and go with its last, and adding or removing a VM never
touches another VM's flows. flows/pipeline.md walks through every table.
"""

from __future__ import annotations

from typing import Iterable

from ovsnat.compile import connlimit
from ovsnat.compile import flowident, handoff_flows
from ovsnat.model import networks
from ovsnat.compile.flows import COOKIE_HOST, COOKIE_NET, COOKIE_QUARANTINE, COOKIE_VLAN_VM, \
    COOKIE_VM, METER_CONTROLLER, NO_VLAN, Controller, Ct, CtClear, DecTtl, Flow, Goto, Load, \
    Match, Meter, MeterSpec, Move, Nat, Output, PopVlan, PushVlan, SetField, make_flow, owner_cookie
from ovsnat.packets.icmp import ERROR_TYPES
from ovsnat.compile.punt_flows import CLAIM_METER, DHCP_METER, METERS, PACKET_IN_METER, \
    PRESENCE_METER, UPLINK_METER, WHOLE, ICMP_MAX_LEN, dhcp_punts, \
    quarantine_flows  # noqa: F401  (METERS, DHCP_METER, quarantine_flows re-exported)
from ovsnat.model import DesiredState, HostConfig, VmPort, mac_str
from ovsnat.model.networks import Network
from ovsnat.compile.pipeline import TO_KEY_ARP, TO_KEY_IP, flag, no_flag, reg6  # noqa: F401
from ovsnat.compile.pipeline import ARRIVED, CLASSIFY, DELIVER, EGRESS, EGRESS_OUT, FABRIC_IN, \
    FIP_DONE, FROM_FABRIC, HAS_FIP, INGRESS, LEAVING, NET_PAT_DONE, NET_PAT_IN, NET_PAT_OUT, \
    PAT_GUARD, PAT_IN, PAT_IN_NET, PAT_OUT, ROUTED, UPLINK_ARP, VM_ARP, VM_L2, VM_ROUTE, \
    check_flow

# Drop-and-count flows for traffic VMs may not send here (see README "What is dropped").
NOT_SERVED = (
    ("ipv6", {}),
    ("ip", {"nw_dst": "224.0.0.0/4"}),             # multicast
    ("ip", {"nw_dst": "255.255.255.255"}),         # limited broadcast
    ("ip", {"nw_dst": "169.254.169.254"}),         # metadata service: not provided
    ("udp", {"tp_src": 68, "tp_dst": 67}),         # DHCP requests ovsnat does not answer
    ("udp", {"tp_src": 67, "tp_dst": 68}),         # DHCP servers: only ovsnat answers
)


def arp_reply(mac: str, ip: str) -> list:
    """Turn an ARP request into the reply for ip-is-at-mac and send it back where it came
    from (IN_PORT: an output to the packet's own in_port would be skipped)."""
    return [Move("eth_src", "eth_dst"), SetField("eth_src", mac), SetField("arp_op", "2"),
            Move("arp_sha", "arp_tha"), Move("arp_spa", "arp_tpa"),
            SetField("arp_sha", mac), SetField("arp_spa", ip), Output("IN_PORT")]


def fabric_out(cfg: HostConfig, net: Network) -> list:
    """To the fabric in the network's VLAN. Last in an action list: push_vlan applies to
    every output after it."""
    if not cfg.fabric_ofport:
        return []
    return ([PushVlan(net.vlan)] if net.vlan else []) + [Output(cfg.fabric_ofport)]


def _icmp_punts(c: int, table: int, meter: int) -> list[Flow]:
    """ICMP errors that went through a FIP quote the untranslated header: the controller
    fixes it (metered)."""
    return [make_flow(c, table, 105, Match.of(proto="icmp", reg5=flag(FIP_DONE), icmp_type=t),
                      [Meter(meter), Controller(ICMP_MAX_LEN)]) for t in ERROR_TYPES]


def host_flows(cfg: HostConfig) -> list[Flow]:
    cfg.require_snat()
    c = owner_cookie(COOKIE_HOST, 0)
    up, router = cfg.uplink_ofport, mac_str(cfg.router_mac)
    snat, snat_mac = str(cfg.snat_ip), mac_str(cfg.snat_mac)
    expired = Match.of(proto="ip", nw_ttl=1)      # answered (time exceeded), metered
    dead = Match.of(proto="ip", nw_ttl=0)
    est_rel = [Match.of(ct_state="+est+trk", proto="ip"), Match.of(ct_state="+rel+trk", proto="ip")]
    invalid = Match.of(ct_state="+inv+trk", proto="ip")

    def drop(table: int, prio: int = 0, match: Match = Match()) -> Flow:
        return make_flow(c, table, prio, match, [])

    flows = [
        *[drop(CLASSIFY, 400, Match.of(proto=p, **m)) for p, m in NOT_SERVED],
        make_flow(c, CLASSIFY, 100, Match.of(proto="ip", in_port=up, vlan_tci=NO_VLAN),
                  [Goto(INGRESS)]),
        make_flow(c, CLASSIFY, 100, Match.of(proto="arp", in_port=up, vlan_tci=NO_VLAN),
                  [Goto(UPLINK_ARP)]),
        make_flow(c, UPLINK_ARP, 200, Match.of(proto="arp", arp_tpa=snat, arp_op=1),
                  arp_reply(snat_mac, snat)),
        # Anyone else on the external network claiming our SNAT IP: tell the controller.
        make_flow(c, UPLINK_ARP, 250, Match.of(proto="arp", arp_spa=snat),
                  [Meter(CLAIM_METER), Controller()]),
        make_flow(c, VM_ROUTE, 100, Match.of(proto="ip", dl_dst=router), [Goto(EGRESS)]),
        make_flow(c, VM_ROUTE, 10, Match.of(proto="ip"), [TO_KEY_IP, Goto(VM_L2)]),
        make_flow(c, VM_ARP, 10, Match.of(proto="arp"), [TO_KEY_ARP, Goto(VM_L2)]),
        # A VM with a FIP (flag and FIP set where its port is classified): its source becomes
        # the FIP, its MAC the FIP's (mac_prefix + the FIP), statelessly.
        make_flow(c, EGRESS, 100, Match.of(proto="ip", reg5=flag(HAS_FIP)), [
            Move("reg8", "ip_src"), Move("reg8", "eth_src", (0, 31)),
            Load("eth_src", int(cfg.mac_prefix.replace(":", ""), 16), span=(32, 47)),
            Load("reg5", 1, FIP_DONE), Goto(EGRESS_OUT)]),
        drop(EGRESS, 300, dead),
        make_flow(c, EGRESS, 300, expired, [Meter(PACKET_IN_METER), Controller()]),
        drop(NET_PAT_OUT, 200, invalid),
        *[make_flow(c, NET_PAT_OUT, 100, m, [Goto(NET_PAT_DONE)]) for m in est_rel],
        make_flow(c, NET_PAT_DONE, 100, Match.of(proto="ip", nw_src=cfg.transit_cidr),
                  [CtClear(), Ct(zone=cfg.ct_zone, table=PAT_OUT, nat=Nat())]),
        drop(PAT_OUT, 200, invalid),
        *[make_flow(c, PAT_OUT, 100, m, [Goto(PAT_GUARD)]) for m in est_rel],
        make_flow(c, PAT_GUARD, 100, Match.of(proto="ip", nw_src=snat),
                  [SetField("eth_src", snat_mac), Goto(EGRESS_OUT)]),
        *_icmp_punts(c, EGRESS_OUT, PACKET_IN_METER),
        # Everything translated looks up ingress once more: a destination that is one of
        # this host's own external addresses hairpins; the rest leaves (INGRESS, prio 10).
        # ct_clear: the next conntrack pass must not reuse the connection cached on the
        # packet; in_port=0: the final output may be to the port the packet came in on.
        make_flow(c, EGRESS_OUT, 100, Match.of(proto="ip"),
                  [CtClear(), Load("in_port", 0), Load("reg5", 1, LEAVING), Goto(INGRESS)]),
        drop(INGRESS, 300, dead),
        make_flow(c, INGRESS, 300, expired, [Meter(UPLINK_METER), Controller()]),
        make_flow(c, INGRESS, 100, Match.of(proto="ip", nw_dst=snat),
                  [Ct(zone=cfg.ct_zone, table=PAT_IN, nat=Nat())]),
        # An ICMP error that arrives in fragments: its first fragment (which quotes the
        # header) goes to the controller, which translates it for a FIP VM and sends it on
        # whole, truncated; to the SNAT IP, conntrack reassembles and translates as ever.
        *[make_flow(c, INGRESS, 115, Match.of(proto="icmp", nw_frag="first", icmp_type=t),
                    [Meter(UPLINK_METER), Controller(ICMP_MAX_LEN)]) for t in ERROR_TYPES],
        make_flow(c, INGRESS, 120, Match.of(proto="ip", nw_dst=snat, nw_frag="yes"),
                  [Ct(zone=cfg.ct_zone, table=PAT_IN, nat=Nat())]),
        *[make_flow(c, PAT_IN, 100, m, [Goto(PAT_IN_NET)]) for m in est_rel],
        *[make_flow(c, NET_PAT_IN, 100, m, [Goto(DELIVER)]) for m in est_rel],
        *_icmp_punts(c, DELIVER, UPLINK_METER),
        make_flow(c, DELIVER, 100, Match.of(proto="ip"), [
            SetField("eth_src", router), DecTtl(), Load("reg5", 1, ROUTED), TO_KEY_IP,
            Goto(VM_L2)]),
        *[drop(t) for t in (CLASSIFY, VM_ARP, UPLINK_ARP, VM_ROUTE, VM_L2, EGRESS, NET_PAT_OUT,
                            NET_PAT_DONE, PAT_OUT, PAT_GUARD, EGRESS_OUT, INGRESS, PAT_IN,
                            PAT_IN_NET, NET_PAT_IN, DELIVER)],
    ]
    if not cfg.pat_ports_per_vm:
        flows.append(make_flow(c, PAT_OUT, 50, Match.of(ct_state="+new+trk", proto="ip",
                                                        **handoff_flows.not_handed(cfg)),
                               [_pat_commit(cfg, cfg.snat_port_min, cfg.snat_port_max)]))
    flows += handoff_flows.host_flows(cfg, c) + connlimit.host_flows(cfg, c, router)
    if cfg.external_gateway_mac is not None:
        flows.append(make_flow(c, INGRESS, 10, Match.of(proto="ip", reg5=flag(LEAVING)), [
            DecTtl(), SetField("eth_dst", mac_str(cfg.external_gateway_mac)), Output(up)]))
    if cfg.learn_gateway_mac:
        # Learn and follow the gateway's MAC: a copy of every ARP it sends reaches the
        # controller (only the copy is metered, with the uplink's claims), and the original
        # continues through the pipeline.
        flows.append(make_flow(c, CLASSIFY, 110, Match.of(
            proto="arp", in_port=up, vlan_tci=NO_VLAN, arp_spa=cfg.external_gateway_ip),
            [Controller(meter=CLAIM_METER), Goto(UPLINK_ARP)]))
    if cfg.dhcp.enabled:
        flows += dhcp_punts(cfg, c)
    if cfg.fabric_ofport:
        flows += [
            # A VM's RARP (QEMU's, after a live migration) goes to the controller, which
            # passes it on to the fabric in the VM's VLAN, so the fabric learns the move.
            make_flow(c, CLASSIFY, 85, Match.of(proto="rarp"),
                      [Meter(PACKET_IN_METER), Controller()]),
            # Only VMs' RARPs: the relayed ones of other hosts stay on the fabric.
            drop(CLASSIFY, 86, Match.of(proto="rarp", in_port=cfg.fabric_ofport)),
            drop(CLASSIFY, 86, Match.of(proto="rarp", in_port=up)),
            # Routing stays on each host: the router MAC never crosses the fabric.
            drop(FABRIC_IN, 200, Match.of(dl_src=router)),
            drop(FABRIC_IN, 200, Match.of(dl_dst=router)),
            make_flow(c, FABRIC_IN, 100, Match.of(proto="arp"), [Goto(VM_ARP)]),
            make_flow(c, FABRIC_IN, 100, Match.of(proto="ip"), [TO_KEY_IP, Goto(VM_L2)]),
            drop(FABRIC_IN),
        ]
    return flows


def _pat_commit(cfg: HostConfig, lo: int, hi: int) -> Ct:
    return Ct(zone=cfg.ct_zone, table=PAT_GUARD, commit=True,
              nat=Nat("src", str(cfg.snat_ip), lo, hi))


def network_flows(cfg: HostConfig, net: Network) -> list[Flow]:
    """A network's own flows: its gateway, its fabric segment, its way into and out of PAT.
    The untagged network goes straight to the shared PAT zone; a VLAN network first through
    its own zone, to its transit address, so overlapping fixed IPs never meet there."""
    c = owner_cookie(COOKIE_NET, net.id)
    r6 = reg6(net)
    gw = str(net.gateway)
    flows = [
        make_flow(c, VM_ARP, 200, Match.of(proto="arp", reg5=no_flag(FROM_FABRIC), reg6=r6,
                                           arp_tpa=gw, arp_op=1),
                  arp_reply(mac_str(cfg.router_mac), gw)),
        make_flow(c, EGRESS, 250, Match.of(proto="ip", reg6=r6, nw_dst=net.cidr), []),
    ]
    if net.vlan is None:
        flows += [
            make_flow(c, EGRESS, 50, Match.of(proto="ip", reg6=r6),
                      [Ct(zone=cfg.ct_zone, table=PAT_OUT, nat=Nat())]),
            make_flow(c, PAT_IN_NET, 100, Match.of(proto="ip", nw_dst=net.cidr),
                      [Load("reg6", 0), Goto(DELIVER)]),
        ]
    else:
        zone = networks.zone(cfg.network_ct_zone_base, net)
        flows += [
            make_flow(c, EGRESS, 50, Match.of(proto="ip", reg6=r6),
                      [Ct(zone=zone, table=NET_PAT_OUT, nat=Nat())]),
            make_flow(c, NET_PAT_OUT, 50, Match.of(ct_state="+new+trk", proto="ip", reg6=r6,
                                                   **handoff_flows.not_handed(cfg)), [
                Ct(zone=zone, table=NET_PAT_DONE, commit=True,
                   nat=Nat("src", str(networks.transit(cfg.transit_cidr, net))))]),
            make_flow(c, PAT_IN_NET, 100,
                      Match.of(proto="ip", nw_dst=networks.transit_range(cfg.transit_cidr, net)),
                      [Load("reg6", net.id), CtClear(), Ct(zone=zone, table=NET_PAT_IN,
                                                           nat=Nat())]),
        ]
    if cfg.fabric_ofport:
        from_fabric = Match.of(in_port=cfg.fabric_ofport, dl_vlan=net.vlan) if net.vlan else \
            Match.of(in_port=cfg.fabric_ofport, vlan_tci=NO_VLAN)
        tag = [PopVlan(), Load("reg6", net.id)] if net.vlan else []
        flows += [
            make_flow(c, CLASSIFY, 100, from_fabric,
                      tag + [Load("reg5", 1, FROM_FABRIC), Goto(FABRIC_IN)]),
            # ARP from a local VM reaches the fabric as a switch floods it (GARPs, requests
            # for VMs elsewhere), then goes on to local delivery.
            make_flow(c, VM_ARP, 100, Match.of(proto="arp", reg5=no_flag(FROM_FABRIC), reg6=r6),
                      fabric_out(cfg, net) + ([PopVlan()] if net.vlan else []) +
                      [TO_KEY_ARP, Goto(VM_L2)]),
            make_flow(c, VM_L2, 50, Match.of(proto="ip", reg5=no_flag(ROUTED), reg6=r6),
                      fabric_out(cfg, net)),
        ]
    return flows


def vm_cookie(vm: VmPort, net: Network) -> int:
    if net.vlan is None:
        return owner_cookie(COOKIE_VM, int(vm.fixed_ip))
    return owner_cookie(COOKIE_VLAN_VM, net.vlan << 20 | int(vm.fixed_ip) & 0xFFFFF)


def vm_flows(cfg: HostConfig, vm: VmPort, net: Network, active: bool = True,
             arrived: bool = False, copies: str = "all") -> list[Flow]:
    """A VM's flows. `active=False` is a FIP VM whose presence on this host is not proven
    yet (see README "Live migration"): its FIP stays dark (no ARP answers, no translation,
    its routed traffic dropped), a metered copy of its frames goes to the controller (the
    first one proves the VM is here; `copies` "arp": only ARP and odd frames, which is all
    a yielded FIP comes back on; "none": the controller heard what it needed), and so do ARP
    claims and probes for its FIP from the uplink (another host answering for it, or
    probing it at the same time). `arrived`: a PAT VM in its handoff grace
    (ovsnat.compile.handoff_flows)."""
    c = vm_cookie(vm, net)
    port, mac, fixed, r6 = vm.ofport, mac_str(vm.mac), str(vm.fixed_ip), reg6(net)
    responder = _fip_responder(cfg, vm, c) if vm.fip is not None else None
    pending = vm.fip is not None and not active
    copy = [Controller(meter=PRESENCE_METER)] if pending and copies != "none" else []
    reg = [Load("reg6", net.id)] if net.id else []
    tag = (copy if copies == "all" else []) + reg
    arrived = arrived and vm.fip is None and handoff_flows.enabled(cfg)
    marks = [Load("reg8", int(vm.fip)), Load("reg5", 1, HAS_FIP)] \
        if vm.fip is not None and active else [Load("reg5", 1, ARRIVED)] if arrived else []
    marks += connlimit.classify_marks(cfg, vm)
    flows = [
        make_flow(c, CLASSIFY, 100, Match.of(proto="ip", in_port=port, vlan_tci=NO_VLAN,
                                             dl_src=mac, nw_src=fixed),
                  tag + marks + [Goto(VM_ROUTE)]),
        make_flow(c, CLASSIFY, 100, Match.of(proto="arp", in_port=port, vlan_tci=NO_VLAN,
                                             dl_src=mac, arp_spa=fixed, arp_sha=mac),
                  copy + reg + [Goto(VM_ARP)]),
        # IP and ARP alike: register 7 holds the IP destination or ARP target.
        make_flow(c, VM_L2, 100, Match.of(reg6=r6, reg7=f"{int(vm.fixed_ip):#x}"),
                  [SetField("eth_dst", mac), Output(port)]),
    ]
    if cfg.fabric_ofport:         # nobody on the fabric may speak with this VM's MAC
        flows.append(make_flow(c, FABRIC_IN, 200, Match.of(reg6=r6, dl_src=mac), []))
    if vm.fip is not None:
        # Someone else on the external network claims this FIP (an answer to our probe, a
        # GARP from the host a VM migrated to, or a misconfigured duplicate): tell the
        # controller. The same flow dark or live, so activation does not touch it.
        flows.append(make_flow(c, UPLINK_ARP, 250, Match.of(proto="arp", arp_spa=str(vm.fip)),
                               [Meter(CLAIM_METER), Controller()]))
    if pending:
        # Anything else from the port (QEMU's RARP after a live migration) also tells.
        flows += [make_flow(c, CLASSIFY, 90, Match.of(in_port=port), copy)] if copy else []
        flows += [
            make_flow(c, EGRESS, 100, Match.of(proto="ip", reg6=r6, nw_src=fixed), []),
            # Another host probing this FIP while we probe it (RFC 5227 simultaneous probes).
            make_flow(c, UPLINK_ARP, 240, Match.of(proto="arp", arp_spa="0.0.0.0",
                                                   arp_tpa=str(vm.fip), arp_op=1),
                      [Meter(CLAIM_METER), Controller()]),
        ]
    elif vm.fip is not None:
        flows += fip_flows(cfg, vm, net, c, responder)
    elif cfg.pat_ports_per_vm:
        flows += _pat_block_flows(cfg, vm, net, c)
    if arrived:
        flows += handoff_flows.arrived_flows(cfg, vm, net, c)
    flows += connlimit.vm_flows(cfg, vm, c)
    # A restarted controller knows a live FIP by its responder's key (fip_responder_key).
    return flowident.reserve(flows, responder) if responder is not None else flows


def _pat_block_flows(cfg: HostConfig, vm: VmPort, net: Network, c: int) -> list[Flow]:
    """The VM's own PAT block. A VLAN network's VMs first get a transit address of their own
    (the shared zone must tell them apart)."""
    lo, hi = vm.pat_block(cfg)
    new = dict(ct_state="+new+trk", proto="ip", reg6=reg6(net), **handoff_flows.not_handed(cfg))
    if net.vlan is None:
        return [make_flow(c, PAT_OUT, 50, Match.of(**new, nw_src=str(vm.fixed_ip)),
                          [_pat_commit(cfg, lo, hi)])]
    own = str(networks.transit(cfg.transit_cidr, net, vm.offset(cfg)))
    zone = networks.zone(cfg.network_ct_zone_base, net)
    return [make_flow(c, NET_PAT_OUT, 60, Match.of(**new, nw_src=str(vm.fixed_ip)),
                      [Ct(zone=zone, table=NET_PAT_DONE, commit=True, nat=Nat("src", own))]),
            make_flow(c, PAT_OUT, 50, Match.of(**new, nw_src=own), [_pat_commit(cfg, lo, hi)])]


def fip_responder_key(cfg: HostConfig, vm: VmPort, net: Network) -> tuple[int, int]:
    """(table, cookie) of the ARP responder of an active FIP: if the switch holds it, the
    FIP was live here (before a controller restart, or just now)."""
    f = _fip_responder(cfg, vm, vm_cookie(vm, net))
    return f.table, f.cookie


def _fip_responder(cfg: HostConfig, vm: VmPort, c: int) -> Flow:
    fip = str(vm.fip)
    return make_flow(c, UPLINK_ARP, 200, Match.of(proto="arp", arp_tpa=fip, arp_op=1),
                     arp_reply(mac_str(cfg.ip_mac(vm.fip)), fip))


def fip_flows(cfg: HostConfig, vm: VmPort, net: Network, c: int,
              responder: Flow | None = None) -> list[Flow]:
    """Static 1:1 NAT, the VM's own part: the ARP responder, the way in (stateless set_field,
    with the FIP flag for the ICMP-error punts), and fragments both ways; whole packets on
    the way out are rewritten by one host-level flow (from the FIP classify put in reg8).
    Fragments take conntrack NAT instead, because the userspace datapath does not fix
    a first fragment's UDP checksum after a set_field (the datagram would arrive corrupt);
    conntrack reassembles and fixes it."""
    fip, fixed, r6 = str(vm.fip), str(vm.fixed_ip), reg6(net)
    fip_mac = mac_str(cfg.ip_mac(vm.fip))
    zone = cfg.fip_frag_ct_zone if net.vlan is None else \
        networks.zone(cfg.network_ct_zone_base, net)
    into = [Load("reg6", net.id)]             # a hairpinned packet may carry another network
    return [
        responder or _fip_responder(cfg, vm, c),
        make_flow(c, EGRESS, 110, Match.of(proto="ip", reg6=r6, nw_src=fixed, nw_frag="yes"), [
            SetField("eth_src", fip_mac),
            Ct(zone=zone, table=EGRESS_OUT, commit=True, nat=Nat("src", fip))]),
        make_flow(c, INGRESS, 100, Match.of(proto="ip", nw_dst=fip), [
            SetField("ip_dst", fixed), *into, Load("reg5", 1, FIP_DONE), Goto(DELIVER)]),
        make_flow(c, INGRESS, 110, Match.of(proto="ip", nw_dst=fip, nw_frag="yes"),
                  [*into, Ct(zone=zone, table=DELIVER, commit=True, nat=Nat("dst", fixed))]),
    ]


def compile_state(state: DesiredState, check: bool = True) -> list[Flow]:
    """Every flow of the host, in a stable order (table, -priority, text): each owner's,
    settled as the controller settles them (ovsnat.compile.flowident)."""
    cfg = state.config
    nets = {vm.net(cfg) for vm in state.vms} | ({cfg.default_network} - {None})
    flows = flowident.resolve([(flowident.HOST, host_flows(cfg)),
                               *((("net", net.name), network_flows(cfg, net)) for net in nets),
                               *((vm.name, vm_flows(cfg, vm, vm.net(cfg))) for vm in state.vms)])
    if check:
        for flow in flows:
            check_flow(flow)
    return sort_flows(flows)


def sort_flows(flows: Iterable[Flow]) -> list[Flow]:
    return sorted(flows, key=lambda f: (f.table, -f.priority, f.body()))
