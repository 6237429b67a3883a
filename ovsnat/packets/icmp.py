"""ICMP errors through a stateless FIP: rewrite the quoted (inner) header too.

A FIP VM's traffic never touches conntrack, so an ICMP error about it (fragmentation needed,
time exceeded, parameter problem) still quotes the FIP in its inner header on the way in,
and the fixed IP on the way out. The VM's kernel would not match it to its socket, so path
MTU discovery and traceroute break. The switch sends such errors to the controller (metered),
which rewrites both headers here and sends the packet on. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import struct

from ovsnat.packets.checksum import adjust as _adjust
from ovsnat.packets.checksum import inet_checksum as _checksum

ERROR_TYPES = (3, 11, 12)  # destination unreachable, time exceeded, parameter problem
ETH_LEN = 14


def translate_error(
    frame: bytes,
    old_ip: bytes,
    new_ip: bytes,
    inbound: bool,
    eth_src: bytes,
    eth_dst: bytes,
    outer: bool = True,
    dec_ttl: bool = True,
) -> bytes | None:
    """Rewrite an ICMP error frame for a FIP VM.

    inbound: outer dst and inner src go old_ip (the FIP) -> new_ip (the fixed IP).
    outbound: outer src and inner dst go old_ip (the fixed IP) -> new_ip (the FIP).
    outer=False: the switch already translated the outer header (it has new_ip there); only
    the quoted one is rewritten. The TTL is decremented when this is the routed hop, every
    checksum is fixed, and the frame gets the given Ethernet addresses. Returns None for
    anything that is not such an error.
    """
    if len(frame) < ETH_LEN + 20 or frame[12:14] != b"\x08\x00":
        return None
    ip = bytearray(frame[ETH_LEN:])
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != 1 or len(ip) < ihl + 8 + 20 or ip[ihl] not in ERROR_TYPES or ip[8] <= 1:
        return None
    outer_field = 16 if inbound else 12  # dst or src
    if ip[outer_field : outer_field + 4] != (old_ip if outer else new_ip):
        return None
    inner = ihl + 8
    inner_ihl = (ip[inner] & 0x0F) * 4
    inner_field = inner + (12 if inbound else 16)  # quoted src or dst
    if ip[inner_field : inner_field + 4] != old_ip:
        return None
    # Quoted transport checksum (UDP 6, TCP 16 bytes in), when it was quoted and set.
    l4 = inner + inner_ihl
    proto = ip[inner + 9]
    offset = {17: 6, 6: 16}.get(proto)
    if offset is not None and len(ip) >= l4 + offset + 2:
        old_sum = struct.unpack_from("!H", ip, l4 + offset)[0]
        if not (proto == 17 and old_sum == 0):
            struct.pack_into("!H", ip, l4 + offset, _adjust(old_sum, old_ip, new_ip))
    ip[inner_field : inner_field + 4] = new_ip
    struct.pack_into("!H", ip, inner + 10, 0)
    struct.pack_into("!H", ip, inner + 10, _checksum(bytes(ip[inner : inner + inner_ihl])))
    total = struct.unpack_from("!H", ip, 2)[0]
    struct.pack_into("!H", ip, ihl + 2, 0)
    struct.pack_into("!H", ip, ihl + 2, _checksum(bytes(ip[ihl:total])))
    ip[outer_field : outer_field + 4] = new_ip
    if dec_ttl:
        ip[8] -= 1
    struct.pack_into("!H", ip, 10, 0)
    struct.pack_into("!H", ip, 10, _checksum(bytes(ip[:ihl])))
    return eth_dst + eth_src + frame[12:14] + bytes(ip)


TIME_EXCEEDED = 11


def time_exceeded(frame: bytes, src_ip: bytes, eth_src: bytes, eth_dst: bytes) -> bytes | None:
    """ICMP time exceeded in transit (type 11, code 0) for an IPv4 frame whose TTL ran out at
    this hop, from src_ip back to the frame's sender, quoting its IP header and the first 8
    bytes after it (RFC 792). None for what must not be answered (RFC 1812 4.3.2.7): an
    ICMP error, a fragment other than the first, a broadcast or multicast destination."""
    if len(frame) < ETH_LEN + 20 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[ETH_LEN:]
    ihl = (ip[0] & 0x0F) * 4
    frag_offset = struct.unpack_from("!H", ip, 6)[0] & 0x1FFF
    if ihl < 20 or len(ip) < ihl or frag_offset or ip[16] >= 224 or ip[19] == 255:
        return None
    if ip[9] == 1 and len(ip) > ihl and ip[ihl] in ERROR_TYPES:
        return None
    quoted = ip[: ihl + 8]
    body = bytearray(struct.pack("!BBHI", TIME_EXCEEDED, 0, 0, 0) + quoted)
    struct.pack_into("!H", body, 2, _checksum(bytes(body)))
    head = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, 1, 0, src_ip, ip[12:16])
    )
    struct.pack_into("!H", head, 10, _checksum(bytes(head)))
    return eth_dst + eth_src + b"\x08\x00" + bytes(head) + bytes(body)
