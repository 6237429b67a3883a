"""The host controller: every decision of ovsnat's controller, in plain Python.

ovsnat.app, the Ryu/os-ken shim, turns framework events into calls here, each with `now`,
and does what they return: bytes (or an iterator of byte chunks) go to the switch,
`IfaceKeys` to OVSDB. Nothing here opens a socket, starts a thread or reads the clock, so
unit tests drive a host event by event against a model switch, as Faucet's tests drive
valve.py under faucet.py.

- OVSDB batches update the host state (ovsnat.core.state); the changed VMs' flows go out in one
  atomic bundle. A snapshot (every reconnect) is level-triggered: rows missing from it are
  gone.
- On datapath connect (ovsnat.core.switch_events): dump ovsnat's flows, meters and
  groups, diff against the desired state by
  (table, cookie), send only the difference in one bundle. A restart with nothing changed
  sends no flow_mod.
- A rejected bundle is retried owner by owner, so one bad VM never blocks the others.
- Once a port's flows are confirmed on the switch, its Interface row gets
  external_ids:ovsnat-installed=true (as ovn-controller's ovn-installed), and
  ovsnat-ready=true once this host accepts its keys, even before its device exists (a live
  migration's destination): the Neutron agent reports the port up from them (ovsnat.core.markers).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import netaddr

from ovsnat.core import announcing, audit, connlimit, dhcp, gateways, markers
from ovsnat.core.datapaths import Identity
from ovsnat.core.delta import Delta
from ovsnat.core.dropcounts import DropCounts
from ovsnat.core.effects import (
    EchoesSeen,
    FlushConntrack,
    NextHops,
    OwnRoutes,
    ReleaseMemory,
    RoutesDone,
)
from ovsnat.core.failures import Failures
from ovsnat.core.fips import Fips
from ovsnat.core.handoff import Handoffs
from ovsnat.core.packet_in import PacketIn
from ovsnat.core.reconcile import Reconciler
from ovsnat.core.routing_state import parse_logged, rows_in
from ovsnat.core.state import HostState
from ovsnat.core.status import Stats, status_of
from ovsnat.core.switch_events import SwitchEvents
from ovsnat.core.timers import Timers
from ovsnat.core.vswitchd import Vswitchd
from ovsnat.model import HostConfig, port_from_row
from ovsnat.model.hostconfig import RejectionLog, Settings
from ovsnat.model.rows import IfaceRow, Snapshot
from ovsnat.model.secgroups import HostSecurity, parse_bridge

LOG = logging.getLogger("ovsnat")
FAULTS_BEFORE_EXIT, FAULT_WINDOW = 3, 60.0


class Fatal(RuntimeError):
    """The controller keeps failing: better to exit and be restarted than run diverged."""


class HostController(SwitchEvents):
    def __init__(
        self, cfg: HostConfig, clock, audit_interval: float = 60.0, pat_usage: bool = False
    ):
        self.base_cfg, self.audit_interval = cfg, audit_interval
        self.rows: dict[str, IfaceRow] = {}
        self.bridge_ids: dict[str, str] = {}
        self.sg_broken: dict[str, str] = {}  # malformed groups, as last logged
        self.routing_logged: dict[str, str] = {}  # malformed routing keys, as last logged
        self.gateways = gateways.Gateways(cfg.external_gateway_mac)
        self.stats = Stats()
        self.failures = Failures(self.stats)
        self.sw = Reconciler(clock, self.stats)
        self.dhcp = dhcp.DhcpService(self.stats, self.sw.session)
        self.packets = PacketIn(self)
        self.zones = connlimit.Zones()
        self.refusals = DropCounts()
        self.first_view = True
        self.hops: dict = {}  # bgp mode: usable next hops, ToR address -> MAC (NextHops)
        self.sw.adopt_groups = cfg.bgp is not None  # until the first NextHops
        self.announcing = announcing.Announcing(cfg)  # bgp mode's routes
        self.echoes: frozenset | None = None  # bgp mode: the other hosts' /32s (EchoesSeen)
        self.rejections = RejectionLog()
        self.settings = Settings(cfg)
        self.faults: list[float] = []
        self.identity = Identity(cfg.bridge, self.stats)
        self.vswitchd = Vswitchd(cfg, self.stats, self.failures, pat_usage)
        self._build(seen_ofport={})

    def _build(self, seen_ofport: dict[str, int | None]) -> None:
        """The host state and the components whose deadlines and decisions follow it, built
        afresh over what outlives a fault (the rows, the counters, the switch session): at
        start, and by `recover`. `seen_ofport`: each row's device at the last look (a
        rebuilt host must not take a VM that was here for one that just arrived)."""
        self.host = self.sw.host = None
        self.timers = Timers()
        self.fips = Fips(
            self.base_cfg.fip_activation, self.timers, self.stats, self.sw.session, self.sw.send
        )
        self.fips.seen_ofport = seen_ofport
        self.fips.presence.echoes = self.echoes
        self.fips.leased_at = lambda name: self.dhcp.leases.get(name, {}).get("at")
        self.handoffs = Handoffs(self.timers, self.stats)
        self.audit = audit.Auditor(self.audit_interval, self.sw, self.timers, self.stats)

    # --- OVSDB ---------------------------------------------------------------------------
    def ovsdb(self, batch, now: float) -> list:
        names = self._apply(batch)
        externals = self.host.cfg.externals if self.host else ()
        delta = Delta()  # a new config goes to the switch with the routing it brings
        built, out = self._ensure_host(now, delta)
        if batch.datapath_id is not None:
            out = self._datapath_named(batch.datapath_id, now) + out
        if built:
            return (
                out + self.sw.sync(now) + self._markers(self.rows) + self.zones.reapply(self.host)
            )
        if self.host is None:
            return out
        if externals != self.host.cfg.externals:  # a FIP may be in a network new here
            names |= set(self.rows)
        if batch.bridge_ids is not None:
            delta.extend(self.host.set_security(self._security()))
            routed, nets = self.host.set_routing(self._routing())
            delta.extend(routed)
            names |= rows_in(self.rows, nets)  # their FIPs may be served, or held inert, now
        for name in sorted(names - self._infra()):
            was = self.host.accepted_port(name)
            delta.extend(self.host.update(name, self._port(name)))
            gone = name not in self.rows or name in self.host.transient
            delta.extend(self.handoffs.changed(self.host, name, was, gone, now))
        self.rejections.report(self.host)
        delta.extend(self.fips.changed(names, self.rows, now))
        burst = [ReleaseMemory()] if isinstance(batch, Snapshot) else []
        return (
            out
            + self.sw.send(delta)
            + self._markers(names)
            + self.zones.update(self.host, names - self._infra())
            + self._flushes()
            + self._announce(now)
            + burst
        )

    def _announce(self, now: float) -> list:
        """bgp mode: the routes follow the FIPs the switch serves (ovsnat.core.announcing)."""
        ready, fips = self.sw.session.ready, self.fips
        return self.announcing.update(self.host, fips.serving, fips.moved, ready, self.timers, now)

    def _routing(self):
        return parse_logged(self.bridge_ids, self.routing_logged, self.host.cfg)

    def _security(self) -> HostSecurity:
        """The bridge's security groups; each malformed group logged once (its ports fail
        closed: ovsnat.compile.sg_owners)."""
        security = parse_bridge(self.bridge_ids)
        for gid, error in sorted(security.broken.items()):
            if self.sg_broken.get(gid) != error:
                LOG.error("ovsnat: %s; the ports in group %s get no new connection", error, gid)
        self.sg_broken = dict(security.broken)
        return security

    def _flushes(self) -> list:
        flushes = self.host.sg.take_flushes()
        return [FlushConntrack(tuple(flushes))] if flushes else []

    def _apply(self, batch) -> set[str]:
        if batch.bridge_ids is not None:
            self.bridge_ids = batch.bridge_ids
        if isinstance(batch, Snapshot):
            self.stats.inc("ovsdb_reconnects")
            if self.first_view:  # the controller's first view: what is plugged was here
                self.fips.seen_ofport = {
                    n: r.ofport for n, r in batch.rows.items() if r.link_state != "down"
                }
            changed = set(self.rows) | set(batch.rows)
            self.rows = dict(batch.rows)
            LOG.info(
                "ovsnat: OVSDB snapshot: %d interfaces on %s", len(self.rows), self.base_cfg.bridge
            )
            return changed
        for name in batch.removed:
            self.rows.pop(name, None)
        self.rows.update(batch.rows)
        return set(batch.rows) | batch.removed

    def _port(self, name: str):
        row = self.rows.get(name)
        return (
            None
            if row is None
            else port_from_row(name, row.ofport, row.external_ids, row.link_state)
        )

    def _ensure_host(self, now: float, into: Delta | None = None) -> tuple[bool, list]:
        """Build the host state once the uplink's ofport and the SNAT IP are known, or
        follow a change of either (recompiling, without forgetting which FIPs are live).
        `into`: the recompile is added to it, not sent (the caller sends it in one bundle
        with what the same OVSDB change does to the routing)."""
        cfg = self._config()
        if cfg is None:
            return False, []
        if self.host is None:
            self.host = self.sw.host = HostState(cfg)
            self.host.set_security(self._security())
            self.host.set_routing(self._routing())
            self.fips.set_host(self.host)
            for name in sorted(set(self.rows) - self._infra()):
                self.host.update(name, self._port(name))
            self.rejections.report(self.host)
            self.fips.changed(set(self.rows), self.rows, now, resident=self.first_view)
            self.first_view = False
            self.gateways.arm(cfg, self.timers, now)
            self.timers.at(now + DropCounts.POLL, DropCounts.KEY)
            return True, [ReleaseMemory()]
        if cfg == self.host.cfg:
            return False, []
        LOG.info(
            "ovsnat: host settings changed (uplink ofport %d, SNAT %s); recompiling",
            cfg.uplink_ofport,
            cfg.snat_ip,
        )
        recompiled = self.host.set_config(cfg)
        out = [] if into is not None else self.sw.send(recompiled)
        if into is not None:
            into.extend(recompiled)
        self.fips.set_host(self.host)
        self.gateways.arm(cfg, self.timers, now)
        for name in sorted(self.host.valid):
            self.fips.track(name, now)
        return False, out

    def _config(self) -> HostConfig | None:
        return self.settings.resolve(
            self.rows,
            self.bridge_ids,
            self.gateways.mac,
            self.host.cfg.snat_ip if self.host else None,
            self.gateways.macs,
            self.hops,
        )

    def _next_hops(self, hops: dict, now: float) -> list:
        """The ToRs in use changed: the group's buckets follow (a new host config). No next
        hop at all is not followed: zebra removes its routes when FRR stops (a restart, an
        upgrade), and the VMs' traffic keeps the ToRs it last used meanwhile, as zebra's
        --retain would keep the kernel's routes; a link without carrier is still skipped
        by its bucket's watch_port, and a ToR that BFD declares dead leaves the route
        (and the group) while the other one stays."""
        if not hops:
            if self.hops or self.sw.adopt_groups:
                LOG.warning("ovsnat: no next hop in the kernel's routes (FRR stopped?); "
                            "leaving traffic keeps the ToRs it last used")  # fmt: skip
            return []
        if hops == self.hops and not self.sw.adopt_groups:
            return []
        self.sw.adopt_groups = False
        LOG.info(
            "ovsnat: next hops now %s",
            ", ".join(f"{a} at {m}" for a, m in sorted(hops.items())),
        )
        self.hops = hops
        if self.host is None:  # built from OVSDB's first view, with these
            return []
        cfg = self._config()
        if cfg is not None and _tor_macs_only(cfg, self.host.cfg):
            self.host.cfg = cfg  # no flow uses a ToR's MAC: the group alone changes, at once
            return self.sw.send(Delta())
        out = self._ensure_host(now)[1]  # a new config sends its groups with its flows;
        return out + self.sw.send(Delta())  # else the groups alone

    def _infra(self) -> set[str]:
        return self.settings.infra()

    # --- the markers ------------------------------------------------------------------
    def _markers(self, names) -> list:
        """ovsnat-installed and ovsnat-ready on the rows `names` (ovsnat.core.markers), once the
        switch's flows are known."""
        if self.host is None or not self.sw.session.ready:
            return []
        busy = self.sw.session.in_flight_owners()
        return markers.changes(
            self.host,
            self.rows,
            names,
            lambda name: self.sw.confirmed(name, busy),
            self.rejections.errors_logged,
        )

    # --- packets ---------------------------------------------------------------------------
    def packet_in(self, in_port: int, table: int, data: bytes, now: float) -> list:
        """A frame the switch sent up: never raises, whatever its bytes (ovsnat.core.packet_in)."""
        return self.packets.handle(in_port, table, data, now)

    def learn_gateway(self, ext, mac: netaddr.EUI, ip: str, now: float) -> list:
        """A gateway's ARP (`ext` None: the untagged network's): follow its MAC."""
        return self._ensure_host(now)[1] if self.gateways.learn(ext, mac, ip) else []

    # --- time ------------------------------------------------------------------------------
    def next_wakeup(self) -> float | None:
        return self.timers.next_at()

    def tick(self, now: float) -> list:
        out = []
        for key in self.timers.due(now):
            if key == audit.KEY:  # these two re-arm themselves, host or not
                out += self.audit.due(now)
            elif key == DropCounts.KEY:
                out += self.refusals.due(self.host, self.sw.session, self.timers, now)
            elif self.host is None:
                continue
            elif key[0] == gateways.KEY:
                out += self.gateways.due(self.host.cfg, key, self.timers, self.sw.session, now)
            elif key == announcing.KEY:
                out += self._announce(now)
            elif key[0] == "handoff":
                out += self.sw.send(self.handoffs.due(self.host, key, now))
            else:
                out += self.fips.due(key, now)
        return out

    # --- faults ----------------------------------------------------------------------------
    def recover(self, now: float) -> list:
        """After an exception inside a handler the state may have diverged: rebuild it from
        the rows and re-dump the switch (a full resync). Repeated faults raise Fatal."""
        self.faults = [t for t in self.faults if now - t < FAULT_WINDOW] + [now]
        self.stats.inc("faults")
        if len(self.faults) >= FAULTS_BEFORE_EXIT:
            raise Fatal(f"{len(self.faults)} faults within {FAULT_WINDOW:.0f} s")
        LOG.error(
            "ovsnat: recovering from a fault: rebuilding the host state and "
            "resynchronising the switch"
        )
        self.audit.reset(now)  # releases a dump in progress
        self.refusals.reset(self.sw.session)
        self._build(self.fips.seen_ofport)
        self.audit.reset(now)
        out = self.sw.redump(now)
        return out + self._ensure_host(now)[1]

    # --- status ------------------------------------------------------------------------------
    def status(self, now: float) -> dict:
        return status_of(self, now)

    # --- ovs-vswitchd's control socket (ovsnat.core.vswitchd; the shim makes the calls) -------
    def chores(self, now: float) -> list:
        """Once a second: the calls on ovs-vswitchd that are due."""
        return self.vswitchd.due(self.host, self.handoffs, now) + self.zones.due(now)

    def result(self, result, now: float) -> list:
        """What one of those calls answered (a Probed, Reading or ZoneLimitsDone), or what
        the kernel's routes say now (NextHops, EchoesSeen)."""
        if isinstance(result, NextHops):
            return self._next_hops(dict(result.hops), now)
        if isinstance(result, EchoesSeen):
            self.echoes = result.addresses
            return self.fips.echoes_seen(result.addresses, now)  # its bundle's barrier announces
        if isinstance(result, (OwnRoutes, RoutesDone)):
            if isinstance(result, OwnRoutes):
                self.announcing.seen(result)
            else:
                self.announcing.done(result, now)
            return self._announce(now)
        return self.sw.send(self.vswitchd.result(result, self.host, self.handoffs, self.zones, now))


def _tor_macs_only(new: HostConfig, old: HostConfig) -> bool:
    """The configs differ in the ToRs' MACs at most (bgp mode's next hops)."""

    def without(cfg: HostConfig) -> HostConfig:
        return replace(cfg, routed=tuple(replace(r, tor_mac=None) for r in cfg.routed))

    return without(new) == without(old)
