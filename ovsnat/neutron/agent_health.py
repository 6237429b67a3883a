"""Can the agent hear Neutron, and did it miss anything? ovsnat-neutron-agent's heartbeat, its
watchdog, and what an outage means for its loop (runs in Neutron's venv).

Pushes travel by RabbitMQ with no replay: a cast sent while the broker, the agent or the
RPC server was away is gone. So the rule is simple: after any sign of an outage the agent
asks Neutron about everything again (a full sync), and until then it removes nothing.

Signs of an outage: a call that got no answer (timeout, broker unreachable, nobody
consuming the topic), a failed heartbeat, a heartbeat still unanswered after a whole report
interval (with the broker down the call waits inside oslo.messaging until it is back), and
Neutron answering a heartbeat with "revived" (it had declared the agent dead). While cut
off, the loop probes: a full sync every RETRY seconds whose calls fail fast. When one gets
through, the agent syncs, and once more a report interval later: after a broker restart its
own push queues may come back after that first sync, and a push in between is lost.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from oslo_log import log

LOG = log.getLogger(__name__)

RETRY = 0.25            # s between retries of failed work (and probes while cut off)
# A call Neutron answered with an error (a fault on the server's side: a bug, an exhausted
# address pool for the SNAT port...) waits before it is made again, doubling from the first
# to the second value: every host retrying 4 times a second would only load the server.
SERVER_BACKOFF = (1.0, 60.0)
# A probe's call waits this long for its answer, longer after each probe that timed out (a
# Neutron that is slow, not away, still gets through); a reply lost in a reconnect must not
# hold the agent for the full call timeout.
PROBE_TIMEOUTS = (2.0, 4.0, 8.0)


class Holds:
    """Calls held back after an error answer: `what` -> when it may be made again, with a
    delay that doubles per error (SERVER_BACKOFF) and is forgotten at its first success."""

    def __init__(self) -> None:
        self.until: dict[str, float] = {}
        self.delay: dict[str, float] = {}

    def held(self, what: str, now: float) -> bool:
        return now < self.until.get(what, 0.0)

    def failed(self, what: str, now: float) -> float:
        delay = min(SERVER_BACKOFF[1], self.delay.get(what, SERVER_BACKOFF[0] / 2) * 2)
        self.delay[what], self.until[what] = delay, now + delay
        return delay

    def ok(self, what: str) -> None:
        self.until.pop(what, None)
        self.delay.pop(what, None)

    def next_at(self) -> float | None:
        """When the first held call may be made again (None: nothing held)."""
        return min(self.until.values()) if self.until else None


class Health:
    """`resync(recovered)` asks the agent's loop for a full sync (recovered: Neutron just
    came back) and wakes it; it may be called from any thread."""

    def __init__(self, report_interval: float, resync: Callable[[bool], None],
                 stopping: threading.Event) -> None:
        self.interval = report_interval
        self.resync = resync
        self.stopping = stopping
        self.neutron_ok = True
        self.beat_since: float | None = None    # monotonic start of the heartbeat in flight
        self.settle_at: float | None = None     # the second sync after an outage
        self.probes_timed_out = 0

        self.holds = Holds()

    def rpc_failed(self, what: str, error: Exception) -> bool:
        """A call that got no answer means Neutron (or RabbitMQ) is away: resync when it
        answers again (False: probe again soon). A call that got an error answer is a
        server-side fault: log it and hold that call back (True), without a full resync
        (which would hit the same fault)."""
        import oslo_messaging
        from ovsnat.neutron.agent_rpc import UNREACHABLE
        if isinstance(error, oslo_messaging.MessagingTimeout) and not self.neutron_ok:
            self.probes_timed_out += 1
        if isinstance(error, UNREACHABLE):
            self.failed(f"{what}: {error.__class__.__name__}")
            return False
        delay = self.holds.failed(what, time.monotonic())
        LOG.error("%s failed on the server (%s); trying it again in %.0f s", what,
                  str(error).strip().splitlines()[0] if str(error).strip() else
                  error.__class__.__name__, delay)
        return True

    def call_timeout(self) -> float:
        from ovsnat.neutron.agent_rpc import CALL_TIMEOUT
        if self.neutron_ok:
            return CALL_TIMEOUT
        return PROBE_TIMEOUTS[min(self.probes_timed_out, len(PROBE_TIMEOUTS) - 1)]

    def failed(self, what: str) -> None:
        """Only the first sign wakes the loop: after that it retries by itself."""
        if self.neutron_ok:
            LOG.warning("Neutron unreachable (%s); keeping every key as it is", what)
            self.neutron_ok = False
            self.resync(False)

    def answered(self) -> None:
        if not self.neutron_ok:
            LOG.info("Neutron reachable again: full sync")
            self.settle_at = time.monotonic() + self.interval
            self.neutron_ok, self.probes_timed_out = True, 0
            self.resync(True)

    def settle_due(self) -> bool:
        """True once, when the second sync after an outage is due."""
        if self.settle_at is not None and time.monotonic() >= self.settle_at:
            self.settle_at = None
            return True
        return False

    # --- threads ---------------------------------------------------------------------------
    def heartbeat_loop(self, report: Callable[[bool], str | None]) -> None:
        """`report(start)` sends one heartbeat and returns Neutron's answer."""
        start = True
        while not self.stopping.is_set():
            begun = self.beat_since = time.monotonic()
            try:
                status = report(start)
                start = False
                if status == "revived":
                    self.neutron_ok = False     # the server thought us dead: resync
                self.answered()
            except Exception as e:
                self.failed(f"report_state: {e.__class__.__name__}")
            finally:
                self.beat_since = None
            self.stopping.wait(max(0.0, self.interval - (time.monotonic() - begun)))

    def watchdog(self) -> None:
        """A heartbeat in flight for more than a report interval: cut off, now."""
        while not self.stopping.wait(RETRY):
            since = self.beat_since
            if since is not None and time.monotonic() - since > self.interval and \
                    self.neutron_ok:
                self.failed(f"heartbeat unanswered for {self.interval} s")

    def start(self, report: Callable[[bool], str | None]) -> None:
        threading.Thread(target=self.heartbeat_loop, args=(report,), name="heartbeat",
                         daemon=True).start()
        threading.Thread(target=self.watchdog, name="watchdog", daemon=True).start()
