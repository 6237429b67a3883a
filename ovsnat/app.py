"""ovsnat's controller as a Ryu/os-ken application: a thin shim over the host controller.

Run it with `ryu-manager --config-file ovsnat.conf ovsnat.app` (or `ovsnat-agent` on
os-ken). Every decision lives in ovsnat.controller, plain Python unit-tested without a
switch (as Faucet's faucet.py sits over valve.py). This module only:
- turns framework events into calls with `now`, inside the app's one event loop, so every
  state change happens in one place, serialized with the OpenFlow events;
- writes what they return: the one send point (`_write`);
- runs the OVSDB watcher and the clock in green threads, and posts their news as events;
- writes the status file and serves the metrics.
An exception inside a call is not left to the framework (which would log it and carry on
with a diverged state): the controller resynchronises, or exits for its supervisor.
"""

from __future__ import annotations

import logging
import os
import time

from ovsnat import config, connlimit, controller, dpctl, ovsdb, runtime, status
from ovsnat import framework as fw
from ovsnat.flows import KINDS
from ovsnat.metrics import Metrics
from ovsnat.model import ConfigError
from ovsnat.reconcile import Reconfigure

LOG = logging.getLogger("ovsnat")
config.register(fw.CONF)
fw.use_light_flow_stats()
TICK = 0.05              # how often the clock looks for deadlines that came
EXIT_DIVERGED = 70       # exit status after repeated faults (EX_SOFTWARE)


class EventOvsdb(fw.event.EventBase):
    """A batch from the OVSDB watcher (ovsdb.Snapshot or ovsdb.Changes)."""

    def __init__(self, batch):
        super().__init__()
        self.batch = batch


class EventTick(fw.event.EventBase):
    """A deadline of the host controller has come."""


class EventChores(fw.event.EventBase):
    """Once a second: the status file and PAT usage."""


