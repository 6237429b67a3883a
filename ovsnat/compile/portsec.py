"""A port's security at its own flows (Neutron's port security, as ovsnat.model.secgroups
reads it): what its classify flows admit (anti-spoofing: its MAC and fixed IP, its allowed
address pairs; nothing checked with port security off), where its IP goes next (through its
security groups when it is filtered), how it is delivered, and an administratively down
port's flows (it sends and receives nothing)."""

from __future__ import annotations

from ovsnat.compile import sg_flows
from ovsnat.compile.actions import Goto, Load, Output, Resubmit, SetField
from ovsnat.compile.flows import NO_VLAN, Flow, Match, make_flow
from ovsnat.compile.pipeline import CLASSIFY, SG_IN_CT, SG_OUT_CT, VM_L2, VM_ROUTE, reg6
from ovsnat.model import VmPort, mac_str
from ovsnat.model.networks import Network

ADMIN_DOWN_PRIO = 450  # above every classify flow, the DHCP punts' included
PAIR_PRIO = 90  # an allowed pair's classify and delivery, under the port's own address


def profile(vm: VmPort) -> int:
    return sg_flows.profile_id(vm.security.groups) if vm.security.filtered else 0


def sources(vm: VmPort) -> list[tuple[int, dict, dict]]:
    """(priority, IP match, ARP match) for each source the port may send from."""
    port, mac = vm.ofport, mac_str(vm.mac)
    base = dict(in_port=port, vlan_tci=NO_VLAN)
    if not vm.security.anti_spoofing:  # port security off: anything from the port
        return [(100, base, base)]
    own = str(vm.fixed_ip)
    out = [
        (
            100,
            dict(base, dl_src=mac, nw_src=own),
            dict(base, dl_src=mac, arp_spa=own, arp_sha=mac),
        )
    ]
    for pair in vm.security.pairs:
        pmac, cidr = mac_str(pair.mac) if pair.mac else mac, _cidr(pair.cidr)
        out.append(
            (
                PAIR_PRIO,
                dict(base, dl_src=pmac, nw_src=cidr),
                dict(base, dl_src=pmac, arp_spa=cidr, arp_sha=pmac),
            )
        )
    return out


def onward(vm: VmPort) -> list:
    """Where a port's IP goes after classify: its security groups, or straight on."""
    if not vm.security.filtered:
        return [Goto(VM_ROUTE)]
    return [Load("reg9", profile(vm)), Load("reg10", vm.sg_zone), Goto(SG_OUT_CT)]


def deliveries(vm: VmPort, net: Network, c: int) -> list[Flow]:
    """vm_l2: IP and ARP for the port's fixed IP (and /32 allowed pairs) to the port; a
    filtered port's IP first through its ingress rules."""
    mac, r6 = mac_str(vm.mac), reg6(net)
    keys = [(100, f"{int(vm.fixed_ip):#x}")]
    keys += [(PAIR_PRIO, _reg7(p.cidr)) for p in vm.security.pairs]
    out_ = [SetField("eth_dst", mac)]
    flows = [
        make_flow(c, VM_L2, prio, Match.of(reg6=r6, reg7=key), [*out_, Output(vm.ofport)])
        for prio, key in keys
    ]
    if vm.security.filtered:
        regs = [Load("reg9", profile(vm)), Load("reg10", vm.sg_zone), Load("reg11", vm.ofport)]
        flows += [
            make_flow(
                c,
                VM_L2,
                prio + 5,
                Match.of(proto="ip", reg6=r6, reg7=key),
                [*out_, *regs, Goto(SG_IN_CT)],
            )
            for prio, key in keys
        ]
        flows += sg_flows.port_drops(c, vm.ofport)
    return flows


def reinjected(vm: VmPort) -> list:
    """How the controller sends a frame it rewrote to this port (an ICMP error through its
    FIP, its quoted header un-NATed): a filtered port's through its ingress rules, where the
    error is related to the connection it quotes (or dropped); [] straight out."""
    if not vm.security.filtered:
        return []
    regs = [Load("reg9", profile(vm)), Load("reg10", vm.sg_zone), Load("reg11", vm.ofport)]
    return [*regs, Resubmit(SG_IN_CT)]


def admin_down(vm: VmPort, net: Network, c: int) -> list[Flow]:
    """Everything from the port dropped before anything else looks at it; nothing
    delivered to it (nor sent to the fabric in its place)."""
    key = f"{int(vm.fixed_ip):#x}"
    return [
        make_flow(c, CLASSIFY, ADMIN_DOWN_PRIO, Match.of(in_port=vm.ofport), []),
        make_flow(c, VM_L2, 100, Match.of(reg6=reg6(net), reg7=key), []),
    ]


def _cidr(cidr) -> str:
    return str(cidr.ip) if cidr.prefixlen == 32 else str(cidr.cidr)


def _reg7(cidr) -> str:
    if cidr.prefixlen == 32:
        return f"{int(cidr.ip):#x}"
    mask = (0xFFFFFFFF << (32 - cidr.prefixlen)) & 0xFFFFFFFF
    return f"{int(cidr.network):#x}/{mask:#x}"
