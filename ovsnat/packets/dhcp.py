"""DHCP on the wire (RFC 2131/2132): read a VM's request, write the server's answer.

A VM controls every byte of the frames that reach the controller, so this reader is total:
any input gives a `DhcpRequest` or a `Refused` with a reason from a small fixed vocabulary
(counted per reason in status and metrics), never an exception. It checks what a server
relies on: an untagged IPv4 frame whose header and total length fit the frame, not a
fragment, UDP 68 -> 67 whose length fits the datagram, a BOOTREQUEST for Ethernet with the
magic cookie, options that are well formed up to their end (a message type of exactly one
byte; a requested address or server identifier of exactly four). The answer is built
byte by byte with correct IPv4 and UDP checksums. Pure: no framework, no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ovsnat.packets.checksum import inet_checksum

CLIENT_PORT, SERVER_PORT = 68, 67
MAGIC = b"\x63\x82\x53\x63"
BOOTP_LEN = 236  # the fixed part, up to (not including) the magic cookie
OPT_PAD, OPT_END = 0, 255
OPT_TYPE, OPT_REQUESTED, OPT_SERVER = 53, 50, 54
ETH, IPV4_MIN, UDP_LEN = 14, 20, 8
_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s")  # op .. chaddr (44 bytes)


@dataclass(frozen=True)
class Refused:
    """Why a frame is not a DHCP request ovsnat answers (a counter name's suffix)."""

    reason: str


@dataclass(frozen=True)
class DhcpRequest:
    """What the server reads of a client message; addresses as 4 raw bytes."""

    xid: int
    flags: int
    ciaddr: bytes
    giaddr: bytes
    chaddr: str  # the client's MAC, lower case with colons
    kind: int | None  # option 53; None: no message type (plain BOOTP)
    requested: bytes | None = None  # option 50
    server: bytes | None = None  # option 54

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & 0x8000)


def udp_ports(frame: bytes) -> tuple[int, int] | None:
    """(source, destination) ports of an untagged IPv4 UDP frame's first fragment, or None."""
    ip = _ipv4(frame)
    if isinstance(ip, Refused) or ip[0] != 17 or ip[2]:
        return None
    start = ETH + ip[1]
    return struct.unpack_from("!HH", frame, start) if len(frame) >= start + 4 else None


def parse_request(frame: bytes) -> DhcpRequest | Refused:
    """The client message in `frame`, or why it is refused."""
    ip = _ipv4(frame)
    if isinstance(ip, Refused):
        return ip
    proto, ihl, fragment, end = ip
    if proto != 17:
        return Refused("not_udp")
    if fragment:
        return Refused("fragment")
    udp = ETH + ihl
    if end - udp < UDP_LEN:
        return Refused("truncated_udp")
    sport, dport, length = struct.unpack_from("!HHH", frame, udp)
    if (sport, dport) != (CLIENT_PORT, SERVER_PORT):
        return Refused("not_dhcp_request")
    if length < UDP_LEN or udp + length > end:
        return Refused("bad_udp_length")
    return _bootp(frame[udp + UDP_LEN : udp + length])


def _ipv4(frame: bytes):
    """(protocol, header length, is a fragment, end of the datagram) or Refused."""
    if len(frame) < ETH + IPV4_MIN:
        return Refused("short_frame")
    if frame[12:14] != b"\x08\x00":
        return Refused("not_ipv4")
    version, ihl = frame[ETH] >> 4, (frame[ETH] & 0x0F) * 4
    total = struct.unpack_from("!H", frame, ETH + 2)[0]
    if version != 4 or ihl < IPV4_MIN or total < ihl or ETH + total > len(frame):
        return Refused("bad_ip_header")
    frag = struct.unpack_from("!H", frame, ETH + 6)[0]
    return frame[ETH + 9], ihl, bool(frag & 0x3FFF), ETH + total


def _bootp(body: bytes) -> DhcpRequest | Refused:
    if len(body) < BOOTP_LEN + len(MAGIC):
        return Refused("truncated_bootp")
    op, htype, hlen, _hops, xid, _secs, flags, ciaddr, _yi, _si, giaddr, chaddr = (
        _BOOTP.unpack_from(body)
    )
    if op != 1 or htype != 1 or hlen != 6:
        return Refused("not_ethernet_request")
    if body[BOOTP_LEN : BOOTP_LEN + 4] != MAGIC:
        return Refused("no_magic_cookie")
    options = _options(body[BOOTP_LEN + 4 :])
    if isinstance(options, Refused):
        return options
    kind, requested, server = (
        options.get(OPT_TYPE),
        options.get(OPT_REQUESTED),
        options.get(OPT_SERVER),
    )
    if kind is not None and len(kind) != 1:
        return Refused("bad_message_type")
    for value in (requested, server):
        if value is not None and len(value) != 4:
            return Refused("bad_address_option")
    return DhcpRequest(
        xid,
        flags,
        ciaddr,
        giaddr,
        chaddr[:6].hex(":"),
        kind[0] if kind is not None else None,
        requested,
        server,
    )


def _options(data: bytes) -> dict[int, bytes] | Refused:
    """Tag -> value up to the end option; a length that runs past the data is refused (a
    client that sends no end option is tolerated when its last option is whole)."""
    out: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        tag = data[i]
        if tag == OPT_END:
            return out
        if tag == OPT_PAD:
            i += 1
            continue
        if i + 1 >= len(data) or i + 2 + data[i + 1] > len(data):
            return Refused("truncated_option")
        out.setdefault(tag, data[i + 2 : i + 2 + data[i + 1]])
        i += 2 + data[i + 1]
    return out


def build_reply(
    request: DhcpRequest,
    *,
    yiaddr: bytes,
    options: list[tuple[int, bytes]],
    eth_src: bytes,
    eth_dst: bytes,
    ip_src: bytes,
    ip_dst: bytes,
) -> bytes:
    """A BOOTREPLY to `request` with these options (each (tag, value), value <= 255 bytes),
    in an Ethernet/IPv4/UDP frame from the server port to the client port."""
    opts = b"".join(bytes([tag, len(value)]) + value for tag, value in options)
    chaddr = bytes.fromhex(request.chaddr.replace(":", "")).ljust(16, b"\0")
    bootp = (
        _BOOTP.pack(
            2,
            1,
            6,
            0,
            request.xid,
            0,
            request.flags,
            request.ciaddr,
            yiaddr,
            bytes(4),
            request.giaddr,
            chaddr,
        )
        + bytes(192)
        + MAGIC
        + opts
        + bytes([OPT_END])
    )
    bootp += bytes(max(0, 300 - len(bootp)))  # BOOTP's minimum; some clients need it
    udp_len = UDP_LEN + len(bootp)
    pseudo = ip_src + ip_dst + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", SERVER_PORT, CLIENT_PORT, udp_len, 0) + bootp
    udp_sum = inet_checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", udp_sum) + udp[8:]
    head = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, IPV4_MIN + udp_len, 0, 0, 64, 17, 0, ip_src, ip_dst)
    )
    struct.pack_into("!H", head, 10, inet_checksum(bytes(head)))
    return eth_dst + eth_src + b"\x08\x00" + bytes(head) + udp
