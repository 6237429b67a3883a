"""The host controller's side of its switch: connects and disconnects, the dump that
follows a connect (flows, meters, groups), barriers and errors. A mixin of
ovsnat.core.controller.HostController (its attributes are the controller's), split off
where the switch's conversation ends and the host's decisions begin.
"""

from __future__ import annotations

import logging

from ovsnat.core.effects import AdoptSwitch, RefuseSwitch
from ovsnat.core.reconcile import FULL_SYNC

LOG = logging.getLogger("ovsnat")


class SwitchEvents:
    def switch_up(self, dpid: int, now: float) -> list:
        """A switch connected: ours is adopted (AdoptSwitch, then its dump), another refused
        (ovsnat.core.datapaths); one that comes before OVSDB named ours waits."""
        verdict = self.identity.arrived(dpid)
        return (
            [RefuseSwitch(dpid)]
            if verdict == "refuse"
            else self._connect(dpid, now)
            if verdict == "adopt"
            else []
        )

    def _connect(self, dpid: int, now: float) -> list:
        self.audit.reset(now)
        return [AdoptSwitch(dpid)] + self.sw.connect(dpid, now) + self.zones.reapply(self.host)

    def _datapath_named(self, datapath_id: str, now: float) -> list:
        refuse, adopt, drop = self.identity.named(datapath_id)
        out = [RefuseSwitch(d) for d in refuse]
        if drop:
            out += [RefuseSwitch(self.sw.dpid)] + self._switch_lost(now)
        return out + (self._connect(adopt, now) if adopt is not None else [])

    def switch_down(self, now: float) -> list:
        """Our switch disconnected."""
        self.identity.gone(self.identity.current)
        return self._switch_lost(now)

    def switch_gone(self, dpid: int, now: float) -> list:
        """A switch we did not program (yet) disconnected."""
        return self.switch_down(now) if self.identity.gone(dpid) else []

    def _switch_lost(self, now: float) -> list:
        self.audit.reset(now)
        self.refusals.reset(self.sw.session)
        self.sw.disconnect()
        return []

    def flow_stats(self, xid: int, entries, more: bool, now: float) -> list:
        """Part of a flow dump: (table, cookie, body digest) of ovsnat's flows."""
        if self.audit.owns(xid):
            return self.audit.flow_stats(xid, entries, more, now)
        if self.refusals.owns(xid):
            return self.refusals.flow_stats(self.host, self.sw.session, entries, more, xid)
        keys = [(e[0], e[1]) for e in entries]
        return self._dump_done(now) if self.sw.session.dumped_flows(xid, keys, more) else []

    def meter_stats(self, xid: int, meters, more: bool, now: float) -> list:
        """(meter id, (rate,)) of the switch's meters: the punt meters are compared by rate."""
        return self._dump_done(now) if self.sw.session.dumped_meters(xid, meters, more) else []

    def group_stats(self, xid: int, groups, more: bool, now: float) -> list:
        """(group id, digest) of the switch's groups (ovsnat.openflow.digest)."""
        return self._dump_done(now) if self.sw.session.dumped_groups(xid, groups, more) else []

    def _dump_done(self, now: float) -> list:
        """The switch told us what it holds: keep the FIPs it still answers for (they were
        live before a restart: no flap, no GARP), then send the difference."""
        installed = self.sw.session.installed
        LOG.info("ovsnat: switch holds %d ovsnat flows", len(installed))
        if self.host is None:
            return []
        for name in self.host.adopt_installed(installed):
            LOG.info("ovsnat: FIP of port %s was active before the restart; kept", name)
            self.fips.track(name, now)
        self.fips.forget_announced()
        out = self.sw.sync(now)
        self.fips.announce_confirmed(now)
        return out + self._markers(self.rows) + self._announce(now)

    def barrier(self, xid: int, now: float) -> list:
        bundle, out = self.sw.barrier(xid, now)
        if bundle is not None and bundle.failed is None:
            out += self._markers(self.rows if FULL_SYNC in bundle.owners else bundle.owners)
            self.fips.announce_confirmed(now)
            out += self._announce(now)
        return out

    def error(self, xid: int, type_: int, code: int, now: float) -> list:
        self.sw.error(xid, type_, code)
        return []
