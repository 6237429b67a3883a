"""Carries out the core's Routes effects (bgp mode) in one green thread, in order.

Each effect is one batch on one rtnetlink socket (ovsnat.runtime.routes); its answer,
RoutesDone, names the routes the kernel refused and goes back to the core like every
other call's. The socket is opened at the first write and again after an error, so a
host in l2 mode never opens one.
"""

from __future__ import annotations

import logging

from ovsnat.core.effects import Routes, RoutesDone
from ovsnat.runtime import framework as fw
from ovsnat.runtime import routes

LOG = logging.getLogger("ovsnat")


class RouteWriter:
    def __init__(self, post, namespace: str | None = None):
        self.post, self.namespace = post, namespace
        self.queue = fw.hub.Queue()
        self.kernel: routes.Kernel | None = None

    def start(self) -> list:
        return [fw.hub.spawn(self._loop)]

    def run(self, item: Routes) -> None:
        self.queue.put(item)

    def _loop(self) -> None:
        while True:
            self.post(self.apply(self.queue.get()))

    def apply(self, item: Routes) -> RoutesDone:
        """One batch; every route of it failed when the socket itself did."""
        try:
            if self.kernel is None:
                self.kernel = routes.Kernel(routes.open_socket(self.namespace))
            failed = self.kernel.apply(item.add, item.delete)
        except Exception as e:  # the socket, or a bug: the core must hear back either way
            LOG.exception("ovsnat: writing %d routes", len(item.add) + len(item.delete))
            if self.kernel is not None:
                self.kernel.close()
            self.kernel = None
            return RoutesDone(item, (*item.add, *item.delete), f"{type(e).__name__}: {e}")
        if failed:
            LOG.error(
                "ovsnat: the kernel refused %d of %d routes, first %s",
                len(failed),
                len(item.add) + len(item.delete),
                failed[0],
            )
        keys = tuple((f.prefix, f.table) for f in failed)
        return RoutesDone(item, keys, str(failed[0]) if failed else "")
