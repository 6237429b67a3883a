"""Which /32s this host announces in bgp mode, and the kernel writes that make it so
(docs/bgp.md, section 3). Pure: the runtime carries out each Routes effect over rtnetlink
(ovsnat.runtime.routes) and answers with RoutesDone.

The announcement is level-triggered, like the flows. Wanted: this host's SNAT address(es)
and each FIP live here, every one as LIVE (table T) or, for `moved_hold` seconds after a
migration brought it here, MOVED (table T + 1: a community the ToRs prefer). Known: what
the kernel's two tables held at the last dump, updated by every answered write. A write is
the difference, one effect at a time, in one batch. So a restarted controller, which
dumps before it writes, writes nothing when nothing changed (and FRR sends no UPDATE), and
a route the kernel refused is wanted again at the next retry.

At most `max_routes` are announced: the SNAT addresses first, then the FIPs in the order of
their ports' names. The rest stay dark, with the reason for status, the same on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import netaddr

from ovsnat.core.effects import Routes, RoutesDone

LIVE, MOVED = "live", "moved"
Key = tuple[netaddr.IPNetwork, int]  # (a /32, its kernel table)


@dataclass(frozen=True)
class Plan:
    """A host's announcement settings (from BgpSettings)."""

    table: int = 100
    max_routes: int = 1000
    moved_hold: float = 60.0


@dataclass
class Announcer:
    plan: Plan
    snat: tuple[netaddr.IPAddress, ...] = ()
    fips: dict[netaddr.IPAddress, str] = field(default_factory=dict)  # FIP -> its port
    moved_until: dict[netaddr.IPAddress, float] = field(default_factory=dict)
    known: set[Key] | None = None  # None: the kernel not dumped yet, so nothing is written
    in_flight: Routes | None = None
    failed: dict[Key, str] = field(default_factory=dict)
    retry_at: float | None = None
    RETRY = 5.0

    # --- what is wanted -------------------------------------------------------------------
    def set_snat(self, addresses) -> None:
        self.snat = tuple(sorted(set(addresses)))

    def live(self, fip: netaddr.IPAddress, port: str, now: float, moved: bool = False) -> None:
        """A FIP went live here; `moved`: it came with its VM from another host that still
        announced it (the destination of a migration). A FIP the kernel holds as MOVED
        only (a restart within the hold) keeps it, its hold counted again from now (the
        restarted controller does not know when it began): no route moves at the restart."""
        self.fips[fip] = port
        known = self.known or set()
        moved = moved or (self._key(fip, MOVED) in known and self._key(fip, LIVE) not in known)
        if moved:
            self.moved_until[fip] = now + self.plan.moved_hold
        else:
            self.moved_until.pop(fip, None)

    def dark(self, fip: netaddr.IPAddress) -> None:
        """The FIP no longer lives here (unplugged, moved away, disassociated)."""
        self.fips.pop(fip, None)
        self.moved_until.pop(fip, None)

    def wanted(self, now: float) -> dict[Key, str]:
        """(prefix, table) -> why, for every route within the cap."""
        out: dict[Key, str] = {}
        for ip in self.snat:
            out[self._key(ip, LIVE)] = "snat"
        for ip, _port in self._ordered():
            if len(out) >= self.plan.max_routes:
                break
            state = MOVED if self.moved_until.get(ip, 0.0) > now else LIVE
            out[self._key(ip, state)] = state
        return out

    def capped(self, now: float) -> list[netaddr.IPAddress]:
        """FIPs live here but left dark by the cap (shown by status)."""
        announced = {key[0].ip for key in self.wanted(now)}
        return [ip for ip, _ in self._ordered() if ip not in announced]

    # --- what the kernel holds, and the writes ----------------------------------------------
    def seen(self, installed: set[Key]) -> None:
        """A dump of the two tables (at start, and by the audit): the truth from now on."""
        self.known = set(installed)

    def next(self, now: float) -> list[Routes]:
        """The one write that makes the kernel what is wanted, if any is needed and none
        is in flight. A route the kernel refused waits for the retry; the others go."""
        if self.known is None or self.in_flight is not None:
            return []
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at, self.failed = None, {}
        held = set(self.failed) if self.retry_at is not None else set()
        wanted = set(self.wanted(now))
        add = sorted(wanted - self.known - held)
        delete = sorted(self.known - wanted - held)
        if not add and not delete:
            return []
        self.in_flight = Routes(tuple(add), tuple(delete))
        return [self.in_flight]

    def done(self, result: RoutesDone, now: float) -> None:
        """The runtime's answer: what took is known, what failed is tried again later."""
        routes, failed = result.routes, set(result.failed)
        self.in_flight = None
        if self.known is not None:
            self.known |= {key for key in routes.add if key not in failed}
            self.known -= {key for key in routes.delete if key not in failed}
        tried = set(routes.add) | set(routes.delete)
        self.failed = {k: why for k, why in self.failed.items() if k not in tried}
        self.failed.update({key: result.error for key in failed})
        if failed:
            self.retry_at = now + self.RETRY

    def next_at(self) -> float | None:
        """When a moved FIP turns live or a failed write is tried again."""
        times = [t for t in self.moved_until.values()]
        if self.retry_at is not None:
            times.append(self.retry_at)
        return min(times) if times else None

    def expire(self, now: float) -> None:
        """Forget the holds that ended (their routes turn LIVE at the next write)."""
        for ip in [ip for ip, until in self.moved_until.items() if until <= now]:
            del self.moved_until[ip]

    def status(self, now: float) -> dict:
        wanted = self.wanted(now)
        return {
            "announced": sum(1 for key in wanted if self.known and key in self.known),
            "wanted": len(wanted),
            "moved": sorted(str(k[0].ip) for k, why in wanted.items() if why == MOVED),
            "capped": [str(ip) for ip in self.capped(now)],
            "failed": {f"{k[0]} table {k[1]}": why for k, why in sorted(self.failed.items())},
        }

    def _ordered(self) -> list[tuple[netaddr.IPAddress, str]]:
        return sorted(
            ((ip, port) for ip, port in self.fips.items() if ip not in self.snat),
            key=lambda item: (item[1], int(item[0])),
        )

    def _key(self, ip: netaddr.IPAddress, state: str) -> Key:
        table = self.plan.table + 1 if state == MOVED else self.plan.table
        return (netaddr.IPNetwork(f"{ip}/32"), table)
