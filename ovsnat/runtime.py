"""What the shim (ovsnat.app) runs beside the host controller: the meter of its own event
loop, the metrics server, and the switch connection's send timeout. Framework plumbing
only: no decision of the controller lives here.

The loop meter answers "can anything stall the controller?" from inside the process:
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

import logging
import time
from collections import deque

from ovsnat import framework as fw

LOG = logging.getLogger("ovsnat")
SEND_TIMEOUT = 60.0      # seconds a switch may read nothing before sends fail
WINDOW = 30.0            # seconds: the worst is kept for this window and the one before
KEPT_MS = 5.0            # stalls and handler runs at least this long are listed with their time


class Worst:
    """The worst value seen over the current and the previous window, and the recent values
    over KEPT_MS with when they ended (and what they were)."""

    def __init__(self):
        self.bucket, self.current, self.previous = 0, 0.0, 0.0
        self.recent: deque = deque(maxlen=200)
        self.listed = 0                          # how many went to `recent` (ever)

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
        if origin is not hub:              # the hub's own time is mostly waiting in epoll
            ran = now - self._last
            if ran >= 0.001:
                self.stalls.add(ran, time.time())
        self._last = now

    def handler(self, name: str, seconds: float) -> None:
        if seconds >= 0.001:
            self.handlers.add(seconds, time.time(), name)

    @property
    def listed(self) -> int:
        """Grows whenever a stall or a slow handler is listed (the status is stale)."""
        return self.stalls.listed + self.handlers.listed

    def status(self, now: float) -> dict:
        return {"loop_max_stall_ms": round(self.stalls.worst(now) * 1e3, 1),
                "handler_max_ms": round(self.handlers.worst(now) * 1e3, 1),
                "loop_stalls": list(self.stalls.recent),
                "slow_handlers": list(self.handlers.recent)}


def serve_metrics(metrics) -> None:
    """The metrics endpoint, on the framework's hub (a green thread per request)."""
    def handle(sock, addr):
        try:
            sock.settimeout(5)
            sock.sendall(metrics.http_response(sock.recv(4096)))
        except OSError:
            pass                                 # the scraper went away: its problem
        finally:
            sock.close()
    server = fw.hub.StreamServer((metrics.host, metrics.port), handle)
    LOG.info("ovsnat: metrics on http://%s:%d/metrics", metrics.host, metrics.port)
    server.serve_forever()


def patient_sends(dp) -> None:
    """ryu and os-ken give a send 5 s (--socket-timeout) to make progress, then shut the
    socket mid-message: the switch sees a truncated message ("Protocol error"), drops the
    connection, and the next full sync starts over. A busy ovs-vswitchd (10,000 ports,
    a 115,000-flow bundle) can read nothing for longer than that, so ovsnat gives its
    switch a minute. Receives are unaffected (the frameworks retry a timed-out read)."""
    sock = getattr(dp, "socket", None)
    if sock is not None and (sock.gettimeout() or SEND_TIMEOUT) < SEND_TIMEOUT:
        sock.settimeout(SEND_TIMEOUT)
