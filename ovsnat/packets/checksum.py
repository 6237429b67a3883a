"""The Internet checksum (RFC 1071) and its incremental update (RFC 1624): what the
controller needs to build or rewrite IPv4, UDP and ICMP headers by hand."""

from __future__ import annotations

import struct


def inet_checksum(data: bytes) -> int:
    """One's complement of the one's complement sum of 16-bit words (odd length padded)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def adjust(checksum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 incremental update of a checksum after `old` (even length) became `new`."""
    total = ~checksum & 0xFFFF
    for i in range(0, len(old), 2):
        total += (~int.from_bytes(old[i : i + 2], "big") & 0xFFFF) + int.from_bytes(
            new[i : i + 2], "big"
        )
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
