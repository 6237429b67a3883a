"""The host controller's calls on ovs-vswitchd, run by the shim in green threads.

The core asks for them as values (ovsnat.core.effects: ReadConntrack, Probe,
ZoneLimits) and gets each answer back through its event loop, as a plain call
with `now` (ovsnat.app posts it as an event). Nothing here waits inside an event handler:
a 10,000-entry conntrack dump is read in its own green thread and tallied a chunk of lines
at a time, yielding between chunks, so the controller's other green threads (the switch
connection, the OVSDB watcher, the metrics) and its event handlers keep running. Zone
limits are applied one ZoneLimits after another, in the order the core gave them.

Every call answers, whatever happens in it: an unexpected exception is logged and
answered as a failure, so the core never waits for an answer that will not come.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from ovsnat.core.conntrack import Tally
from ovsnat.core.effects import (
    FlushConntrack,
    Flushed,
    Probe,
    Probed,
    ReadConntrack,
    Reading,
    ZoneLimits,
    ZoneLimitsDone,
)
from ovsnat.runtime import dpctl
from ovsnat.runtime import framework as fw

LOG = logging.getLogger("ovsnat")
CHUNK = 100  # conntrack lines tallied between two yields (well under 1 ms)
READ_TIMEOUT = 10.0  # seconds ovs-vswitchd has to dump its conntrack


class Calls:
    def __init__(self, target: dpctl.Target, post):
        self.target, self.post = target, post
        self.queue = fw.hub.Queue()

    def start(self) -> list:
        return [fw.hub.spawn(self._apply_limits)]

    def run(self, item: ZoneLimits | FlushConntrack | ReadConntrack | Probe) -> None:
        """Start one of these calls; its answer is posted back when it is done."""
        if isinstance(item, (ZoneLimits, FlushConntrack)):
            self.queue.put(item)
        elif isinstance(item, ReadConntrack):
            fw.hub.spawn(self._answer, self._read, item, Reading(False))
        elif isinstance(item, Probe):
            fw.hub.spawn(self._answer, self._probe, item, Probed(False, ""))
        else:
            raise TypeError(f"not a call on ovs-vswitchd: {item!r}")

    def _answer(self, call, item, failed) -> None:
        try:
            result = call(item)
        except Exception as e:  # a bug here must not leave the core waiting
            LOG.exception("ovsnat: calling ovs-vswitchd for %s", item)
            result = dataclasses.replace(failed, error=f"{type(e).__name__}: {e}")
        self.post(result)

    def _read(self, item: ReadConntrack) -> Reading:
        t0 = time.monotonic()
        answer = dpctl.appctl(self.target, "dpctl/dump-conntrack", timeout=READ_TIMEOUT)
        if not answer.ok:
            return Reading(False, answer.error, seconds=time.monotonic() - t0)
        lines = answer.out.splitlines()
        tally = Tally(item.pat_zone, item.snat_ip)
        for i in range(0, len(lines), CHUNK):
            tally.feed(lines[i : i + CHUNK])
            fw.hub.sleep(0)
        return tally.reading(seconds=time.monotonic() - t0)

    def _probe(self, item: Probe) -> Probed:
        path, _ = self.target.resolve()
        answer = dpctl.probe(self.target, item.bridge)
        return Probed(answer.ok, path or self.target.describe(), answer.error)

    def _apply_limits(self) -> None:
        while True:
            item = self.queue.get()
            if isinstance(item, FlushConntrack):
                self._answer(self._flush, item, Flushed(item, len(item.flushes)))
                continue
            self._answer(
                self._limits,
                item,
                ZoneLimitsDone(item, tuple([z for z, _ in item.set] + list(item.delete))),
            )

    def _flush(self, item: FlushConntrack) -> Flushed:
        failed, error = dpctl.flush_conntrack(self.target, item.flushes)
        return Flushed(item, failed, error)

    def _limits(self, limits: ZoneLimits) -> ZoneLimitsDone:
        failed, error = dpctl.set_zone_limits(self.target, limits)
        return ZoneLimitsDone(limits, failed, error)
