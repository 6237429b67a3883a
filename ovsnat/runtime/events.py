"""The events the shim (ovsnat.app) posts to its own event loop from its green threads (the
OVSDB watcher's batches, the clock, the once-a-second chores, the answers of the calls on
ovs-vswitchd), and the green threads of the watcher and the clock. The events are handled
one at a time like the framework's own, so every state change happens in one place."""

from __future__ import annotations

import logging
import time

from ovsnat.runtime import framework as fw

LOG = logging.getLogger("ovsnat")
TICK = 0.05  # how often the clock looks for deadlines that came


class EventOvsdb(fw.event.EventBase):
    """A batch from the OVSDB watcher (a Snapshot or Changes: ovsnat.model.rows)."""

    def __init__(self, batch):
        super().__init__()
        self.batch = batch


class EventTick(fw.event.EventBase):
    """A deadline of the host controller has come."""


class EventChores(fw.event.EventBase):
    """Once a second: the calls on ovs-vswitchd that are due, the status file."""


class EventResult(fw.event.EventBase):
    """What a call on ovs-vswitchd answered (ovsnat.runtime.calls)."""

    def __init__(self, result):
        super().__init__()
        self.result = result


def watch_ovsdb(watcher, remote: str) -> None:
    """The OVSDB watcher's green thread (it posts its batches itself): connected again after
    any failure, until it is stopped."""
    while True:
        try:
            watcher.connect()
            watcher.run_forever()
            return
        except Exception as e:  # OVSDB not up yet, or gone: retry
            LOG.warning("ovsnat: OVSDB %s: %s; retrying in 1 s", remote, e)
            fw.hub.sleep(1)


def clock(next_wakeup, post) -> None:
    """The clock's green thread: a tick when a deadline of the core has come
    (`next_wakeup()`), the chores once a second."""
    chores_at = time.time() + 1
    while True:
        fw.hub.sleep(TICK)
        now = time.time()
        wake = next_wakeup()
        if wake is not None and wake <= now:
            post(EventTick())
        if now >= chores_at:
            chores_at = now + 1
            post(EventChores())
