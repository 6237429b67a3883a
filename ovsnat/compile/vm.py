"""A VM's own flows: its classify and delivery flows, its FIP (static 1:1 NAT, stateless)
or its own PAT block, its handoff and connection-limit flows. They depend on nothing but
the host config, the VM's network and the VM, so one port event recompiles one VM."""

from __future__ import annotations

from ovsnat.compile import (
    connlimit,
    eastwest,
    flowident,
    handoff_flows,
    metadata_flows,
    portsec,
)
from ovsnat.compile.actions import Controller, Ct, Goto, Load, Meter, Nat, SetField
from ovsnat.compile.ext_flows import uplink_vlan
from ovsnat.compile.flows import (
    COOKIE_VLAN_VM,
    COOKIE_VM,
    Flow,
    Match,
    make_flow,
    owner_cookie,
)
from ovsnat.compile.pipeline import (
    ARRIVED,
    CLASSIFY,
    DELIVER,
    EGRESS,
    EGRESS_OUT,
    FABRIC_IN,
    FIP_DONE,
    HAS_FIP,
    INGRESS,
    NET_PAT_DONE,
    NET_PAT_OUT,
    PAT_OUT,
    UPLINK_ARP,
    VM_ARP,
    reg6,
)
from ovsnat.compile.punt_flows import CLAIM_METER, PRESENCE_METER
from ovsnat.compile.shared import arp_reply, pat_commit
from ovsnat.model import HostConfig, VmPort, mac_str, networks
from ovsnat.model.networks import Network


def vm_cookie(vm: VmPort, net: Network) -> int:
    if net.vlan is None:
        return owner_cookie(COOKIE_VM, int(vm.fixed_ip))
    return owner_cookie(COOKIE_VLAN_VM, net.vlan << 20 | int(vm.fixed_ip) & 0xFFFFF)


