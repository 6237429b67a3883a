"""ARP and RARP frames: read what the controller is shown, build what it sends.

Pure and small on purpose: the controller only ever needs an ARP's five addresses and
whether a frame is QEMU's RARP, and it sends only gratuitous ARPs, RFC 5227 probes and
requests for the gateway. Parsing them here keeps the host controller free of the OpenFlow
framework and lets unit tests feed it plain bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ETH_ARP, ETH_RARP = 0x0806, 0x8035
REQUEST, REPLY = 1, 2
BROADCAST = "ff:ff:ff:ff:ff:ff"
ZERO_MAC = "00:00:00:00:00:00"
ZERO_IP = "0.0.0.0"
_BODY = struct.Struct("!HHBBH6s4s6s4s")


@dataclass(frozen=True)
class Arp:
    """One ARP (or RARP) frame as the controller sees it; addresses as text."""

    op: int
    sha: str
    spa: str
    tha: str
    tpa: str
    eth_src: str
    rarp: bool = False

    @property
    def is_probe(self) -> bool:
        """RFC 5227 probe: a request with sender IP 0.0.0.0 (someone checks an address)."""
        return self.op == REQUEST and self.spa == ZERO_IP

    @property
    def is_announcement(self) -> bool:
        """A gratuitous ARP (sender IP = target IP) or a RARP: "I am here now"."""
        return self.rarp or (self.spa == self.tpa and self.spa != ZERO_IP)


def _mac(raw: bytes) -> str:
    return raw.hex(":")


def _ip(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def parse(frame: bytes) -> Arp | None:
    """The ARP or RARP in an untagged Ethernet frame, or None for anything else."""
    if len(frame) < 14 + _BODY.size:
        return None
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype not in (ETH_ARP, ETH_RARP):
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _BODY.unpack_from(frame, 14)
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
        return None
    return Arp(
        op, _mac(sha), _ip(spa), _mac(tha), _ip(tpa), _mac(frame[6:12]), rarp=ethertype == ETH_RARP
    )


def is_unicast(mac: str) -> bool:
    """A MAC a host can have: not multicast or broadcast (group bit), not all zeros."""
    return mac != ZERO_MAC and not int(mac[:2], 16) & 1


def build(
    op: int, sha: str, spa: str, tpa: str, tha: str = ZERO_MAC, eth_dst: str = BROADCAST
) -> bytes:
    """An ARP frame sent from sha (the Ethernet source is the sender hardware address)."""
    body = _BODY.pack(1, 0x0800, 6, 4, op, _raw_mac(sha), _raw_ip(spa), _raw_mac(tha), _raw_ip(tpa))
    return _raw_mac(eth_dst) + _raw_mac(sha) + ETH_ARP.to_bytes(2, "big") + body


def garp(mac: str, ip: str) -> bytes:
    """A gratuitous ARP request: ip is at mac (switches learn mac's port from it)."""
    return build(REQUEST, mac, ip, ip)


def probe(mac: str, ip: str) -> bytes:
    """An RFC 5227 probe from mac: does anyone use ip? Sender IP 0.0.0.0, so nobody's ARP
    cache learns anything from it."""
    return build(REQUEST, mac, ZERO_IP, ip)


def _raw_mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _raw_ip(text: str) -> bytes:
    return bytes(int(b) for b in text.split("."))
