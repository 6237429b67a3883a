"""`ovsnat-neutron-agent`: the host side of ovsnat in OpenStack (runs in Neutron's venv).

It reports state like every Neutron agent (its row is what the `ovsnat` mechanism driver
binds ports against), writes each local VM port's contract keys onto its OVSDB Interface
row, reports the port up to Neutron once the controller says its flows are in
(`ovsnat-installed=true`), or where this host holds an inactive binding of the port (a live
migration's destination, before the guest arrives) once the controller accepts its keys
(`ovsnat-ready=true`: ovsnat.neutron.devices says why), and writes the host's SNAT address,
its ports' security groups and their networks' routers onto the bridge.

Level-triggered: one loop compares what OVSDB shows with what Neutron said last, and only
writes differences. It asks Neutron (RPC) about a port when the port appears, when a push
names it, and for every local port at start and after any outage (agent_health.py says
what counts as one). Nothing is removed on silence or errors: a port loses its keys only when
Neutron answers that it does not exist. After a sync it reports up only the ports Neutron
does not already have ACTIVE here, and down those it has ACTIVE here without a row (unplugged
while the agent was away). Idle, the agent sends Neutron nothing but its heartbeat.
"""

from __future__ import annotations

# Neutron's agents run on oslo.service's threading backend (no eventlet), and the backend
# must be chosen before anything imports oslo.messaging (as neutron/cmd/agents does).
from oslo_service import backend as _backend

_backend.init_backend(_backend.BackendType.THREADING)

import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from neutron_lib import context as n_context  # noqa: E402
from neutron_lib.agent import topics  # noqa: E402
from oslo_config import cfg  # noqa: E402
from oslo_log import log  # noqa: E402

from ovsnat.model.validate import REPORT_KEY  # noqa: E402
from ovsnat.neutron import constants as c  # noqa: E402
from ovsnat.neutron import opts  # noqa: E402
from ovsnat.neutron.agent_health import RETRY, Health  # noqa: E402
from ovsnat.neutron.agent_routers import RouterSync  # noqa: E402
from ovsnat.neutron.agent_sg import GroupSync, admin_down  # noqa: E402
from ovsnat.neutron.agent_snat import SNAT_BACKOFF, SnatAddress  # noqa: E402
from ovsnat.neutron.devices import forgotten, ports_up  # noqa: E402
from ovsnat.neutron.hostlimits import ControllerLimits  # noqa: E402
from ovsnat.neutron.keys import apply_diff, diff_keys  # noqa: E402

LOG = log.getLogger(__name__)

BATCH = 100  # ports per get_ports call


class _Held(Exception):
    """A call held back after a server error (Health.holds): not made this pass."""


