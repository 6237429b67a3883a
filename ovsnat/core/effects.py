"""What the pure core asks the runtime to do beside sending bytes to the switch, and what
the runtime answers: small value types, all of them here.

The core (ovsnat.core.controller) never writes to OVSDB, calls ovs-vswitchd, closes a
connection or touches the process: it returns one of these among the bytes for the switch,
and the shim (ovsnat.app `_write`, the one send point) carries it out. A call that takes
time (a conntrack dump, zone limits, a probe) runs in a green thread of the runtime
(ovsnat.runtime.calls) and its answer comes back to the core as a plain call with `now`
(`HostController.result`), so no decision waits on anything outside.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# --- effects: what the core returns ---------------------------------------------------------


@dataclass(frozen=True)
class IfaceKeys:
    """Set and remove external_ids keys on one Interface row (the markers:
    ovsnat.core.markers)."""

    name: str
    set: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Reconfigure:
    """Make ovs-vswitchd reconfigure the live connection (the watcher touches the bridge's
    Controller rows: ovsnat.ovsdb.ownwrites), once per connection, after the first sync.
    Open vSwitch 3.1 applies a Controller's max_backoff and inactivity_probe to the live
    connection only in a reconfiguration made while that connection is up: the row's values
    are ignored when the connection is created, and again after every ovs-vswitchd restart
    (ofproto/connmgr.c creates it with a fixed 8 s backoff). Without this, a restarted
    controller could wait up to 8 s to be reconnected whatever max_backoff says (measured:
    docs/performance.md)."""


@dataclass(frozen=True)
class AdoptSwitch:
    """This connection is our switch's: messages that follow are for it
    (ovsnat.core.datapaths)."""

    dpid: int


@dataclass(frozen=True)
class RefuseSwitch:
    """Close this connection; nothing it sends is ours (ovsnat.core.datapaths)."""

    dpid: int


@dataclass(frozen=True)
class ReleaseMemory:
    """A burst is over (an OVSDB snapshot, a host built, a sync settled): give the memory it
    used back to the system (ovsnat.runtime.memory). Never on the per-port path."""


@dataclass(frozen=True)
class ZoneLimits:
    """Zone limits to apply (`dpctl/ct-set-limits`, `ct-del-limits`), in order
    (ovsnat.core.connlimit); answered by a ZoneLimitsDone."""

    set: tuple[tuple[int, int], ...] = ()  # (zone, limit)
    delete: tuple[int, ...] = ()


@dataclass(frozen=True)
class ReadConntrack:
    """Dump every zone's conntrack, tally it (ovsnat.core.conntrack), answer with a
    Reading."""

    pat_zone: int
    snat_ip: str


@dataclass(frozen=True)
class FlushConntrack:
    """End connections a change no longer allows (security groups, OSSN-0020): each
    (zone, tuple) is one `dpctl/flush-conntrack zone=Z [tuple]`, the tuple a partial
    ct-tuple (ct_nw_dst=...,ct_nw_proto=...) or empty for the whole zone. Applied in order
    with the zone limits; answered by a Flushed."""

    flushes: tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class Probe:
    """Does ovs-vswitchd answer on its control socket, with this bridge? Answered by a
    Probed (ovsnat.core.vswitchd)."""

    bridge: str


@dataclass(frozen=True)
class Routes:
    """bgp mode: blackhole /32s to add to (or replace in) and delete from the kernel
    tables FRR announces from (ovsnat.core.announce); one batch, answered by RoutesDone."""

    add: tuple[tuple[object, int], ...] = ()  # (a netaddr /32, its table)
    delete: tuple[tuple[object, int], ...] = ()


# Every effect above: the shim has a handler for each (tests/test_architecture.py checks it).
EFFECTS = {
    c.__name__: c
    for c in (
        IfaceKeys,
        Reconfigure,
        AdoptSwitch,
        RefuseSwitch,
        ReleaseMemory,
        ZoneLimits,
        FlushConntrack,
        ReadConntrack,
        Probe,
        Routes,
    )
}

# --- answers: what the runtime posts back ---------------------------------------------------


@dataclass(frozen=True)
class ZoneLimitsDone:
    """What could not be applied of one ZoneLimits, and why (all empty: all of it)."""

    limits: ZoneLimits
    failed: tuple[int, ...] = ()  # zones whose set or delete failed
    error: str = ""


@dataclass(frozen=True)
class Flushed:
    """How one FlushConntrack went (failed: how many of its flushes failed)."""

    flush: FlushConntrack
    failed: int = 0
    error: str = ""


@dataclass
class Reading:
    """What one conntrack dump said, or why there is none (ok False: nothing is known, which
    is not the same as an empty conntrack)."""

    ok: bool
    error: str = ""
    entries: int = 0
    sessions: Counter = field(default_factory=Counter)  # (zone, src) -> live TCP sessions
    pat_ports: dict = field(default_factory=dict)  # src -> PAT ports it holds
    pat_in_use: int = 0  # distinct PAT ports in use
    seconds: float = 0.0  # the dump and its parse


@dataclass(frozen=True)
class RoutesDone:
    """How one Routes went: the routes the kernel refused, and the first reason."""

    routes: Routes
    failed: tuple[tuple[object, int], ...] = ()
    error: str = ""


@dataclass(frozen=True)
class NextHops:
    """bgp mode: the ToRs the kernel routes through now (the accepted routes' next hops
    with a usable neighbour entry), address -> MAC; posted by the runtime's kernel
    watch whenever that changes. The select group has a bucket for each of these only."""

    hops: tuple[tuple[str, object], ...] = ()  # (ToR address, netaddr.EUI), sorted


@dataclass(frozen=True)
class EchoesSeen:
    """bgp mode: the /32s inside the announced ranges that the kernel holds as BGP routes,
    the other hosts' announcements as the ToRs pass them back (docs/bgp.md, section 2).
    Posted with the first dump and whenever the set changes. A FIP found here is held by
    another host: it waits dark for its VM's first frame."""

    addresses: frozenset = frozenset()  # str


@dataclass(frozen=True)
class OwnRoutes:
    """bgp mode: ovsnat's own routes in its two kernel tables, as the runtime's dump of
    the kernel found them (at start, and again after a failure of its watch)."""

    routes: frozenset = frozenset()  # (a netaddr /32, its table)


@dataclass(frozen=True)
class Probed:
    ok: bool
    target: str  # the control socket as found (or where it was looked for)
    error: str = ""