class OvsNatApp(fw.BaseApp):
    OFP_VERSIONS = [fw.ofproto.OFP_VERSION]
    _EVENTS = [EventOvsdb, EventTick, EventChores]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            cfg = config.load(fw.CONF)
        except ConfigError as e:
            LOG.error("ovsnat: invalid configuration: %s", e)
            raise SystemExit(f"ovsnat: invalid configuration: {e}")
        opts = getattr(fw.CONF, "ovsnat")
        self.cfg, self.remote = cfg, opts.ovsdb_connection
        self.core = controller.HostController(cfg, time.time, opts.audit_interval)
        self.watcher = ovsdb.Watcher(self.remote, cfg.bridge, self._post_ovsdb)
        self.dp = None
        self.status_file = opts.status_file
        self.calls_since_status = 1
        self.chores = self.listed = 0
        self.meter = runtime.LoopMeter()
        self.metrics = Metrics(opts.metrics_port, opts.metrics_host, self._status)

    # --- green threads ---------------------------------------------------------------------
    def start(self):
        thread = super().start()
        self.meter.start()
        self.threads.append(fw.hub.spawn(self._ovsdb_loop))
        self.threads.append(fw.hub.spawn(self._clock))
        if self.metrics.enabled:
            self.threads.append(fw.hub.spawn(runtime.serve_metrics, self.metrics))
        LOG.info("ovsnat: bridge %s, uplink %s, OVSDB %s, SNAT %s:%d-%d, FIP activation %s",
                 self.cfg.bridge, self.cfg.uplink_port, self.remote,
                 self.cfg.snat_ip or "(from the bridge)", self.cfg.snat_port_min,
                 self.cfg.snat_port_max, self.cfg.fip_activation)
        return thread

    def stop(self):
        self.watcher.stop()
        super().stop()

    def _ovsdb_loop(self):
        while True:
            try:
                self.watcher.connect()
                self.watcher.run_forever()
                return
            except Exception as e:               # OVSDB not up yet, or gone: retry
                LOG.warning("ovsnat: OVSDB %s: %s; retrying in 1 s", self.remote, e)
                fw.hub.sleep(1)

    def _post_ovsdb(self, batch):
        self.send_event(self.name, EventOvsdb(batch))

    def _clock(self):
        chores_at = time.time() + 1
        while True:
            fw.hub.sleep(TICK)
            now = time.time()
            wake = self.core.next_wakeup()
            if wake is not None and wake <= now:
                self.send_event(self.name, EventTick())
            if now >= chores_at:
                chores_at = now + 1
                self.send_event(self.name, EventChores())

    def _status(self) -> dict:
        now = time.time()
        return {**self.core.status(now), **self.meter.status(now)}

    # --- the one way in, the one way out ---------------------------------------------------
    def _call(self, fn, *args) -> None:
        now, t0 = time.time(), time.perf_counter()
        self.calls_since_status += 1
        try:
            out = fn(*args, now)
        except Exception:
            LOG.exception("ovsnat: fault in %s", fn.__name__)
            try:
                out = self.core.recover(now)
            except controller.Fatal as e:
                LOG.critical("ovsnat: %s; exiting so the supervisor restarts ovsnat (the "
                             "switch keeps its flows meanwhile)", e)
                logging.shutdown()
                os._exit(EXIT_DIVERGED)
        self._write(out)
        self.meter.handler(fn.__name__, time.perf_counter() - t0)

    def _write(self, out) -> None:
        """Bytes to the switch (a large sync arrives as chunks: each goes out while the next
        is encoded, and the switch decodes meanwhile), key writes to OVSDB, conntrack zone
        limits to ovs-vswitchd."""
        for item in out:
            if isinstance(item, controller.IfaceKeys):
                self.watcher.write_keys(item.name, dict(item.set), item.remove)
            elif isinstance(item, connlimit.ZoneLimits):
                dpctl.apply_zone_limits(item)
            elif isinstance(item, Reconfigure):
                self.watcher.request_reconfigure()
            elif isinstance(item, bytes):
                if self.dp is not None:
                    self.dp.send(item)
            else:
                for chunk in item:
                    if self.dp is not None:
                        self.dp.send(chunk)
                        fw.hub.sleep(0)

    # --- events ----------------------------------------------------------------------------
    @fw.set_ev_cls(EventOvsdb)
    def on_ovsdb(self, ev):
        self._call(self.core.ovsdb, ev.batch)

    @fw.set_ev_cls(EventTick)
    def on_tick(self, ev):
        self._call(self.core.tick)

    @fw.set_ev_cls(fw.ofp_event.EventOFPSwitchFeatures, fw.CONFIG_DISPATCHER)
    def on_features(self, ev):
        self.dp = ev.msg.datapath
        runtime.patient_sends(self.dp)
        self._call(self.core.switch_up, self.dp.id)

    @fw.set_ev_cls(fw.ofp_event.EventOFPStateChange, fw.DEAD_DISPATCHER)
    def on_disconnect(self, ev):
        if ev.datapath is self.dp:        # not a late event of an older connection
            self.dp = None
            self._call(self.core.switch_down)

    @fw.set_ev_cls(fw.ofp_event.EventOFPFlowStatsReply, fw.MAIN_DISPATCHER)
    def on_flow_stats(self, ev):
        msg = ev.msg
        entries = [(s.table_id, s.cookie, s.digest, s.packets) for s in msg.body
                   if s.cookie >> 56 in KINDS]                 # is_ours, inlined: 100,000
        self._call(self.core.flow_stats, msg.xid, entries, _more(msg))

    @fw.set_ev_cls(fw.ofp_event.EventOFPMeterConfigStatsReply, fw.MAIN_DISPATCHER)
    def on_meter_stats(self, ev):
        msg = ev.msg
        meters = [(m.meter_id, tuple(b.rate for b in m.bands)) for m in msg.body]
        self._call(self.core.meter_stats, msg.xid, meters, _more(msg))

    @fw.set_ev_cls(fw.ofp_event.EventOFPErrorMsg, fw.MAIN_DISPATCHER)
    def on_error(self, ev):
        self._call(self.core.error, ev.msg.xid, ev.msg.type, ev.msg.code)

    @fw.set_ev_cls(fw.ofp_event.EventOFPBarrierReply, fw.MAIN_DISPATCHER)
    def on_barrier(self, ev):
        self._call(self.core.barrier, ev.msg.xid)

    @fw.set_ev_cls(fw.ofp_event.EventOFPPacketIn, fw.MAIN_DISPATCHER)
    def on_packet_in(self, ev):
        msg = ev.msg
        self._call(self.core.packet_in, msg.match.get("in_port"), msg.table_id, bytes(msg.data))

    @fw.set_ev_cls(EventChores)
    def on_chores(self, ev):
        t0 = time.perf_counter()
        self.chores += 1
        if self.core.wants_conntrack(time.time()):
            text = dpctl.dump_conntrack()
            if text is not None:
                self._call(self.core.conntrack, text)
        if self.metrics.enabled and self.core.host is not None and self.chores % 5 == 1:
            self._refresh_pat_usage()
        if self.status_file and (self.calls_since_status or self.meter.listed != self.listed):
            self.calls_since_status, self.listed = 0, self.meter.listed
            if not status.write_file(self.status_file, self._status()):
                self.status_file = ""
        self.meter.handler("chores", time.perf_counter() - t0)

    def _refresh_pat_usage(self):
        from ovsnat.inspect import pat_usage
        out = dpctl.dump_conntrack(self.core.host.cfg.ct_zone)
        if out is not None:
            self.core.stats.pat = pat_usage(self.core.host.cfg, out)

def _more(msg) -> bool:
    return bool(msg.flags & fw.ofproto.OFPMPF_REPLY_MORE)
