"""bgp mode's conversation with the kernel, as the shim sees it: one object that writes
the core's Routes (ovsnat.runtime.route_writer) and watches the next hops the select
group follows (ovsnat.runtime.next_hops). In l2 mode neither opens a socket."""

from __future__ import annotations

from ovsnat.core.effects import Routes
from ovsnat.model.bgp import BgpSettings
from ovsnat.runtime.next_hops import NextHopWatch
from ovsnat.runtime.route_writer import RouteWriter


class BgpKernel:
    def __init__(self, bgp: BgpSettings | None, post, namespace: str | None = None):
        self.writer = RouteWriter(post, namespace)
        self.watch = NextHopWatch(bgp, post, namespace)

    def start(self) -> list:
        return self.writer.start() + self.watch.start()

    def run(self, item: Routes) -> None:
        self.writer.run(item)
