"""A port's security at its own flows (Neutron's port security, as ovsnat.model.secgroups
reads it): what its classify flows admit (anti-spoofing: its MAC and fixed IP, its allowed
address pairs; nothing checked with port security off), where its IP goes next (through its
security groups when it is filtered), how it is delivered, and an administratively down
port's flows (it sends and receives nothing)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ovsnat.compile import sg_flows
from ovsnat.compile.actions import Controller, Goto, Load, Output, Resubmit, SetField
from ovsnat.compile.flows import COOKIE_VIP, NO_VLAN, Flow, Match, make_flow, owner_cookie
from ovsnat.compile.pipeline import (
    CLASSIFY,
    FABRIC_IN,
    SG_IN_CT,
    SG_OUT_CT,
    UPLINK_ARP,
    VM_ARP,
    VM_L2,
    VM_ROUTE,
    reg6,
)
from ovsnat.compile.punt_flows import CLAIM_METER
from ovsnat.model import VmPort, mac_str
from ovsnat.model.networks import Network

HELD, ELSEWHERE, UNKNOWN = "held", "elsewhere", "unknown"  # a VIP's state (core.vips)

ADMIN_DOWN_PRIO = 450  # above every classify flow, the DHCP punts' included
PAIR_PRIO = 90  # an allowed pair's classify and delivery, under the port's own address


def profile(vm: VmPort) -> int:
    return sg_flows.profile_id(vm.security.groups) if vm.security.filtered else 0


@dataclass(frozen=True)
class Source:
    """A source the port may send from: its classify matches; `fip`: the FIP its IP leaves
    through (a held VIP's), instead of the port's own; `learn`: its ARP tells the controller
    who holds the address (ovsnat.core.vips)."""

    prio: int
    ip: dict
    arp: dict
    fip: object = None
    learn: bool = False  # a single-address pair: its gratuitous ARP goes to the controller


def sources(vm: VmPort, vips=()) -> list[Source]:
    port, mac = vm.ofport, mac_str(vm.mac)
    base = dict(in_port=port, vlan_tci=NO_VLAN)
    if not vm.security.anti_spoofing:  # port security off: anything from the port
        return [Source(100, base, base)]
    own = str(vm.fixed_ip)
    out = [
        Source(
            100,
            dict(base, dl_src=mac, nw_src=own),
            dict(base, dl_src=mac, arp_spa=own, arp_sha=mac),
        )
    ]
    held = {vip: fip for vip, state, fip in vips if state == HELD}
    for pair in vm.security.pairs:
        pmac, cidr = mac_str(pair.mac) if pair.mac else mac, _cidr(pair.cidr)
        single = pair.cidr.prefixlen == 32
        out.append(
            Source(
                PAIR_PRIO,
                dict(base, dl_src=pmac, nw_src=cidr),
                dict(base, dl_src=pmac, arp_spa=cidr, arp_sha=pmac),
                held.get(pair.cidr.ip) if single else None,
                single,
            )
        )
    return out


def vip_flows(cfg, vm: VmPort, net: Network, c: int, vips, fip_flows) -> list[Flow]:
    """A held VIP's FIP: its stateless NAT, as a port's own FIP's."""
    flows = []
    for vip, state, fip in vips:
        if state == HELD and fip is not None:
            flows += fip_flows(cfg, replace(vm, fixed_ip=vip, fip=fip), net, c)
    return flows


def vip_owner_flows(cfg, vip, ports: list, held_nets=frozenset()) -> list[Flow]:
    """What a VIP needs on this host however many local ports have it as a single pair
    (`ports`: (port, its network), sorted by name), owned by the address so two ports never
    want one flow:
    - where nobody has spoken from it yet (a network not in `held_nets`, here or
      elsewhere), it is delivered as a pair to that network's first port by name;
    - with a fabric, its ARP from other hosts is copied to the controller: another host's
      VM holds it now (ovsnat.core.vips);
    - its FIP's own ARP from the uplink (the new holder's host announcing it) is dropped
      before the FIP's responder: answering it, from the FIP's MAC, would pull the
      external switches back to this host when the VIP has just left it."""
    c = owner_cookie(COOKIE_VIP, int(vip))
    nets = {net.name: net for _, net in ports}
    flows = []
    for name, net in sorted(nets.items()):
        if name not in held_nets:
            up = [vm for vm, n in ports if n.name == name and not vm.security.admin_down]
            flows += _deliver(up[0], net, c, PAIR_PRIO, f"{int(vip):#x}") if up else []
        if cfg.fabric_ofport:
            match = Match.of(proto="arp", reg6=reg6(net), arp_spa=str(vip), arp_tpa=str(vip))
            flows.append(
                make_flow(c, FABRIC_IN, 210, match, [Controller(meter=CLAIM_METER), Goto(VM_ARP)])
            )
    fips = {f for vm, _ in ports for v, f in vm.security.pair_fips if v == vip}
    for fip in sorted(fips):
        flows.append(make_flow(c, UPLINK_ARP, 250, Match.of(proto="arp", arp_spa=str(fip)), []))
    return flows


def vip_addresses(vm: VmPort) -> list:
    """The port's single-address pairs: VIPs (ovsnat.core.vips)."""
    return [p.cidr.ip for p in vm.security.pairs if p.cidr.prefixlen == 32]


def onward(vm: VmPort) -> list:
    """Where a port's IP goes after classify: its security groups, or straight on."""
    if not vm.security.filtered:
        return [Goto(VM_ROUTE)]
    return [*_sg_regs(vm)[:2], Goto(SG_OUT_CT)]


def deliveries(vm: VmPort, net: Network, c: int, vips=()) -> list[Flow]:
    """vm_l2: IP and ARP for the port's fixed IP and allowed pairs to the port (a VIP: as
    its own address while it holds it; nothing while another port does, or while nobody
    has spoken from it: then vip_owner_flows delivers it to one of its ports); a filtered
    port's IP first through its ingress rules."""
    state = {vip: s for vip, s, _ in vips}
    keys = [(100, f"{int(vm.fixed_ip):#x}")]
    for p in vm.security.pairs:
        if p.cidr.prefixlen != 32:
            keys.append((PAIR_PRIO, _reg7(p.cidr)))
        elif state.get(p.cidr.ip, UNKNOWN) == HELD:
            keys.append((100, _reg7(p.cidr)))
    flows = [f for prio, key in keys for f in _deliver(vm, net, c, prio, key)]
    return flows + (sg_flows.port_drops(c, vm.ofport) if vm.security.filtered else [])


def _deliver(vm: VmPort, net: Network, c: int, prio: int, key: str) -> list[Flow]:
    """vm_l2 flows that deliver register 7's `key` to the port (IP through its ingress
    rules when it is filtered)."""
    r6, out_ = reg6(net), [SetField("eth_dst", mac_str(vm.mac))]
    flows = [make_flow(c, VM_L2, prio, Match.of(reg6=r6, reg7=key), [*out_, Output(vm.ofport)])]
    if vm.security.filtered:
        match = Match.of(proto="ip", reg6=r6, reg7=key)
        flows.append(make_flow(c, VM_L2, prio + 5, match, [*out_, *_sg_regs(vm), Goto(SG_IN_CT)]))
    return flows


def reinjected(vm: VmPort) -> list:
    """How the controller sends a frame it rewrote to this port (an ICMP error through its
    FIP, its quoted header un-NATed): a filtered port's through its ingress rules, where the
    error is related to the connection it quotes (or dropped); [] straight out."""
    if not vm.security.filtered:
        return []
    return [*_sg_regs(vm), Resubmit(SG_IN_CT)]


def admin_down(vm: VmPort, net: Network, c: int) -> list[Flow]:
    """Everything from the port dropped before anything else looks at it; nothing
    delivered to it (nor sent to the fabric in its place)."""
    key = f"{int(vm.fixed_ip):#x}"
    return [
        make_flow(c, CLASSIFY, ADMIN_DOWN_PRIO, Match.of(in_port=vm.ofport), []),
        make_flow(c, VM_L2, 100, Match.of(reg6=reg6(net), reg7=key), []),
    ]


def _sg_regs(vm: VmPort) -> list:
    """A filtered port's profile, zone and OpenFlow port, for the security-group tables."""
    return [Load("reg9", profile(vm)), Load("reg10", vm.sg_zone), Load("reg11", vm.ofport)]


def _cidr(cidr) -> str:
    return str(cidr.ip) if cidr.prefixlen == 32 else str(cidr.cidr)


def _reg7(cidr) -> str:
    if cidr.prefixlen == 32:
        return f"{int(cidr.ip):#x}"
    mask = (0xFFFFFFFF << (32 - cidr.prefixlen)) & 0xFFFFFFFF
    return f"{int(cidr.network):#x}/{mask:#x}"
