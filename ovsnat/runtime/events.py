"""The events the shim (ovsnat.app) posts to its own event loop from its green threads: the
OVSDB watcher's batches, the clock, the once-a-second chores, the answers of the calls on
ovs-vswitchd. Handled one at a time like the framework's own, so every state change
happens in one place."""

from __future__ import annotations

from ovsnat.runtime import framework as fw


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
