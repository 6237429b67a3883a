"""Action lists more than one owner's flows use: an ARP responder (the SNAT IP's, a
network gateway's, a FIP's), the commit into the shared PAT zone (the host's range, or a
VM's own block) and the way onto the fabric in a network's VLAN (a network's switched
traffic, a routed packet for a remote neighbour)."""

from __future__ import annotations

from ovsnat.compile.actions import Ct, Move, Nat, Output, PushVlan, SetField
from ovsnat.compile.pipeline import PAT_GUARD
from ovsnat.model import HostConfig


def arp_reply(mac: str, ip: str) -> list:
    """Turn an ARP request into the reply for ip-is-at-mac and send it back where it came
    from (IN_PORT: an output to the packet's own in_port would be skipped)."""
    return [
        Move("eth_src", "eth_dst"),
        SetField("eth_src", mac),
        SetField("arp_op", "2"),
        Move("arp_sha", "arp_tha"),
        Move("arp_spa", "arp_tpa"),
        SetField("arp_sha", mac),
        SetField("arp_spa", ip),
        Output("IN_PORT"),
    ]


def pat_commit(cfg: HostConfig, lo: int, hi: int) -> Ct:
    """Commit a new connection in the shared PAT zone, source translated to the SNAT IP and
    a port in lo-hi."""
    return Ct(
        zone=cfg.ct_zone, table=PAT_GUARD, commit=True, nat=Nat("src", str(cfg.snat_ip), lo, hi)
    )


def fabric_out(cfg: HostConfig, net) -> list:
    """To the fabric in the network's VLAN. Last in an action list: push_vlan applies to
    every output after it."""
    if not cfg.fabric_ofport:
        return []
    return ([PushVlan(net.vlan)] if net.vlan else []) + [Output(cfg.fabric_ofport)]
