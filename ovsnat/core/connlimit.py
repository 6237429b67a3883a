"""Per-VM connection limits at run time (`conn_limit`; the flows: ovsnat.compile.connlimit):
which counting zones the datapath must limit, and how many connections each VM's zone
refused.

The limits themselves are applied by the shim (`dpctl/ct-set-limits`) from the ZoneLimits
effects the controller returns; each answer (ZoneLimitsDone) comes back to `Zones.done`.
The refusals are the packet counts of the VMs' refusal flows, read by flow stats
(ovsnat.core.dropcounts).
"""

from __future__ import annotations

from ovsnat.compile.connlimit import zone
from ovsnat.core.effects import ZoneLimits, ZoneLimitsDone


class Zones:
    """Which counting zones the datapath should limit, kept up to date port by port (O(1)
    per change); the shim applies each ZoneLimits it is given and says what failed. A
    zone whose limit (or its removal) failed is applied again, from what is wanted then,
    every RETRY seconds until it takes: a limit that never took is never counted as set."""

    RETRY = 10.0

    def __init__(self):
        self.wanted: dict[str, int] = {}  # port name -> its counting zone
        self.failed: dict[int, str] = {}  # zone -> why its last change failed
        self.retry_at: float | None = None
        self.limit = 0

    def update(self, host, names) -> list:
        if host is None or not host.cfg.conn_limit:
            return []
        self.limit = host.cfg.conn_limit
        add, drop = [], []
        for name in names:
            port = host.accepted_port(name)
            want = zone(host.cfg, port) if port is not None else None
            have = self.wanted.get(name)
            if want == have:
                continue
            if have is not None:
                drop.append(have)
                del self.wanted[name]
            if want is not None:
                add.append((want, host.cfg.conn_limit))
                self.wanted[name] = want
        return [ZoneLimits(tuple(add), tuple(drop))] if add or drop else []

    def reapply(self, host) -> list:
        """Everything again (a switch that reconnects may be a restarted ovs-vswitchd, which
        forgot its limits)."""
        self.wanted.clear()
        return self.update(host, list(host.valid)) if host is not None else []

    def done(self, result: ZoneLimitsDone, now: float) -> None:
        """The shim applied one ZoneLimits: forget the failures it fixed, keep the new ones."""
        for z in (*(z for z, _ in result.limits.set), *result.limits.delete):
            self.failed.pop(z, None)
        for z in result.failed:
            self.failed[z] = result.error
        if self.failed and self.retry_at is None:
            self.retry_at = now + self.RETRY

    def due(self, now: float) -> list:
        """The failed zones again, as they are wanted now (set, or deleted and flushed)."""
        if self.retry_at is None or now < self.retry_at:
            return []
        self.retry_at = None
        if not self.failed:
            return []
        wanted = set(self.wanted.values())
        return [
            ZoneLimits(
                tuple((z, self.limit) for z in sorted(self.failed) if z in wanted),
                tuple(z for z in sorted(self.failed) if z not in wanted),
            )
        ]

    def status(self) -> dict:
        return {
            "zones": len(self.wanted),
            "not_applied": len(self.failed),
            "error": next(iter(self.failed.values()), ""),
        }
