"""What the shim (ovsnat.app) runs beside the host controller: the meter of its own event
loop, its switch connections, the status file and the metrics server. Framework plumbing
only: no decision of the controller lives here (which switch is ours: ovsnat.core.datapaths).

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

from ovsnat.runtime import framework as fw
from ovsnat.core import status

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
                self.stalls.add(ran, time.time(), _where(origin) if ran * 1e3 >= KEPT_MS
                                else "")
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


def serve_metrics(metrics, failures) -> None:
    """The metrics endpoint, on the framework's hub (a green thread per request). An address
    it cannot listen on (in use, not local) is reported and tried again every 10 s."""
    def handle(sock, addr):
        try:
            sock.settimeout(5)
            sock.sendall(metrics.http_response(sock.recv(4096)))
        except OSError:
            pass                                 # the scraper went away: its problem
        finally:
            sock.close()
    while True:
        try:
            server = fw.hub.StreamServer((metrics.host, metrics.port), handle)
            break
        except OSError as e:
            failures.failed("metrics", f"{metrics.host}:{metrics.port}: {e}", "no metrics "
                            "are served until it can listen (tried every 10 s)", time.time())
            fw.hub.sleep(10)
    failures.ok("metrics")
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


class Switches:
    """The switch connections: every one that connected, by datapath id, and the one the
    host controller adopted (ovsnat.core.datapaths), which alone is written to and heard."""

    def __init__(self, failures):
        self.failures = failures
        self.ours = None
        self.all: dict = {}

    def connected(self, dp) -> None:
        self.all[dp.id] = dp
        patient_sends(dp)

    def adopt(self, dpid: int) -> None:
        self.ours = self.all.get(dpid)

    def refuse(self, dpid: int) -> None:
        dp = self.all.pop(dpid, None)
        if dp is self.ours:
            self.ours = None
        if dp is not None:
            dp.close()

    def gone(self, dp) -> str | None:
        """A connection closed: "ours", "other" (it waited), or None (refused, or an older
        connection's late event)."""
        if dp.id is None or self.all.get(dp.id) is not dp:
            return None
        del self.all[dp.id]
        if dp is self.ours:
            self.ours = None
            return "ours"
        return "other"

    def send(self, data: bytes, now: float) -> bool:
        if self.ours is None:
            return False
        if self.ours.send(data):
            self.failures.ok("switch_send")
            return True
        self.failures.failed("switch_send", "the connection is closing", "what was not sent "
                             "goes again once the switch reconnects (full resync)", now)
        return False


def ovsdb_written(watcher, failures, sent: bool, now: float) -> None:
    """A key write or a Controller touch was handed to the watcher (or not)."""
    if sent or watcher.connected():              # (a row it does not know yet: no failure)
        failures.ok("ovsdb_write")
        return
    failures.failed("ovsdb_write", "OVSDB is not connected", "installed markers are written "
                    "again after the reconnect; the Controller rows are touched again at the "
                    "next connection", now)


def write_status(path: str, state: dict, failures, now: float) -> None:
    error = status.write_file(path, state)
    if error is None:
        failures.ok("status_file")
    else:
        failures.failed("status_file", error, "`ovsnat status` shows an old state; tried "
                        "again every second", now)
