"""bgp mode: which ToRs the kernel routes through, watched over rtnetlink (docs/bgp.md,
section 4).

FRR decides which ToRs are usable: zebra installs the accepted routes (the default) with
one next hop per ToR whose session is up, and drops a ToR's next hop when BFD says its
control plane died. The kernel resolves each next hop's MAC. The select group must follow
both, so this green thread keeps a view of the main table's accepted routes and of the
neighbours, and posts NextHops (ToR address -> MAC) to the core whenever the set changes.
Its dump also gives the core ovsnat's own routes (OwnRoutes): the announcer writes
nothing before it knows what the kernel holds. The same view gives the echoes
(EchoesSeen): the other hosts' /32s, which say whether a FIP plugged here is held
elsewhere (docs/bgp.md, section 2).
A ToR whose link loses carrier is skipped by the switch itself (the bucket's watch_port)
before any of this is heard.

The subscription is opened before the dump, so no change falls between them; a socket
error or an overrun (ENOBUFS) starts over with a fresh dump after RETRY seconds.
`KernelView` and `next_hops` are pure, unit-tested without a kernel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ovsnat.core.effects import EchoesSeen, NextHops, OwnRoutes
from ovsnat.model.bgp import BgpSettings
from ovsnat.runtime import framework as fw
from ovsnat.runtime import routes
from ovsnat.runtime import rtnetlink as rt

LOG = logging.getLogger("ovsnat")
MAIN_TABLE = 254
RTPROT_BGP = 186  # zebra installs BGP's routes with it (rtnetlink's RTPROT_BGP)
RETRY = 1.0  # seconds before a fresh dump after a failure


@dataclass
class KernelView:
    """The main table's routes and the neighbours, as dumped and then as changed."""

    routes: dict = field(default_factory=dict)  # (prefix, table, metric) -> rt.Route
    neighbors: dict = field(default_factory=dict)  # (address, ifindex) -> rt.Neighbor

    def apply(self, message: rt.Message) -> None:
        body = message.body
        if isinstance(body, rt.Route) and body.table == MAIN_TABLE:
            key = (body.prefix, body.table, body.priority)
            if message.kind == rt.RTM_NEWROUTE:
                self.routes[key] = body
            elif message.kind == rt.RTM_DELROUTE:
                self.routes.pop(key, None)
        elif isinstance(body, rt.Neighbor):
            key = (body.ip, body.ifindex)
            if message.kind == rt.RTM_NEWNEIGH:
                self.neighbors[key] = body
            elif message.kind == rt.RTM_DELNEIGH:
                self.neighbors.pop(key, None)


def next_hops(view: KernelView, bgp: BgpSettings) -> NextHops:
    """The ToRs (link peers) that an accepted route goes through and whose MAC the kernel
    holds in a usable state, sorted by address. Of two routes to one prefix (another
    metric: a management default beside zebra's), only the one the kernel uses counts."""
    peers = {link.peer for link in bgp.links}
    used: dict = {}  # prefix -> the route with the lowest metric
    for route in view.routes.values():
        if route.prefix in bgp.accept:
            best = used.get(route.prefix)
            if best is None or route.priority < best.priority:
                used[route.prefix] = route
    via = {g for route in used.values() for g in route.gateways if g in peers}
    macs = {n.ip: n.mac for n in view.neighbors.values() if n.ip in via and n.usable}
    return NextHops(tuple(sorted((str(ip), mac) for ip, mac in macs.items())))


def echoes(view: KernelView, bgp: BgpSettings) -> EchoesSeen:
    """The other hosts' /32s as the ToRs pass them back: BGP routes in the main table
    inside the announced ranges. This host's own announcements never show: zebra prefers
    its import (distance 15) to the echo (20) and installs a blackhole of its own."""
    return EchoesSeen(
        frozenset(
            str(route.prefix.ip)
            for route in view.routes.values()
            if route.protocol == RTPROT_BGP
            and route.prefix.prefixlen == 32
            and any(route.prefix in cidr for cidr in bgp.announce)
        )
    )


class NextHopWatch:
    def __init__(self, bgp: BgpSettings | None, post, namespace: str | None = None):
        self.bgp, self.post, self.namespace = bgp, post, namespace
        self.last: NextHops | None = None
        self.last_echoes: EchoesSeen | None = None
        self.stopped = False

    def start(self) -> list:
        """A green thread in bgp mode; nothing in l2 mode."""
        return [fw.hub.spawn(self._loop)] if self.bgp is not None else []

    def _loop(self) -> None:
        while not self.stopped:
            try:
                self.watch()
            except OSError as e:  # the socket (ENOBUFS: changes were lost): a fresh dump
                LOG.error("ovsnat: watching the kernel's next hops: %s: %s", type(e).__name__, e)
            except Exception:  # a bug: said whole, then a fresh dump
                LOG.exception("ovsnat: watching the kernel's next hops")
            fw.hub.sleep(RETRY)

    def stop(self) -> None:
        """watch() returns within a second."""
        self.stopped = True

    def watch(self) -> None:
        """Dump, then follow the changes until stopped (or an error raises)."""
        groups = rt.RTMGRP_IPV4_ROUTE | rt.RTMGRP_NEIGH
        with routes.Kernel(routes.open_socket(self.namespace, groups)) as changes:
            changes.sock.settimeout(1.0)  # to see `stopped`; changes wake it at once
            view = KernelView()
            with routes.Kernel(routes.open_socket(self.namespace)) as kernel:
                dumped = kernel.routes()
                for body in (*dumped, *kernel.neighbors()):
                    kind = rt.RTM_NEWROUTE if isinstance(body, rt.Route) else rt.RTM_NEWNEIGH
                    view.apply(rt.Message(kind, 0, 0, body))
            tables = (self.bgp.table, self.bgp.moved_table)
            self.post(OwnRoutes(frozenset(routes.ours(dumped, tables))))
            self._tell(view)
            while not self.stopped:
                try:
                    data = changes.sock.recv(1 << 16)
                except TimeoutError:
                    continue
                for message in rt.parse(data):
                    view.apply(message)
                self._tell(view)

    def _tell(self, view: KernelView) -> None:
        hops, seen = next_hops(view, self.bgp), echoes(view, self.bgp)
        if hops != self.last:
            self.last = hops
            self.post(hops)
        if seen != self.last_echoes:
            self.last_echoes = seen
            self.post(seen)
