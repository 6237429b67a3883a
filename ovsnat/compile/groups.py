"""OpenFlow groups (bgp mode's way out, docs/bgp.md section 4): one select group per host
spreads what leaves over the ToRs, a bucket per ToR, each rewriting the MACs for its link
and watching its uplink, so a link that loses carrier is skipped by the switch itself.

Groups carry no cookie: ovsnat owns fixed group ids and reconciles them by a group dump.
"""

from __future__ import annotations

from dataclasses import dataclass

from ovsnat.compile.actions import Output, SetField

UPLINKS_GROUP = 1  # the routed uplinks' select group
OWN_GROUPS = frozenset({UPLINKS_GROUP})  # the only group ids ovsnat adds and changes


@dataclass(frozen=True)
class Bucket:
    watch_port: int
    actions: tuple

    def text(self) -> str:
        return f"bucket=watch_port:{self.watch_port},actions=" + ",".join(
            a.text() for a in self.actions
        )


@dataclass(frozen=True)
class SelectGroup:
    id: int
    buckets: tuple[Bucket, ...]

    def text(self) -> str:
        """As `ovs-ofctl add-group` reads it (and the golden files show it)."""
        return ",".join([f"group_id={self.id}", "type=select", *(b.text() for b in self.buckets)])


def tor_bucket(uplink: int, own_mac: str, tor_mac: str) -> Bucket:
    """Out of one routed uplink: from the host's address on that link to the ToR's."""
    return Bucket(
        uplink, (SetField("eth_src", own_mac), SetField("eth_dst", tor_mac), Output(uplink))
    )
