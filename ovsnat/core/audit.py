"""The periodic audit: ovsnat's flows on the switch against the desired state, repaired.

Between (re)connects the controller believes what its barriers confirmed. Anything done to
the switch behind its back (an operator's `ovs-ofctl del-flows` or `mod-flows`, a buggy
tool) used to stay until the next reconnect. Every `audit_interval` seconds the auditor
dumps ovsnat's cookies (as the connect-time dump does: other cookies are never asked for,
so foreign flows are never touched) and compares each flow by (table, cookie) and by the
digest of its body (ovsnat.openflow.digest), so a flow changed in place is found too. What
differs is repaired in one bundle and logged flow by flow, and counted (`audits`,
`flow_repairs`: the status file and the metrics read the same counters).

In-flight changes are never "repaired": an audit starts only when no bundle is in flight,
and owners that a bundle touched while the dump was being read are left out of that
audit (the next one covers them). Owners the switch refused are left to the reconciler,
which reports them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ovsnat.compile.flows import COOKIE_HOST, KINDS
from ovsnat.core.reconcile import Reconciler
from ovsnat.core.state import HOST
from ovsnat.core.status import Stats
from ovsnat.core.timers import Timers
from ovsnat.openflow import messages
from ovsnat.openflow.digest import flow_mod_digests

LOG = logging.getLogger("ovsnat")
KEY = ("audit",)
RETRY = 1.0  # seconds: the switch was busy (a bundle in flight, a sync)
STALLED = 30.0  # seconds a dump may go unanswered (an error reply) before a new one
LOGGED_PER_AUDIT = 1000  # repaired flows logged one by one; past that, one summary line


@dataclass
class _Dump:
    pending: set  # xids of the stats requests not yet done
    started_at: float
    truth: dict = field(default_factory=dict)  # (table, cookie) -> digest, as dumped


@dataclass
class Finding:
    """One flow that differs: missing, stale (ovsnat's cookie, not desired) or changed."""

    kind: str
    key: tuple[int, int]
    packed: bytes | None = None  # the desired flow_mod (missing, changed)


class Auditor:
    def __init__(self, interval: float, sw: Reconciler, timers: Timers, stats: Stats):
        self.interval = interval
        self.sw, self.timers, self.stats = sw, timers, stats
        self._dump: _Dump | None = None

    # --- schedule ------------------------------------------------------------------------
    def reset(self, now: float) -> None:
        """A (re)connect or a fault: forget a dump in progress, audit one period later."""
        self._abandon()
        if self.interval > 0:
            self.timers.at(now + self.interval, KEY)

    def _abandon(self) -> None:
        if self._dump is not None:
            for xid in self._dump.pending:
                self.sw.session.xids.release(xid)
            self._dump = None
            self.sw.session.unwatch()

    def due(self, now: float) -> list:
        """The audit's time has come: ask the switch what it holds."""
        session = self.sw.session
        if self._dump is not None and now - self._dump.started_at >= STALLED:
            LOG.warning(
                "ovsnat: audit: the switch left the flow dump unanswered for %.0f s; "
                "starting again",
                now - self._dump.started_at,
            )
            self._abandon()
        if (
            self.sw.host is None
            or not session.ready
            or session.bundles
            or self.sw.connected_at is not None
            or self._dump is not None
        ):
            self.timers.at(now + RETRY, KEY)
            return []
        out, pending = [], set()
        for kind in KINDS:
            xid = session.xids.take(busy=True)
            out.append(messages.flow_stats_request(xid, kind << 56, 0xFF << 56))
            pending.add(xid)
        session.watch()
        self._dump = _Dump(pending, now)
        self.timers.at(now + STALLED, KEY)  # the last reply re-arms the period instead
        return out

    # --- replies ---------------------------------------------------------------------------
    def owns(self, xid: int) -> bool:
        return self._dump is not None and xid in self._dump.pending

    def flow_stats(self, xid: int, entries, more: bool, now: float) -> list:
        """Part of the audit's dump: (table, cookie, digest) entries."""
        dump = self._dump
        dump.truth.update(((e[0], e[1]), e[2]) for e in entries)
        if more:
            return []
        dump.pending.discard(xid)
        self.sw.session.xids.release(xid)
        if dump.pending:
            return []
        self._dump = None
        self.timers.at(now + self.interval, KEY)
        return self._finish(dump, self.sw.session.unwatch())

    def _finish(self, dump: _Dump, touched: set[int]) -> list:
        self.stats.inc("audits")
        if self.sw.host is None or not self.sw.session.ready:
            return []
        skip = touched | {p | k << 32 for p in self.sw.failed_owners for k in KINDS}
        findings = compare(self.sw.host.wire, dump.truth, skip)
        if not findings:
            LOG.debug("ovsnat: audit: %d flows as desired", len(dump.truth))
            return []
        return self._repair(findings)

    def _repair(self, findings: list[Finding]) -> list:
        installed = self.sw.session.installed
        for i, f in enumerate(findings):
            if i < LOGGED_PER_AUDIT:
                LOG.warning(
                    "ovsnat: audit: %s flow table=%d cookie=%#x of %s; repairing",
                    f.kind,
                    f.key[0],
                    f.key[1],
                    self.sw.owner_name(f.key[1]),
                )
            if f.kind == "missing":
                installed.discard(f.key)
            elif f.kind == "stale":
                installed.add(f.key)
        if len(findings) > LOGGED_PER_AUDIT:
            LOG.warning("ovsnat: audit: ... and %d more flows", len(findings) - LOGGED_PER_AUDIT)
        self.stats.inc("flow_repairs", len(findings))
        delete = sorted(f.key for f in findings if f.kind != "missing")
        adds = [(f.key, f.packed) for f in findings if f.packed is not None]
        LOG.warning(
            "ovsnat: audit: repairing %d flows (%d missing, %d stale, %d changed) in one bundle",
            len(findings),
            *(sum(f.kind == k for f in findings) for k in ("missing", "stale", "changed")),
        )
        return self.sw.repair(delete, adds, self._owners(findings))

    def _owners(self, findings: list[Finding]) -> set:
        host, owners = self.sw.host, set()
        for f in findings:
            prefix = f.key[1] >> 24
            owner = HOST if prefix >> 32 == COOKIE_HOST else host.owner_names.get(prefix)
            owners.add(owner if owner is not None else self.sw.owner_name(f.key[1]))
        return owners


def compare(wire: dict, truth: dict, skip: set) -> list[Finding]:
    """What differs between the desired flows (owner -> packed flow_mods) and what the
    switch holds (`truth`, consumed), leaving out cookie owners (cookie >> 24) in `skip`."""
    findings = []
    for blob in wire.values():
        for key, digest, offset, length in flow_mod_digests(blob):
            held = truth.pop(key, None)
            if held == digest or key[1] >> 24 in skip:
                continue
            kind = "missing" if held is None else "changed"
            findings.append(Finding(kind, key, blob[offset : offset + length]))
    findings += [Finding("stale", key) for key in sorted(truth) if key[1] >> 24 not in skip]
    return findings
