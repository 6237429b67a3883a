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
    """The main table's routes and the neighbours, as dumped and then as changed, and the
    echoes among the routes, kept as they change: a rack's hosts may hold tens of
    thousands, and a scan of them all per netlink message would stall the hub."""

    ranges: tuple[tuple[int, int], ...] = ()  # where an echo can be (bgp_announce)
    routes: dict = field(default_factory=dict)  # (prefix, table, metric) -> rt.Route
    neighbors: dict = field(default_factory=dict)  # (address, ifindex) -> rt.Neighbor
    echo_keys: dict = field(default_factory=dict)  # route key -> its echo's address
    dirty: set = field(default_factory=set)  # "hops", "echoes": changed since `take`

    @classmethod
    def of(cls, bgp: BgpSettings) -> KernelView:
        return cls(tuple((c.first, c.last) for c in bgp.announce))

    def apply(self, message: rt.Message) -> None:
        body = message.body
        if isinstance(body, rt.Route) and body.table == MAIN_TABLE:
            key = (body.prefix, body.table, body.priority)
            was = self.echo_keys.pop(key, None)
            if message.kind == rt.RTM_NEWROUTE:
                self.routes[key] = body
                echo = self._echo(body)
                if echo is not None:
                    self.echo_keys[key] = echo
                self.dirty.add("echoes" if echo or was else "hops")
            elif message.kind == rt.RTM_DELROUTE:
                self.routes.pop(key, None)
                self.dirty.add("echoes" if was else "hops")
        elif isinstance(body, rt.Neighbor):
            key = (body.ip, body.ifindex)
            if message.kind == rt.RTM_NEWNEIGH:
                self.neighbors[key] = body
            elif message.kind == rt.RTM_DELNEIGH:
                self.neighbors.pop(key, None)
            self.dirty.add("hops")

    def take(self) -> set:
        dirty, self.dirty = self.dirty, set()
        return dirty

    def _echo(self, route: rt.Route) -> str | None:
        """Another host's /32 as the ToRs pass it back: a BGP route inside the announced
        ranges. This host's own never shows: zebra prefers its import (distance 15) to
        the echo (20) and installs a blackhole of its own instead."""
        if route.protocol != RTPROT_BGP or route.prefix.prefixlen != 32:
            return None
        ip = int(route.prefix.ip)
        return str(route.prefix.ip) if any(a <= ip <= b for a, b in self.ranges) else None


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


def echoes(view: KernelView) -> EchoesSeen:
    """The other hosts' /32s the kernel holds now."""
    return EchoesSeen(frozenset(view.echo_keys.values()))


class NextHopWatch:
    def __init__(self, bgp: BgpSettings | None, post, namespace: str | None = None):
        self.bgp, self.post, self.namespace = bgp, post, namespace
        self.last: NextHops | None = None
        self.last_echoes: EchoesSeen | None = None
        self.echoes_owed = True  # the echoes changed since last posted (or never were)
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
            view = KernelView.of(self.bgp)
            self.echoes_owed = True  # a fresh dump: its echoes are the truth
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
        """Post what changed. The echoes only while a next hop is usable: with none, FRR
        is down and zebra took every route, the echoes with them, which says nothing about
        who holds a FIP (a HELD one would go live). They are posted when FRR is back."""
        dirty = view.take()
        if "hops" in dirty or self.last is None:
            hops = next_hops(view, self.bgp)
            if hops != self.last:
                self.last = hops
                self.post(hops)
        self.echoes_owed |= "echoes" in dirty
        if self.last.hops and self.echoes_owed:
            self.echoes_owed = False
            seen = echoes(view)
            if seen != self.last_echoes:
                self.last_echoes = seen
                self.post(seen)