def vm_flows(
    cfg: HostConfig,
    vm: VmPort,
    net: Network,
    active: bool = True,
    arrived: bool = False,
    copies: str = "all",
    vips: tuple = (),
) -> list[Flow]:
    """A VM's flows. `active=False` is a FIP VM whose presence on this host is not proven
    yet (see README "Live migration"): its FIP stays dark (no ARP answers, no translation,
    its routed traffic dropped), a metered copy of its frames goes to the controller (the
    first one proves the VM is here; `copies` "arp": only ARP and odd frames, which is all
    a yielded FIP comes back on; "none": the controller heard what it needed), and so do ARP
    claims and probes for its FIP from the uplink (another host answering for it, or
    probing it at the same time). `arrived`: a PAT VM in its handoff grace
    (ovsnat.compile.handoff_flows). `vips`: (address, held/elsewhere/unknown, its FIP) of
    the port's single-address allowed pairs (ovsnat.core.vips)."""
    c = vm_cookie(vm, net)
    port, mac, fixed, r6 = vm.ofport, mac_str(vm.mac), str(vm.fixed_ip), reg6(net)
    responder = _fip_responder(cfg, vm, c) if vm.fip is not None else None
    pending = vm.fip is not None and not active
    copy = [Controller(meter=PRESENCE_METER)] if pending and copies != "none" else []
    reg = [Load("reg6", net.id)] if net.id else []
    tag = (copy if copies == "all" else []) + reg
    arrived = arrived and vm.fip is None and handoff_flows.enabled(cfg)
    marks = (
        [Load("reg8", int(vm.fip)), Load("reg5", 1, HAS_FIP)]
        if vm.fip is not None and active
        else [Load("reg5", 1, ARRIVED)]
        if arrived
        else []
    )
    marks += connlimit.classify_marks(cfg, vm)
    if vm.security.admin_down:
        return portsec.admin_down(vm, net, c)
    flows = []
    for src in portsec.sources(vm, vips):
        own = marks if src.fip is None else [Load("reg8", int(src.fip)), Load("reg5", 1, HAS_FIP)]
        arp_out = copy + reg + [Goto(VM_ARP)]
        if src.learn and not copy:  # a gratuitous ARP from a VIP: who holds it (core.vips)
            gratuitous = Match.of(proto="arp", **src.arp, arp_tpa=src.arp["arp_spa"])
            learn = [Controller(meter=CLAIM_METER), *reg, Goto(VM_ARP)]
            flows.append(make_flow(c, CLASSIFY, src.prio + 1, gratuitous, learn))
        flows += [
            make_flow(
                c,
                CLASSIFY,
                src.prio,
                Match.of(proto="ip", **src.ip),
                tag + own + portsec.onward(vm),
            ),
            make_flow(
                c,
                CLASSIFY,
                src.prio,
                Match.of(proto="arp", **src.arp),
                arp_out,
            ),
        ]
    flows += metadata_flows.vm_flows(cfg, vm, net, c, portsec.onward(vm))
    # IP and ARP alike: register 7 holds the IP destination or ARP target.
    flows += portsec.deliveries(vm, net, c, vips)
    flows += portsec.vip_flows(cfg, vm, net, c, vips, fip_flows)
    if cfg.fabric_ofport:  # nobody on the fabric may speak with this VM's MAC
        flows.append(make_flow(c, FABRIC_IN, 200, Match.of(reg6=r6, dl_src=mac), []))
    flows += eastwest.port_flow(cfg, vm, net, c)  # routed to it from another host
    if vm.fip is not None:
        # Someone else on the external network claims this FIP (an answer to our probe, a
        # GARP from the host a VM migrated to, or a misconfigured duplicate): tell the
        # controller. The same flow dark or live, so activation does not touch it.
        flows.append(
            make_flow(
                c,
                UPLINK_ARP,
                250,
                Match.of(proto="arp", **uplink_vlan(cfg, vm.fip), arp_spa=str(vm.fip)),
                [Meter(CLAIM_METER), Controller()],
            )
        )
    if pending:
        # Anything else from the port (QEMU's RARP after a live migration) also tells.
        flows += [make_flow(c, CLASSIFY, 90, Match.of(in_port=port), copy)] if copy else []
        flows += [
            make_flow(c, EGRESS, 100, Match.of(proto="ip", reg6=r6, nw_src=fixed), []),
            # Another host probing this FIP while we probe it (RFC 5227 simultaneous probes).
            make_flow(
                c,
                UPLINK_ARP,
                240,
                Match.of(
                    proto="arp",
                    **uplink_vlan(cfg, vm.fip),
                    arp_spa="0.0.0.0",
                    arp_tpa=str(vm.fip),
                    arp_op=1,
                ),
                [Meter(CLAIM_METER), Controller()],
            ),
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
        return [
            make_flow(
                c, PAT_OUT, 50, Match.of(**new, nw_src=str(vm.fixed_ip)), [pat_commit(cfg, lo, hi)]
            )
        ]
    own = str(networks.transit(cfg.transit_cidr, net, vm.offset(cfg)))
    zone = networks.zone(cfg.network_ct_zone_base, net)
    # 55: above the network's own commit (50), below the handoff's broadcast (60), which
    # must win for a session that began on another host (the same priority overlapped it)
    return [
        make_flow(
            c,
            NET_PAT_OUT,
            55,
            Match.of(**new, nw_src=str(vm.fixed_ip)),
            [Ct(zone=zone, table=NET_PAT_DONE, commit=True, nat=Nat("src", own))],
        ),
        make_flow(c, PAT_OUT, 50, Match.of(**new, nw_src=own), [pat_commit(cfg, lo, hi)]),
    ]


def fip_responder_key(cfg: HostConfig, vm: VmPort, net: Network) -> tuple[int, int]:
    """(table, cookie) of the ARP responder of an active FIP: if the switch holds it, the
    FIP was live here (before a controller restart, or just now)."""
    f = _fip_responder(cfg, vm, vm_cookie(vm, net))
    return f.table, f.cookie


def _fip_responder(cfg: HostConfig, vm: VmPort, c: int) -> Flow:
    fip = str(vm.fip)
    return make_flow(
        c,
        UPLINK_ARP,
        200,
        Match.of(proto="arp", **uplink_vlan(cfg, vm.fip), arp_tpa=fip, arp_op=1),
        arp_reply(mac_str(cfg.ip_mac(vm.fip)), fip),
    )


def fip_flows(
    cfg: HostConfig, vm: VmPort, net: Network, c: int, responder: Flow | None = None
) -> list[Flow]:
    """Static 1:1 NAT, the VM's own part: the ARP responder, the way in (stateless set_field,
    with the FIP flag for the ICMP-error punts), and fragments both ways; whole packets on
    the way out are rewritten by one host-level flow (from the FIP classify put in reg8).
    Fragments take conntrack NAT instead, because the userspace datapath does not fix
    a first fragment's UDP checksum after a set_field (the datagram would arrive corrupt);
    conntrack reassembles and fixes it."""
    fip, fixed, r6 = str(vm.fip), str(vm.fixed_ip), reg6(net)
    fip_mac = mac_str(cfg.ip_mac(vm.fip))
    zone = (
        cfg.fip_frag_ct_zone if net.vlan is None else networks.zone(cfg.network_ct_zone_base, net)
    )
    into = [Load("reg6", net.id)]  # a hairpinned packet may carry another network
    return [
        responder or _fip_responder(cfg, vm, c),
        make_flow(
            c,
            EGRESS,
            110,
            Match.of(proto="ip", reg6=r6, nw_src=fixed, nw_frag="yes"),
            [
                SetField("eth_src", fip_mac),
                Ct(zone=zone, table=EGRESS_OUT, commit=True, nat=Nat("src", fip)),
            ],
        ),
        make_flow(
            c,
            INGRESS,
            100,
            Match.of(proto="ip", nw_dst=fip),
            [SetField("ip_dst", fixed), *into, Load("reg5", 1, FIP_DONE), Goto(DELIVER)],
        ),
        make_flow(
            c,
            INGRESS,
            110,
            Match.of(proto="ip", nw_dst=fip, nw_frag="yes"),
            [*into, Ct(zone=zone, table=DELIVER, commit=True, nat=Nat("dst", fixed))],
        ),
    ]
