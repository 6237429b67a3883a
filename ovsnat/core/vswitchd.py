"""ovs-vswitchd's control socket, as the host controller sees it: what ovsnat asks the
daemon behind `ovs-appctl` (OpenFlow has no view of conntrack's entries or its zone limits),
when, and what a failure means.

Three features need it: the handoff (handoff_vlan: a departed PAT VM's handoff ends once
conntrack holds none of its sessions), conn_limit (the counting zones' limits) and the PAT
usage the metrics show. The calls themselves are the shim's (ovsnat.runtime.calls, in green
threads, each answer posted back as an event); this module only decides:

- a probe at start, and every PROBE_EVERY seconds while the socket does not answer and a
  feature needs it: the log and `ovsnat status` say which features cannot work and why;
- one conntrack read serves every reader (ovsnat.core.conntrack): while a departure lasts
  (every 2 s) and for the metrics (every 5 s); never two at once; a read asked for moves
  its schedule on whatever it answers, and a read that fails counts as nothing known,
  never as "no sessions";
- every failure goes through ovsnat.core.failures (logged once, counted, in the status).
"""

from __future__ import annotations

import logging

from ovsnat.core.conntrack import pat_usage
from ovsnat.core.delta import Delta
from ovsnat.core.effects import Flushed, Probe, Probed, ReadConntrack, Reading, ZoneLimitsDone

LOG = logging.getLogger("ovsnat")
PROBE_EVERY = 10.0  # seconds between probes while the socket does not answer
PAT_EVERY = 5.0  # seconds between reads of PAT usage (metrics on)
READ_LOST = 60.0  # a read unanswered this long is forgotten (the shim answers each)


class Vswitchd:
    def __init__(self, cfg, stats, failures, pat_usage: bool = False):
        self.cfg, self.stats, self.failures = cfg, stats, failures
        self.pat_usage = pat_usage
        self.reachable: bool | None = None  # None: not asked yet
        self.target = ""
        self.next_probe = self.next_pat = 0.0
        self.reading_since: float | None = None

    def needed_by(self) -> list[str]:
        """The configured features that cannot work without the control socket."""
        return [
            what
            for on, what in (
                (
                    self.cfg.handoff_vlan,
                    "handoff_vlan (a departed VM's handoff cannot end when "
                    "its sessions do: it runs its whole handoff_grace)",
                ),
                (self.cfg.conn_limit, "conn_limit (the per-VM limits are not applied)"),
                (self.pat_usage, "PAT usage (ovsnat status, the metrics)"),
            )
            if on
        ]

    # --- what is due -----------------------------------------------------------------------
    def due(self, host, handoffs, now: float) -> list:
        out = []
        if now >= self.next_probe and (
            self.reachable is None or (not self.reachable and self.needed_by())
        ):
            self.next_probe = now + PROBE_EVERY
            out.append(Probe(self.cfg.bridge))
        if self.reading_since is not None and now - self.reading_since < READ_LOST:
            return out
        if host is None:
            return out
        if handoffs.wants_conntrack(host, now) or (self.pat_usage and now >= self.next_pat):
            handoffs.asked(now)
            self.next_pat, self.reading_since = now + PAT_EVERY, now
            out.append(ReadConntrack(host.cfg.ct_zone, str(host.cfg.snat_ip)))
        return out

    # --- answers ---------------------------------------------------------------------------
    def result(self, result, host, handoffs, zones, now: float) -> Delta:
        if isinstance(result, Probed):
            self.target = result.target
            self._answered(result.ok, result.error, self._meaning(), now)
        elif isinstance(result, ZoneLimitsDone):
            zones.done(result, now)
            self._answered(
                not result.failed,
                result.error,
                f"{len(zones.failed)} counting "
                f"zones have no limit (conn_limit not enforced for their VMs); "
                f"retried every {zones.RETRY:.0f} s",
                now,
            )
        elif isinstance(result, Flushed):
            self._answered(
                not result.failed,
                result.error,
                f"{result.failed} conntrack flushes failed: connections a security-group "
                "change no longer allows may go on until they end",
                now,
            )
        elif isinstance(result, Reading):
            self.reading_since = None
            self._answered(
                result.ok,
                result.error,
                "reading conntrack: a departed VM's "
                "handoff runs its whole grace period (its sessions cannot be "
                "counted); PAT usage is not updated",
                now,
            )
            if result.ok and self.pat_usage and host is not None:
                self.stats.pat = pat_usage(result, host.cfg.pat_port_count)
                self.stats.touch()
            return handoffs.conntrack(host, result.sessions if result.ok else None, now)
        return Delta()

    def _answered(self, ok: bool, error: str, meaning: str, now: float) -> None:
        if ok:
            if self.reachable is None:
                LOG.info(
                    "ovsnat: ovs-vswitchd answers at %s%s",
                    self.target or "(its socket)",
                    "; needed by " + ", ".join(self.status()["needed_by"])
                    if self.needed_by()
                    else "",
                )
            self.reachable = True
            self.failures.ok("vswitchd")
            return
        self.reachable = False
        where = f" ({self.target})" if self.target and self.target not in error else ""
        self.failures.failed("vswitchd", error + where, meaning, now)

    def _meaning(self) -> str:
        needed = self.needed_by()
        if not needed:
            return "nothing configured needs it (handoff_vlan, conn_limit and the metrics are off)"
        return "set [ovsnat] vswitchd_ctl or OVS_RUNDIR; cannot work without it: " + "; ".join(
            needed
        )

    def status(self) -> dict:
        return {
            "target": self.target,
            "reachable": self.reachable,
            "needed_by": [n.split(" (")[0] for n in self.needed_by()],
        }