class OvsnatAgent(SnatAddress):
    """One loop thread does all the work; RPC and OVSDB threads only mark and wake it. The
    host's SNAT address is agent_snat.py's part of the pass."""

    def __init__(self, conf) -> None:
        from neutron.agent import rpc as agent_rpc

        from ovsnat.neutron.agent_rpc import DeviceApi, OvsnatPluginApi, PushEndpoint

        self.conf = conf
        self.bridge = conf.OVS.integration_bridge
        self.host = conf.host
        self.agent_id = f"ovsnat-{self.host}"
        self.context = n_context.get_admin_context_without_session()
        self.state_rpc = agent_rpc.PluginReportStateAPI(topics.REPORTS)
        self.device_rpc = DeviceApi()
        self.ovsnat_rpc = OvsnatPluginApi()
        self.endpoint = PushEndpoint(self.mark_ports, self.mark_network, self.mark_activated)
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.dirty: set[str] = set()
        self.reup: set[str] = set()  # ports to report up again (activated here)
        self.full_sync = True
        self.snat_wanted = True
        self.desired: dict[str, dict | None] = {}  # port id -> keys (None: no such port)
        self.bindings: dict[str, dict | None] = {}  # port id -> this host's binding
        self.reported_up: set[str] = set()
        self.neutron_up: set[str] = set()  # local ports Neutron has ACTIVE here
        self.orphans: set[str] = set()  # ACTIVE here in Neutron, with no row here
        self.snat_ip: str | None = None
        self.snat_next = 0.0
        self.snat_backoff = SNAT_BACKOFF[0]
        self.datapath_type = "system"
        self.devices = 0
        self.stopping = threading.Event()
        self.health = Health(conf.AGENT.report_interval, self.resync, self.stopping)
        self.ovsdb = None
        self.limits = ControllerLimits(conf.ovsnat.controller_config)
        self.fast_retry = False  # the last pass failed on something to retry at once
        self.sg = GroupSync(self)  # security groups: the Bridge's group keys
        self.routers = RouterSync(self)  # routers: the Bridge's routing keys

    # --- marks (any thread) --------------------------------------------------------------
    def mark_ports(self, port_ids: list[str]) -> None:
        with self.lock:
            self.dirty.update(port_ids)
        self.wake.set()

    def mark_activated(self, port_id: str, host: str) -> None:
        """Neutron activated this host's binding of a port (the end of a live migration)
        and set the port DOWN; a port already reported up here is reported again, as the
        OVS agent does, so it goes ACTIVE on its new host."""
        if host != self.host:
            return
        with self.lock:
            self.dirty.add(port_id)
            self.reup.add(port_id)
        self.wake.set()

    def mark_network(self, network_id: str) -> None:
        with self.lock:
            self.dirty.update(
                pid
                for pid, keys in self.desired.items()
                if keys and keys.get("ovsnat-network") == network_id
            )
        self.wake.set()

    def resync(self, recovered: bool) -> None:
        """A full sync on the next pass (after Neutron came back: the SNAT address too)."""
        with self.lock:
            self.full_sync = True
            self.snat_wanted |= recovered
        self.wake.set()

    # --- heartbeat ------------------------------------------------------------------------
    def agent_state(self, start: bool) -> dict:
        state = {
            "binary": c.AGENT_BINARY,
            "host": self.host,
            "topic": c.AGENT_TOPIC,
            "agent_type": c.AGENT_TYPE,
            "configurations": {
                c.CONF_BRIDGE: self.bridge,
                c.CONF_PHYSNETS: list(self.conf.ovsnat.physical_networks),
                c.CONF_DATAPATH: self.datapath_type,
                "devices": self.devices,
                "log_agent_heartbeats": self.conf.AGENT.log_agent_heartbeats,
            },
        }
        report = self.limits.report()
        if report is not None:  # what the host reserves: the driver refuses overlaps
            state["configurations"][REPORT_KEY] = report
        if start:
            state["start_flag"] = True
        return state

    def report_state(self, start: bool) -> str | None:
        return self.state_rpc.report_state(self.context, self.agent_state(start), True)

    # --- the loop -------------------------------------------------------------------------
    def run_once(self) -> bool:
        """One pass; returns True when everything is done (else retry: after RETRY, or,
        when only calls held back after a server error are left, once the first may be
        made again)."""
        self.fast_retry = False
        snap = self.ovsdb.snapshot()
        if not snap.connected or not snap.bridge_found:
            self.fast_retry = True
            return False
        self.datapath_type = snap.datapath_type
        self.devices = len(snap.rows)
        local = set(snap.rows)
        if self.health.settle_due():
            self.resync(False)
        with self.lock:
            full, self.full_sync = self.full_sync, False
            dirty, self.dirty = self.dirty, set()
            for gone in set(self.desired) - local:
                del self.desired[gone]
                self.bindings.pop(gone, None)
                self.neutron_up.discard(gone)
        fetch = local if full else (dirty & local) | (local - set(self.desired))
        ok = self._fetch(sorted(fetch), full)
        if ok and full and self.sg.on_bridge(snap) and self.routers.on_bridge(snap):
            # the ports first (see _apply)
            self._apply(snap)
        ok = ok and (not full or self._fetch_orphans(local))
        if self.health.neutron_ok:  # first: the routers' external networks need its network
            ok &= self._snat(snap)
        ok &= self.sg.before_ports(snap, full) & self.routers.before_ports(snap, full)
        ok &= self._apply(snap)
        ok = ok and self.sg.after_ports(snap) and self.routers.after_ports(snap)
        if not self.health.neutron_ok:  # cut off: the rest would only wait for timeouts
            return False
        return ok & self._report_devices(snap, full) & self.routers.report_fips(snap, full)

    def _failed(self, what: str, error: Exception) -> None:
        """A call failed: held back after a server error, else retried soon."""
        if not self.health.rpc_failed(what, error):
            self.fast_retry = True

    def _held(self, what: str) -> bool:
        return self.health.holds.held(what, time.monotonic())

    def _answered(self, what: str) -> None:
        self.health.answered()
        self.health.holds.ok(what)

    def _fetch(self, port_ids: list[str], full: bool) -> bool:
        for i in range(0, len(port_ids), BATCH):
            chunk = port_ids[i : i + BATCH]
            try:
                if self._held("get_ports"):
                    raise _Held
                answer = self.ovsnat_rpc.get_ports(
                    self.context, self.host, chunk, self.health.call_timeout()
                )
            except Exception as e:
                if not isinstance(e, _Held):
                    self._failed("get_ports", e)
                with self.lock:
                    self.dirty.update(port_ids[i:])
                    self.full_sync |= full
                return False
            self._answered("get_ports")
            with self.lock:
                for pid in chunk:
                    port = answer.get(pid)
                    self.desired[pid] = port["keys"] if port else None
                    self.bindings[pid] = port.get("binding") if port else None
                    (self.neutron_up.add if port and port["up"] else self.neutron_up.discard)(pid)
                # re-bound and set DOWN by Neutron since it was reported (devices.py)
                self.reported_up -= forgotten(
                    {pid: answer[pid] for pid in chunk if answer.get(pid)}, self.reported_up
                )
        return True

    def _fetch_orphans(self, local: set[str]) -> bool:
        """At a full sync: ports Neutron has ACTIVE on this host whose row is not here (a
        port unplugged while this agent was down): they are reported down."""
        try:
            if self._held("get_up_ports"):
                raise _Held
            up_here = self.ovsnat_rpc.get_up_ports(self.context, self.host)
        except Exception as e:
            if not isinstance(e, _Held):
                self._failed("get_up_ports", e)
            with self.lock:
                self.full_sync = True
            return False
        self._answered("get_up_ports")
        with self.lock:
            self.orphans = set(up_here) - local
        return True

    def _apply(self, snap) -> bool:
        """Write the keys of each port whose groups and routing the Bridge holds (into
        `snap` too). A full sync calls it before its other fetches as well: a change made
        during an outage (a FIP associated meanwhile) takes effect about 0.35 s sooner."""
        ok = True
        for pid, row in snap.rows.items():
            if pid not in self.desired:
                continue
            if not self.sg.covers(self.desired[pid]) or not self.routers.covers(self.desired[pid]):
                ok = False  # its groups or routing not on the bridge yet (agent_sg, _routers)
                continue
            diff = diff_keys(row.external_ids, self.desired[pid] or {})
            if not diff:
                continue
            try:
                self.ovsdb.write_keys("Interface", row.name, diff)
                apply_diff(row.external_ids, diff)
                LOG.info(
                    "port %s (%s): set %s, removed %s", pid, row.name, diff.set, list(diff.remove)
                )
            except Exception as e:
                LOG.warning("port %s: OVSDB write failed (%s); retrying", pid, e)
                self.fast_retry = True
                ok = False
        return ok

    def _report_devices(self, snap, full: bool) -> bool:
        """update_device_up once the controller marked the port installed (the port goes
        ACTIVE, Nova gets network-vif-plugged), or ready where this host's binding is
        inactive (Nova gets network-vif-plugged before the guest moves here);
        update_device_down when the marker or the row went away. After a (re)sync every
        such port that Neutron does not have ACTIVE here is reported again (the others need
        nothing; an inactive binding's port is reported again, a repeated event Nova
        ignores)."""
        rows = {pid: row.external_ids for pid, row in snap.rows.items()}
        with self.lock:
            wanted = ports_up(rows, self.bindings) - admin_down(self.desired)
            self.reported_up -= self.reup
            self.reup.clear()
            if full:  # Neutron's view is the truth: report what differs from it
                self.reported_up = self.neutron_up | self.orphans
                self.orphans = set()
        up = sorted(wanted - self.reported_up)
        down = sorted(self.reported_up - wanted)
        if not up and not down:
            return True
        if self._held("update_device_list"):
            return False
        try:
            result = self.device_rpc.update_device_list(
                self.context, up, down, self.agent_id, self.host
            )
        except Exception as e:
            self._failed("update_device_list", e)
            return False
        self._answered("update_device_list")
        # devices_up lists ids; devices_down lists {"device": id, "exists": bool}
        self.reported_up |= set(result.get("devices_up", []))
        self.reported_up -= {
            d["device"] if isinstance(d, dict) else d for d in result.get("devices_down", [])
        }
        failed = result.get("failed_devices_up", []) + result.get("failed_devices_down", [])
        LOG.info("devices up %s, down %s, failed %s", up, down, failed)
        return not failed

    def loop(self) -> None:
        while not self.stopping.is_set():
            self.wake.clear()
            try:
                done = self.run_once()
            except Exception:
                LOG.exception("agent pass failed; retrying")
                done = False
            self.wake.wait(self._next_wait(done))

    def _next_wait(self, done: bool) -> float | None:
        """Sleep until woken, except to retry failed work, for the second sync after an
        outage, or to ask for a SNAT address again (the only requests an idle agent makes
        besides its heartbeat, and only while Neutron has no external network for it)."""
        if not done:
            held = self.health.holds.next_at()
            if self.fast_retry or held is None:
                return RETRY
            return max(RETRY, held - time.monotonic())
        deadlines = [
            t
            for t in (self.snat_next if self.snat_ip is None else None, self.health.settle_at)
            if t is not None
        ]
        return max(0.1, min(deadlines) - time.monotonic()) if deadlines else None

    # --- lifecycle ------------------------------------------------------------------------
    def connect_ovsdb(self) -> None:
        from ovsnat.neutron.agent_ovsdb import LocalOvsdb

        while not self.stopping.is_set():
            try:
                self.ovsdb = LocalOvsdb(
                    self.conf.OVS.ovsdb_connection,
                    self.bridge,
                    self.wake.set,
                    self.conf.OVS.ovsdb_timeout,
                )
                return
            except Exception as e:
                LOG.warning(
                    "OVSDB %s not reachable (%s); retrying", self.conf.OVS.ovsdb_connection, e
                )
                self.stopping.wait(RETRY)

    def run(self) -> None:
        from ovsnat.neutron.agent_rpc import start_consumers

        self.connect_ovsdb()
        self.datapath_type = self.ovsdb.snapshot().datapath_type or "system"
        start_consumers(self.endpoint, self.sg.endpoint, self.routers.endpoint)
        self.health.start(self.report_state)
        LOG.info(
            "ovsnat-neutron-agent on host %s, bridge %s, physnets %s",
            self.host,
            self.bridge,
            self.conf.ovsnat.physical_networks,
        )
        self.loop()


def main(argv: list[str] | None = None) -> int:
    from neutron.common import config as common_config
    from neutron.conf.agent import common as agent_conf

    common_config.register_common_config_options()
    agent_conf.register_agent_state_opts_helper(cfg.CONF)
    opts.register(cfg.CONF)
    common_config.init(sys.argv[1:] if argv is None else argv)
    common_config.setup_logging()
    agent = OvsnatAgent(cfg.CONF)
    try:
        agent.run()
    except KeyboardInterrupt:
        pass
    finally:
        agent.stopping.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
