"""rtnetlink's few messages that bgp mode needs, as bytes and back (no socket here).

ovsnat feeds FRR by writing blackhole /32s into two kernel tables that zebra imports, and
learns who else holds a FIP (the echoes) and which ToRs are alive (the default route's
next hops, their MACs) from the kernel's own tables (docs/bgp.md, section 3). That is five
message types and a handful of attributes of a fixed-format API (rtnetlink(7)), written
here with `struct` rather than a new dependency (pyroute2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import netaddr

# netlink(7), rtnetlink(7)
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
RTMGRP_NEIGH, RTMGRP_IPV4_ROUTE = 0x4, 0x40
AF_INET = 2
RTN_UNICAST, RTN_BLACKHOLE = 1, 6
RT_SCOPE_UNIVERSE = 0
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 9, 15
NDA_DST, NDA_LLADDR = 1, 2
NUD_REACHABLE, NUD_STALE, NUD_DELAY, NUD_PROBE, NUD_PERMANENT = 0x2, 0x4, 0x8, 0x10, 0x80
NUD_USABLE = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT

PROTO_OVSNAT = 250  # rtm_protocol of ovsnat's routes (`ip route ... proto 250`)

HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
# rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTMSG = struct.Struct("=BBBBBBBBI")
NDMSG = struct.Struct("=BBHiHBB")  # family, pad, pad, ifindex, state, flags, type
RTA = struct.Struct("=HH")  # len, type
RTNH = struct.Struct("=HBBi")  # rtnexthop: len, flags, hops, ifindex
RTNH_DOWN = 0x1 | 0x10  # RTNH_F_DEAD, RTNH_F_LINKDOWN: a hop the kernel does not use


@dataclass(frozen=True)
class Route:
    """An IPv4 route as the kernel reports it (the fields bgp mode reads)."""

    prefix: netaddr.IPNetwork
    table: int
    protocol: int
    kind: int  # RTN_*
    gateways: tuple[netaddr.IPAddress, ...] = ()  # live next hops (dead or link-down left out)
    priority: int = 0  # the metric: of two routes to one prefix, the lower is used


@dataclass(frozen=True)
class Neighbor:
    ip: netaddr.IPAddress
    mac: netaddr.EUI | None
    ifindex: int
    state: int  # NUD_*

    @property
    def usable(self) -> bool:
        return self.mac is not None and bool(self.state & NUD_USABLE)


@dataclass(frozen=True)
class Ack:
    """The answer to one request: errno 0 is success."""

    seq: int
    errno: int


@dataclass(frozen=True)
class Message:
    """One message read: its type and flags, and what it says (None: not ours to read)."""

    kind: int
    flags: int
    seq: int
    body: Route | Neighbor | Ack | None


def blackhole(kind: int, seq: int, prefix: netaddr.IPNetwork, table: int) -> bytes:
    """RTM_NEWROUTE (added or replaced in place) or RTM_DELROUTE of `blackhole prefix
    table T proto 250`, asking for an ack."""
    flags = NLM_F_REQUEST | NLM_F_ACK
    if kind == RTM_NEWROUTE:
        flags |= NLM_F_CREATE | NLM_F_REPLACE
    rtm = RTMSG.pack(
        AF_INET, prefix.prefixlen, 0, 0, min(table, 252), PROTO_OVSNAT,
        RT_SCOPE_UNIVERSE, RTN_BLACKHOLE, 0,
    )  # fmt: skip
    attrs = _attr(RTA_DST, prefix.network.packed) + _attr(RTA_TABLE, struct.pack("=I", table))
    return _message(kind, flags, seq, rtm + attrs)


def dump(kind: int, seq: int) -> bytes:
    """A dump request for every IPv4 route (RTM_GETROUTE) or neighbour (RTM_GETNEIGH)."""
    if kind == RTM_GETROUTE:
        body = RTMSG.pack(AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
    else:
        body = NDMSG.pack(AF_INET, 0, 0, 0, 0, 0, 0)
    return _message(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def parse(data: bytes) -> list[Message]:
    """Every message in one read; a truncated or malformed one ends the list (the kernel
    never sends one: this is defence, not a case to serve)."""
    out, offset = [], 0
    while offset + HEADER.size <= len(data):
        length, kind, flags, seq, _pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > len(data):
            break
        payload = data[offset + HEADER.size : offset + length]
        out.append(Message(kind, flags, seq, _body(kind, seq, payload)))
        offset += _align(length)
    return out


def _body(kind: int, seq: int, payload: bytes) -> Route | Neighbor | Ack | None:
    if kind == NLMSG_ERROR and len(payload) >= 4:
        return Ack(seq, -struct.unpack_from("=i", payload)[0])
    if kind in (RTM_NEWROUTE, RTM_DELROUTE) and len(payload) >= RTMSG.size:
        return _route(payload)
    if kind in (RTM_NEWNEIGH, RTM_DELNEIGH) and len(payload) >= NDMSG.size:
        return _neighbor(payload)
    return None


def _route(payload: bytes) -> Route | None:
    family, dst_len, _s, _t, table, proto, _sc, kind, _f = RTMSG.unpack_from(payload)
    if family != AF_INET:
        return None
    attrs = _attrs(payload[RTMSG.size :])
    if len(attrs.get(RTA_TABLE, b"")) == 4:  # tables above 255 live only here
        table = struct.unpack("=I", attrs[RTA_TABLE])[0]
    dst = attrs.get(RTA_DST, bytes(4))
    if len(dst) != 4 or dst_len > 32:
        return None
    gateways = _gateways(attrs)
    metric = attrs.get(RTA_PRIORITY, b"")
    priority = struct.unpack("=I", metric)[0] if len(metric) == 4 else 0
    prefix = netaddr.IPNetwork(f"{netaddr.IPAddress(int.from_bytes(dst, 'big'))}/{dst_len}")
    return Route(prefix, table, proto, kind, gateways, priority)


def _gateways(attrs: dict[int, bytes]) -> tuple[netaddr.IPAddress, ...]:
    if len(attrs.get(RTA_GATEWAY, b"")) == 4:
        return (netaddr.IPAddress(int.from_bytes(attrs[RTA_GATEWAY], "big")),)
    hops, data = [], attrs.get(RTA_MULTIPATH, b"")
    while len(data) >= RTNH.size:
        length, flags = RTNH.unpack_from(data)[:2]
        if length < RTNH.size or length > len(data):
            break
        gw = _attrs(data[RTNH.size : length]).get(RTA_GATEWAY, b"")
        if len(gw) == 4 and not flags & RTNH_DOWN:
            hops.append(netaddr.IPAddress(int.from_bytes(gw, "big")))
        data = data[_align(length) :]
    return tuple(hops)


def _neighbor(payload: bytes) -> Neighbor | None:
    family, _p1, _p2, ifindex, state, _flags, _type = NDMSG.unpack_from(payload)
    attrs = _attrs(payload[NDMSG.size :])
    dst, mac = attrs.get(NDA_DST, b""), attrs.get(NDA_LLADDR, b"")
    if family != AF_INET or len(dst) != 4:
        return None
    eui = netaddr.EUI(int.from_bytes(mac, "big")) if len(mac) == 6 else None
    return Neighbor(netaddr.IPAddress(int.from_bytes(dst, "big")), eui, ifindex, state)


def _attrs(data: bytes) -> dict[int, bytes]:
    out, offset = {}, 0
    while offset + RTA.size <= len(data):
        length, kind = RTA.unpack_from(data, offset)
        if length < RTA.size or offset + length > len(data):
            break
        out[kind & 0x3FFF] = data[offset + RTA.size : offset + length]  # NLA_F_* bits off
        offset += _align(length)
    return out


def _attr(kind: int, value: bytes) -> bytes:
    raw = RTA.pack(RTA.size + len(value), kind) + value
    return raw + bytes(_align(len(raw)) - len(raw))


def _message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return HEADER.pack(HEADER.size + len(body), kind, flags, seq, 0) + body


def _align(n: int) -> int:
    return (n + 3) & ~3
