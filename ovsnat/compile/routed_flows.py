"""The routed uplinks of bgp mode (docs/bgp.md section 4): no shared external segment, one
/31 link to each ToR, each with an uplink port toward the ToR and an internal port that
holds the host's own address on the link (FRR and BFD speak through it).

- classify: from an uplink, ARP for the link's own address and IP to it go to the kernel
  port (BGP, BFD, ARP: the host's own); any other IP is from outside and goes to ingress
  as from the l2 uplink; everything else is dropped. What the kernel port sends goes out
  of its own uplink only.
- egress: no VM reaches a link or a protected range (the ToRs' control plane).
- ingress: leaving traffic goes to the select group (ovsnat.compile.groups): a bucket per
  ToR whose MAC is known, each rewriting the MACs for its link and watching its uplink.

The l2 flows of the uplink (ARP for FIPs and the SNAT IP, gateway learning, claims) are not
compiled; a FIP's ARP responder stays, unreachable, as the controller's record that the
FIP is live here (ovsnat.compile.vm.fip_responder_key).
"""

from __future__ import annotations

from ovsnat.compile.actions import DecTtl, Goto, Group, Load, Output
from ovsnat.compile.flows import Flow, Match, make_flow
from ovsnat.compile.groups import UPLINKS_GROUP, SelectGroup, tor_bucket
from ovsnat.compile.pipeline import CLASSIFY, EGRESS, INGRESS, LEAVING, OUTSIDE, flag
from ovsnat.model import HostConfig, mac_str
from ovsnat.model.metadata import ENCODED

LINK_LOCAL = str(ENCODED)


def outside_ports(cfg: HostConfig) -> tuple[int, ...]:
    """The ports frames from outside come in on: the uplink, or the routed uplinks."""
    if cfg.bgp is None:
        return (cfg.uplink_ofport,) if cfg.uplink_ofport else ()
    return tuple(r.uplink_ofport for r in cfg.routed if r.ready)


def arrivals(cfg: HostConfig, c: int) -> list[Flow]:
    flows = []
    for r in cfg.routed:
        if not r.ready:
            continue
        up, kernel, local = r.uplink_ofport, r.kernel_ofport, str(r.link.local)
        flows += [
            make_flow(c, CLASSIFY, 400, Match.of(proto="ip", in_port=up, nw_src=LINK_LOCAL), []),
            make_flow(c, CLASSIFY, 120, Match.of(proto="arp", in_port=up, arp_tpa=local),
                      [Output(kernel)]),
            make_flow(c, CLASSIFY, 120, Match.of(proto="ip", in_port=up, nw_dst=local),
                      [Output(kernel)]),
            make_flow(c, CLASSIFY, 120, Match.of(in_port=kernel), [Output(up)]),
            make_flow(c, CLASSIFY, 100, Match.of(proto="ip", in_port=up),
                      [Load("reg5", 1, OUTSIDE), Goto(INGRESS)]),
        ]  # fmt: skip
    return flows


def guarded(cfg: HostConfig, c: int) -> list[Flow]:
    """A VM never reaches the links or the protected ranges (the ToRs' control plane)."""
    if cfg.bgp is None:
        return []
    return [
        make_flow(c, EGRESS, 310, Match.of(proto="ip", nw_dst=str(net)), [])
        for net in cfg.bgp.guarded
    ]


def leaving(c: int) -> list[Flow]:
    return [
        make_flow(
            c,
            INGRESS,
            10,
            Match.of(proto="ip", reg5=flag(LEAVING)),
            [DecTtl(), Group(UPLINKS_GROUP)],
        )
    ]


def group(cfg: HostConfig) -> SelectGroup | None:
    """The ToRs' select group (None in l2 mode); no bucket for a ToR whose MAC is not
    known yet: with none at all, leaving traffic is dropped (as l2 mode's is while the
    gateway's MAC is unknown)."""
    if cfg.bgp is None:
        return None
    buckets = tuple(
        tor_bucket(r.uplink_ofport, mac_str(cfg.ip_mac(r.link.local)), mac_str(r.tor_mac))
        for r in cfg.routed
        if r.ready and r.tor_mac is not None
    )
    return SelectGroup(UPLINKS_GROUP, buckets)
