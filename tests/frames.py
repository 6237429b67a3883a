"""Raw frames for tests, byte by byte: any header length, any length field, any option, so
tests can send what no well-behaved stack would."""

from __future__ import annotations

import struct


def mac(n: int) -> bytes:
    """02:00:0a:00:00:NN, the lab's and the unit tests' VM MACs."""
    return bytes([2, 0, 10, 0, 0, n])


def ipv4(
    src: bytes,
    dst: bytes,
    proto: int,
    payload: bytes,
    *,
    ttl: int = 64,
    ihl: int = 5,
    frag: int = 0,
    total: int | None = None,
) -> bytes:
    """An IPv4 header (checksum left 0) with `ihl` words (zero options) and a total length
    that may lie."""
    options = bytes(max(0, ihl - 5) * 4)
    size = 20 + len(options) + len(payload) if total is None else total
    head = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | (ihl & 0x0F), 0, size & 0xFFFF, 0, frag, ttl, proto, 0, src, dst
    )
    return head + options + payload


def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def dhcp_request(chaddr: bytes, options: bytes, *, ihl: int = 5, magic: bool = True) -> bytes:
    """A broadcast client message from chaddr whose options are exactly `options`."""
    bootp = struct.pack(
        "!BBBBIHH4s4s4s4s16s",
        1,
        1,
        6,
        0,
        0x1234,
        0,
        0x8000,
        bytes(4),
        bytes(4),
        bytes(4),
        bytes(4),
        chaddr.ljust(16, b"\0"),
    )
    bootp += bytes(192) + (b"\x63\x82\x53\x63" if magic else b"") + options
    udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp
    return eth(b"\xff" * 6, chaddr, 0x0800, ipv4(bytes(4), b"\xff" * 4, 17, udp, ihl=ihl))
