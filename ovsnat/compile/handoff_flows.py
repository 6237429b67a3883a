"""The flows of PAT session handoff (docs/handoff.md), compiled like every other owner's.

Three parts, all on the handoff VLAN of the fabric, which no tenant network may use:
- host-level (every host, when handoff_vlan is set): handoff frames are admitted into
  handoff_in; a TCP segment without SYN that a VM in its arrival grace sends, and that this
  host's conntrack does not know, is broadcast on the handoff VLAN instead of committed
  here; a handed packet is never committed (commit flows exclude the HANDED flag).
- a VM that arrived here (grace): its replies, sent over by the host it left, are
  delivered to it as routed traffic.
- a VM that left this host (grace, cookie 0xa6/0xa7): its packets from the host it went to
  go on through egress as if it were still here, and only the connections conntrack already
  holds pass; the replies to them go to the handoff VLAN, to its MAC.
"""

from __future__ import annotations

from ovsnat.compile.actions import Goto, Load, Output, PopVlan, PushVlan, SetField
from ovsnat.compile.flows import COOKIE_GONE, COOKIE_VLAN_GONE, Flow, Match, make_flow, owner_cookie
from ovsnat.compile.pipeline import (
    ARRIVED,
    CLASSIFY,
    EGRESS,
    HANDED,
    HANDOFF_IN,
    NET_PAT_OUT,
    PAT_OUT,
    ROUTED,
    TO_KEY_IP,
    VM_L2,
    flag,
    reg6,
)
from ovsnat.model import HostConfig, VmPort, mac_str
from ovsnat.model.networks import Network

BROADCAST = "ff:ff:ff:ff:ff:ff"


def enabled(cfg: HostConfig) -> bool:
    return bool(cfg.handoff_vlan and cfg.fabric_ofport)


def not_handed(cfg: HostConfig) -> dict:
    """The extra match of every commit flow: a handed packet never creates state here."""
    return {"reg5": f"0/{1 << HANDED:#x}"} if enabled(cfg) else {}


def host_flows(cfg: HostConfig, c: int) -> list[Flow]:
    if not enabled(cfg):
        return []
    fabric, vlan = cfg.fabric_ofport, cfg.handoff_vlan
    to_all = [SetField("eth_dst", BROADCAST), PushVlan(vlan), Output(fabric)]
    # A session that began on the host the VM left: its segments carry no SYN, and this
    # host's zone has no entry for it (+new). The first zone a packet meets decides.
    began_elsewhere = dict(ct_state="+new+trk", proto="tcp", reg5=flag(ARRIVED), tcp_flags="-syn")
    return [
        make_flow(
            c,
            CLASSIFY,
            100,
            Match.of(in_port=fabric, dl_vlan=vlan),
            [PopVlan(), Load("reg5", 1, HANDED), Goto(HANDOFF_IN)],
        ),
        make_flow(c, NET_PAT_OUT, 60, Match.of(**began_elsewhere), to_all),
        make_flow(c, PAT_OUT, 60, Match.of(**began_elsewhere), to_all),
        make_flow(c, HANDOFF_IN, 0, Match(), []),
    ]


def arrived_flows(cfg: HostConfig, vm: VmPort, net: Network, c: int) -> list[Flow]:
    """A VM in its arrival grace: replies for it from the host it left."""
    if not enabled(cfg):
        return []
    return [
        make_flow(
            c,
            HANDOFF_IN,
            100,
            Match.of(proto="ip", dl_dst=mac_str(vm.mac), nw_dst=str(vm.fixed_ip)),
            [
                Load("reg6", net.id),
                SetField("eth_src", mac_str(cfg.router_mac)),
                Load("reg5", 1, ROUTED),
                TO_KEY_IP,
                Goto(VM_L2),
            ],
        )
    ]


def gone_cookie(vm: VmPort, net: Network) -> int:
    if net.vlan is None:
        return owner_cookie(COOKIE_GONE, int(vm.fixed_ip))
    return owner_cookie(COOKIE_VLAN_GONE, net.vlan << 20 | int(vm.fixed_ip) & 0xFFFFF)


def gone_flows(cfg: HostConfig, vm: VmPort, net: Network) -> list[Flow]:
    """A PAT VM that left this host, for its handoff grace."""
    if not enabled(cfg):
        return []
    c, mac, fixed = gone_cookie(vm, net), mac_str(vm.mac), str(vm.fixed_ip)
    return [
        make_flow(
            c,
            HANDOFF_IN,
            100,
            Match.of(proto="ip", dl_src=mac, dl_dst=BROADCAST, nw_src=fixed),
            [Load("reg6", net.id), Goto(EGRESS)],
        ),
        # Below a local VM's own delivery (100): if the address is in use here again, the
        # local VM wins.
        make_flow(
            c,
            VM_L2,
            90,
            Match.of(reg5=flag(ROUTED), reg6=reg6(net), reg7=f"{int(vm.fixed_ip):#x}"),
            [
                SetField("eth_src", mac_str(cfg.snat_mac)),
                SetField("eth_dst", mac),
                PushVlan(cfg.handoff_vlan),
                Output(cfg.fabric_ofport),
            ],
        ),
    ]
