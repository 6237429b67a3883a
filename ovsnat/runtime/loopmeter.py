"""The meter of the shim's own event loop (ovsnat.app): framework plumbing only.

It answers "can anything stall the controller?" from inside the process:
- `loop_max_stall_ms`: the longest time one green thread ran without yielding. Every other
  green thread waited that long: the OpenFlow connection's HELLO and echo replies, the
  OVSDB watcher, the metrics server. Measured at every switch between green threads
  (framework.trace_switches), so it is exact and costs nothing while the process idles.
- `handler_max_ms`: the longest run of one of the app's event handlers, wall time (a
  handler that waits on something, even cooperatively, holds up every event queued
  behind it: packet-ins, barriers, OVSDB changes).
Both are the worst of the last 30 to 60 s; the status also lists the recent ones over
5 ms with their time (`loop_stalls`, `slow_handlers`), which is what bench/stall.py reads.
"""

from __future__ import annotations

import time
from collections import deque

from ovsnat.runtime import framework as fw

WINDOW = 30.0  # seconds: the worst is kept for this window and the one before
KEPT_MS = 5.0  # stalls and handler runs at least this long are listed with their time


class Worst:
    """The worst value seen over the current and the previous window, and the recent values
    over KEPT_MS with when they ended (and what they were)."""

    def __init__(self):
        self.bucket, self.current, self.previous = 0, 0.0, 0.0
        self.recent: deque = deque(maxlen=200)
        self.listed = 0  # how many went to `recent` (ever)

    def add(self, seconds: float, now: float, what: str = "") -> None:
        self._rotate(now)
        if seconds > self.current:
            self.current = seconds
        if seconds * 1e3 >= KEPT_MS:
            self.recent.append([round(now, 3), round(seconds * 1e3, 1), what])
            self.listed += 1

    def worst(self, now: float) -> float:
        self._rotate(now)
        return max(self.current, self.previous)

    def _rotate(self, now: float) -> None:
        bucket = int(now // WINDOW)
        if bucket != self.bucket:
            self.previous = self.current if bucket == self.bucket + 1 else 0.0
            self.current, self.bucket = 0.0, bucket


class LoopMeter:
    def __init__(self):
        self.stalls, self.handlers = Worst(), Worst()
        self._last = time.perf_counter()

    def start(self) -> None:
        fw.trace_switches(self._on_switch)

    def _on_switch(self, origin, target, hub) -> None:
        now = time.perf_counter()
        if origin is not hub:  # the hub's own time is mostly waiting in epoll
            ran = now - self._last
            if ran >= 0.001:
                self.stalls.add(ran, time.time(), _where(origin) if ran * 1e3 >= KEPT_MS else "")
        self._last = now

    def handler(self, name: str, seconds: float) -> None:
        if seconds >= 0.001:
            self.handlers.add(seconds, time.time(), name)

    @property
    def listed(self) -> int:
        """Grows whenever a stall or a slow handler is listed (the status is stale)."""
        return self.stalls.listed + self.handlers.listed

    def status(self, now: float) -> dict:
        return {
            "loop_max_stall_ms": round(self.stalls.worst(now) * 1e3, 1),
            "handler_max_ms": round(self.handlers.worst(now) * 1e3, 1),
            "loop_stalls": list(self.stalls.recent),
            "slow_handlers": list(self.handlers.recent),
        }


def _where(greenlet) -> str:
    """Which green thread stalled: ovsnat's (and the framework's) functions on its stack
    where it yielded, innermost first."""
    names, frame = [], getattr(greenlet, "gr_frame", None)
    while frame is not None and len(names) < 3:
        path = frame.f_code.co_filename
        if "/ovsnat/" in path or "/ryu/" in path or "/os_ken/" in path:
            names.append(frame.f_code.co_name)
        frame = frame.f_back
    return "<".join(names)
