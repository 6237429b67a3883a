"""Metadata: a VM's requests to 169.254.169.254:80 go to its own host's proxy, and the
proxy's replies back to the VM (docs/metadata.md). Stateless, as a FIP is: a live-migrated
VM's next request simply meets its new host's proxy.

Only a request from the port's own MAC and fixed IP is steered, by a classify flow of the
port's own (above the metadata drop, so port security off or an allowed address pair
cannot borrow another port's identity: any other source to 169.254.169.254 is dropped and
counted there). It then meets the port's security groups like any of its packets. In
vm_route one host-level flow sends it to the proxy with the port's encoded address
(ovsnat.model.metadata, loaded into register 8 by the port's flow) as source: the proxy
knows the port from the address, so overlapping fixed IPs of two networks never meet. The
proxy's replies come back to that address; one flow per port turns them back into
169.254.169.254 -> the fixed IP and delivers them as routed traffic (through the port's
ingress rules, where they are replies of the connection its egress rules committed).
"""

from __future__ import annotations

from ovsnat.compile.actions import Goto, Load, Move, Output, SetField
from ovsnat.compile.flows import NO_VLAN, Flow, Match, make_flow
from ovsnat.compile.pipeline import (
    CLASSIFY,
    FROM_FABRIC,
    META_REPLY,
    METADATA,
    ROUTED,
    TO_KEY_IP,
    VM_ARP,
    VM_L2,
    VM_ROUTE,
    declare,
    flag,
    no_flag,
)
from ovsnat.compile.shared import arp_reply
from ovsnat.model import HostConfig, VmPort, mac_str
from ovsnat.model.metadata import (
    ENCODED,
    MAX_OFPORT,
    META_MAC,
    METADATA_IP,
    METADATA_PORT,
    PROXY_IP,
    encode,
)
from ovsnat.model.networks import Network

ASKED = dict(proto="tcp", nw_dst=str(METADATA_IP), tp_dst=METADATA_PORT)
PRIO = 410  # above the classify drop of everything else to 169.254.169.254 (400)

TABLES = (
    declare(
        META_REPLY,
        "meta_reply",
        "The metadata proxy's replies, to a port's encoded address (one flow per local "
        "port): their source becomes 169.254.169.254 and the router MAC, their destination "
        "the port's fixed IP, and they are delivered by vm_l2 as routed traffic; to any "
        "other address they are dropped.",
        "proto nw_dst",
        {SetField, Load, Move, Goto},
        {VM_L2},
    ),
)


def enabled(cfg: HostConfig) -> bool:
    return bool(cfg.metadata_ofport)


def host_flows(cfg: HostConfig, c: int) -> list[Flow]:
    """The steering to the proxy, the way back from it, and the answer to a VM that ARPs
    for 169.254.169.254 itself (a link-local route on the VM's interface)."""
    if not enabled(cfg):
        return []
    router, meta = mac_str(cfg.router_mac), str(METADATA_IP)
    from_proxy = Match.of(
        proto="tcp",
        in_port=cfg.metadata_ofport,
        vlan_tci=NO_VLAN,
        nw_src=str(PROXY_IP),
        tp_src=METADATA_PORT,
        nw_dst=str(ENCODED),
    )
    return [
        make_flow(
            c,
            VM_ROUTE,
            200,
            Match.of(proto="tcp", reg5=flag(METADATA)),
            [
                Move("reg8", "ip_src"),
                SetField("ip_dst", str(PROXY_IP)),
                SetField("eth_src", router),
                SetField("eth_dst", META_MAC),
                Output(cfg.metadata_ofport),
            ],
        ),
        make_flow(c, CLASSIFY, PRIO, from_proxy, [Goto(META_REPLY)]),
        make_flow(
            c,
            VM_ARP,
            190,
            Match.of(proto="arp", reg5=no_flag(FROM_FABRIC), arp_tpa=meta, arp_op=1),
            arp_reply(router, meta),
        ),
    ]


def vm_flows(cfg: HostConfig, vm: VmPort, net: Network, c: int, onward: list) -> list[Flow]:
    """The port's request, marked with its encoded address, and its replies' way back.
    `onward`: where the port's IP goes after classify (its security groups, or on). No
    presence copy for a dark FIP's VM: a metadata request does not prove it is here (its
    other frames do, the DHCP that comes first among them)."""
    if not enabled(cfg) or vm.ofport > MAX_OFPORT:
        return []
    own = encode(vm.ofport)
    asked = Match.of(
        in_port=vm.ofport,
        vlan_tci=NO_VLAN,
        dl_src=mac_str(vm.mac),
        nw_src=str(vm.fixed_ip),
        **ASKED,
    )
    network = [Load("reg6", net.id)] if net.id else []
    mark = [Load("reg8", int(own)), Load("reg5", 1, METADATA)]
    back = [
        SetField("ip_src", str(METADATA_IP)),
        SetField("ip_dst", str(vm.fixed_ip)),
        SetField("eth_src", mac_str(cfg.router_mac)),
        *network,
        Load("reg5", 1, ROUTED),
        TO_KEY_IP,
        Goto(VM_L2),
    ]
    return [
        make_flow(c, CLASSIFY, PRIO, asked, network + mark + onward),
        make_flow(c, META_REPLY, 100, Match.of(proto="tcp", nw_dst=str(own)), back),
    ]
