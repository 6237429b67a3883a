"""bgp mode's writes to and reads from the kernel's routing tables, over rtnetlink.

ovsnat's routes are `blackhole <ip>/32 proto 250` in two tables that zebra imports (LIVE,
MOVED); FRR announces them (docs/bgp.md, section 3). One effect's routes go out back to
back on one socket, like `ip -batch`: 1,000 /32s are one write here and one BGP UPDATE on
the ToR. Each route is acked on its own, so a failure names the route and only it is
tried again. Reads: the tables' contents (a restart diffs against them and writes nothing
when nothing changed), the routes zebra installs (the echoes, the default's next hops)
and the neighbours (the ToRs' MACs), as dumps and as a subscription.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import netaddr

from ovsnat.runtime import rtnetlink as rt
from ovsnat.runtime.netns import socket_in

NETLINK_ROUTE = 0
BATCH = 200  # requests per send: their acks stay well inside the receive buffer
TIMEOUT = 5.0  # seconds the kernel has to answer a batch or a dump
RCVBUF = 1 << 20  # a 1,000-route dump, or a burst of changes, without ENOBUFS
SO_RCVBUFFORCE = 33  # socket(7); not in Python's socket module

Key = tuple[netaddr.IPNetwork, int]  # (prefix, table)


@dataclass(frozen=True)
class Failed:
    """A route the kernel refused, with its reason."""

    prefix: netaddr.IPNetwork
    table: int
    errno: int

    def __str__(self) -> str:
        return f"{self.prefix} table {self.table}: {errno.errorcode.get(self.errno, self.errno)}"


def open_socket(namespace: str | None = None, groups: int = 0) -> socket.socket:
    """An rtnetlink socket in this process's namespace (or `namespace`'s), subscribed to
    `groups` (rtnetlink.RTMGRP_*) when given."""
    family, kind = socket.AF_NETLINK, socket.SOCK_RAW
    if namespace:
        sock = socket_in(namespace, family, kind, NETLINK_ROUTE)
    else:
        sock = socket.socket(family, kind, NETLINK_ROUTE)
    try:
        # FORCE: past net.core.rmem_max (root only; else the capped size)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, groups))
        sock.settimeout(TIMEOUT)
    except OSError:
        sock.close()
        raise
    return sock


class Kernel:
    """Requests on one socket: writes with their acks, and dumps."""

    def __init__(self, sock: socket.socket):
        self.sock, self.seq = sock, 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def apply(self, add: Iterable[Key], delete: Iterable[Key]) -> list[Failed]:
        """Adds (or replaces) then deletes blackhole routes; returns those that failed.
        A route already gone is deleted, not failed (the tables are level-triggered)."""
        requests = [(rt.RTM_NEWROUTE, k) for k in add] + [(rt.RTM_DELROUTE, k) for k in delete]
        failed = []
        for start in range(0, len(requests), BATCH):
            failed += self._batch(requests[start : start + BATCH])
        return failed

    def routes(self) -> list[rt.Route]:
        """Every IPv4 route of every table."""
        return [m.body for m in self._dump(rt.RTM_GETROUTE) if isinstance(m.body, rt.Route)]

    def neighbors(self) -> list[rt.Neighbor]:
        return [m.body for m in self._dump(rt.RTM_GETNEIGH) if isinstance(m.body, rt.Neighbor)]

    def _batch(self, requests: list[tuple[int, Key]]) -> list[Failed]:
        waiting: dict[int, tuple[int, Key]] = {}
        data = b""
        for kind, (prefix, table) in requests:
            seq = self._next()
            waiting[seq] = (kind, (prefix, table))
            data += rt.blackhole(kind, seq, prefix, table)
        self.sock.sendall(data)
        failed = []
        while waiting:
            for message in rt.parse(self.sock.recv(1 << 16)):
                if not isinstance(message.body, rt.Ack) or message.seq not in waiting:
                    continue
                kind, (prefix, table) = waiting.pop(message.seq)
                code = message.body.errno
                if code and not (kind == rt.RTM_DELROUTE and code == errno.ESRCH):
                    failed.append(Failed(prefix, table, code))
        return failed

    def _dump(self, kind: int) -> list[rt.Message]:
        seq = self._next()
        self.sock.sendall(rt.dump(kind, seq))
        out = []
        while True:
            for message in rt.parse(self.sock.recv(1 << 16)):
                if message.seq != seq:
                    continue
                if message.kind == rt.NLMSG_DONE:
                    return out
                if isinstance(message.body, rt.Ack) and message.body.errno:
                    raise OSError(message.body.errno, f"rtnetlink dump {kind}")
                out.append(message)

    def _next(self) -> int:
        self.seq = self.seq % 0x7FFFFFFF + 1
        return self.seq


def ours(routes: Iterable[rt.Route], tables: Iterable[int]) -> set[Key]:
    """ovsnat's own routes (protocol 250, blackhole) in the given tables."""
    wanted = set(tables)
    return {
        (r.prefix, r.table)
        for r in routes
        if r.table in wanted and r.protocol == rt.PROTO_OVSNAT and r.kind == rt.RTN_BLACKHOLE
    }
