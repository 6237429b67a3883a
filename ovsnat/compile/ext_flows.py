"""The tagged external networks' flows (ovsnat.model.externals, docs/routers.md item 3): each
is one VLAN on the uplink, with this host's own SNAT address, PAT range and gateway there.

What picks the network is an address, never state: a packet arrives in a VLAN only for an
address of that network (its SNAT address, its FIPs); a packet leaves into the VLAN of the
network its translated source belongs to (a SNAT address or a FIP: the networks never
overlap); only a new PAT connection needs to be told which SNAT address to take, by its
network's router: register 2 holds the VLAN of the gateway network, loaded by the network's
own flows (ovsnat.compile.network; 0, the untagged network, by default). One conntrack
zone serves all: a connection's translated source names its network, so two networks'
sessions never share a tuple. The untagged network is the options', as before; once a
tagged one exists, ARP and IP from the untagged segment never reach a tagged network's
addresses, nor the reverse.
"""

from __future__ import annotations

from ovsnat.compile import handoff_flows
from ovsnat.compile.actions import (
    Controller,
    Ct,
    DecTtl,
    Goto,
    Load,
    Meter,
    Nat,
    Output,
    PopVlan,
    PushVlan,
    SetField,
)
from ovsnat.compile.flows import NO_VLAN, Flow, Match, make_flow
from ovsnat.compile.pipeline import (
    CLASSIFY,
    EGRESS_OUT,
    INGRESS,
    LEAVING,
    OUTSIDE,
    PAT_GUARD,
    PAT_IN,
    PAT_OUT,
    UPLINK_ARP,
    flag,
)
from ovsnat.compile.punt_flows import CLAIM_METER
from ovsnat.compile.shared import arp_reply
from ovsnat.model import HostConfig, mac_str
from ovsnat.model.externals import External

COMMIT_PRIO = 55  # above a VM's own PAT block (50), which is the untagged network's; below
# the handoff's (60): a session that began on another host is handed back there as ever


def uplink_vlan(cfg: HostConfig, ip) -> dict:
    """The match that keeps an address's ARP in its own network: nothing while the host has
    only the untagged network (as before), its VLAN or untagged otherwise."""
    if not cfg.tagged:
        return {}
    ext = cfg.external_for(ip)
    return {"dl_vlan": ext.vlan} if ext is not None else {"vlan_tci": NO_VLAN}


def host_flows(cfg: HostConfig, c: int) -> list[Flow]:
    flows: list[Flow] = []
    for ext in cfg.tagged:
        flows += _arrivals(cfg, ext, c) + _pat(cfg, ext, c) + _leaving(cfg, ext, c)
    return flows


def _arrivals(cfg: HostConfig, ext: External, c: int) -> list[Flow]:
    """In from the network's VLAN: IP for its addresses (untagged, marked as from outside),
    ARP kept tagged (its answers go back in the VLAN they were asked in), the gateway's ARP
    copied to the controller (ovsnat.core.gateways), the SNAT address answered and guarded."""
    up, vid, cidr, snat = cfg.uplink_ofport, ext.vlan, ext.cidr, str(ext.snat)
    tagged = {"in_port": up, "dl_vlan": vid}
    return [
        make_flow(
            c,
            CLASSIFY,
            100,
            Match.of(proto="ip", **tagged, nw_dst=cidr),
            [PopVlan(), Load("reg5", 1, OUTSIDE), Goto(INGRESS)],
        ),
        # The untagged segment has no business with this network's addresses.
        make_flow(
            c, CLASSIFY, 101, Match.of(proto="ip", in_port=up, vlan_tci=NO_VLAN, nw_dst=cidr), []
        ),
        make_flow(c, CLASSIFY, 100, Match.of(proto="arp", **tagged), [Goto(UPLINK_ARP)]),
        make_flow(
            c,
            CLASSIFY,
            110,
            Match.of(proto="arp", **tagged, arp_spa=ext.gateway),
            [Controller(meter=CLAIM_METER), Goto(UPLINK_ARP)],
        ),
        make_flow(
            c,
            UPLINK_ARP,
            200,
            Match.of(proto="arp", dl_vlan=vid, arp_tpa=snat, arp_op=1),
            arp_reply(mac_str(cfg.ip_mac(ext.snat)), snat),
        ),
        make_flow(
            c,
            UPLINK_ARP,
            250,
            Match.of(proto="arp", dl_vlan=vid, arp_spa=snat),
            [Meter(CLAIM_METER), Controller()],
        ),
    ]


def _pat(cfg: HostConfig, ext: External, c: int) -> list[Flow]:
    """New connections of the networks whose router's gateway this is take its SNAT address
    (the host's whole range: a VM's own block is the untagged network's); replies come
    back through the same zone."""
    snat = str(ext.snat)
    new = Match.of(
        ct_state="+new+trk", proto="ip", reg2=f"{ext.vlan:#x}", **handoff_flows.not_handed(cfg)
    )
    nat = Nat("src", snat, cfg.snat_port_min, cfg.snat_port_max)
    back = [Ct(zone=cfg.ct_zone, table=PAT_IN, nat=Nat())]
    return [
        make_flow(
            c,
            PAT_OUT,
            COMMIT_PRIO,
            new,
            [Ct(zone=cfg.ct_zone, table=PAT_GUARD, commit=True, nat=nat)],
        ),
        make_flow(
            c,
            PAT_GUARD,
            100,
            Match.of(proto="ip", nw_src=snat),
            [SetField("eth_src", mac_str(cfg.ip_mac(ext.snat))), Goto(EGRESS_OUT)],
        ),
        make_flow(c, INGRESS, 100, Match.of(proto="ip", nw_dst=snat), back),
        make_flow(c, INGRESS, 120, Match.of(proto="ip", nw_dst=snat, nw_frag="yes"), back),
    ]


def _leaving(cfg: HostConfig, ext: External, c: int) -> list[Flow]:
    """Out to the network's gateway in its VLAN, once its MAC is learned; until then what
    would leave from its addresses is dropped (never into the untagged network)."""
    match = Match.of(proto="ip", reg5=flag(LEAVING), nw_src=ext.cidr)
    if ext.gateway_mac is None:
        return [make_flow(c, INGRESS, 11, match, [])]
    out = [DecTtl(), SetField("eth_dst", mac_str(ext.gateway_mac)), PushVlan(ext.vlan)]
    return [make_flow(c, INGRESS, 11, match, out + [Output(cfg.uplink_ofport)])]
