"""Failures of the controller's calls outside itself: each logged once with what it means,
counted, and listed in the status (and the metrics) while it lasts.

A call that fails again with the same error is counted, not logged again; one that works
again is logged once more ("... works again"), so the log reads as a story of outages, not
a stream. What is retried, and how, is up to the caller: this only makes sure no failure
goes unsaid. Pure: the shim and the core report here, with `now`.
"""

from __future__ import annotations

import logging
import time

LOG = logging.getLogger("ovsnat")

# kind -> (counter in ovsnat.core.status.COUNTERS, what it is)
KINDS = {
    "status_file": ("status_write_failures", "writing the status file"),
    "switch_send": ("switch_send_failures", "sending to the switch"),
    "ovsdb_write": ("ovsdb_write_failures", "writing to OVSDB"),
    "vswitchd": ("vswitchd_call_failures", "calling ovs-vswitchd (ovs-appctl)"),
    "metrics": ("metrics_failures", "serving the metrics"),
}


class Failures:
    def __init__(self, stats):
        self.stats = stats
        self.current: dict[str, dict] = {}  # kind -> the failure going on

    def failed(self, kind: str, error: str, meaning: str, now: float) -> None:
        """One failed call of `kind`; `meaning`: what does not work because of it."""
        counter, what = KINDS[kind]
        self.stats.inc(counter)
        was = self.current.get(kind)
        if was is not None and was["error"] == error:
            was["count"] += 1
            return
        LOG.error("ovsnat: %s failed: %s; %s", what, error, meaning)
        self.current[kind] = {
            "error": error,
            "meaning": meaning,
            "count": 1,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)),
        }

    def ok(self, kind: str) -> None:
        """A call of `kind` worked: a failure going on is over."""
        was = self.current.pop(kind, None)
        if was is not None:
            LOG.info(
                "ovsnat: %s works again (it failed %d times since %s)",
                KINDS[kind][1],
                was["count"],
                was["since"],
            )
            self.stats.touch()

    def status(self) -> dict:
        return {kind: dict(f) for kind, f in sorted(self.current.items())}
