"""802.1Q tags on the uplink's frames: each tagged external network is one VLAN there
(ovsnat.model.externals). Its ARP reaches the controller still tagged (the responders answer
in the VLAN they were asked in), and what the controller sends into it (GARPs, probes, the
gateway's ARP, relayed ICMP) is tagged here. Pure."""

from __future__ import annotations

TPID = 0x8100


def untag(frame: bytes) -> tuple[int | None, bytes]:
    """(VLAN id, the frame without its tag); (None, frame) for an untagged frame. A tag too
    short to hold its header is left for the parser after it to refuse."""
    if len(frame) < 18 or int.from_bytes(frame[12:14], "big") != TPID:
        return None, frame
    return int.from_bytes(frame[14:16], "big") & 0x0FFF, frame[:12] + frame[16:]


def tag(frame: bytes, vlan: int | None) -> bytes:
    """The frame with an 802.1Q tag of `vlan` (priority 0) after its MACs; unchanged for
    None (the untagged network)."""
    if not vlan:
        return frame
    return frame[:12] + TPID.to_bytes(2, "big") + (vlan & 0x0FFF).to_bytes(2, "big") + frame[12:]
