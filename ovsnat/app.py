"""ovsnat's controller as a Ryu/os-ken application: a thin shim over the host controller.

Run it with `ryu-manager --config-file ovsnat.conf ovsnat.app` (or `ovsnat-agent` on
os-ken). Every decision lives in ovsnat.core.controller, plain Python unit-tested without a
switch (as Faucet's faucet.py sits over valve.py). This module only:
- turns framework events into calls with `now`, inside the app's one event loop;
- does what they return (`_write`): bytes to the switch it was told is ours (the one send
  point), key writes to OVSDB, calls on ovs-vswitchd handed to green threads
  (ovsnat.runtime.calls) whose answers come back as events: no handler waits on anything;
- runs the OVSDB watcher and the clock in green threads, and posts their news as events;
- writes the status file and serves the metrics (ovsnat.runtime.plumbing).
An exception inside a call, or while doing what it returned, is not left to the framework
(which would log it and carry on diverged): the controller resynchronises, or exits for
its supervisor. A failure outside (a send, a write) is logged once with what it means and
shown in the status (ovsnat.core.failures).
"""

from __future__ import annotations

import logging
import os
import time

from ovsnat import ovsdb
from ovsnat.core import controller
from ovsnat.runtime import config, dpctl, calls as effects, plumbing as runtime
from ovsnat.runtime import framework as fw
from ovsnat.core.effects import AdoptSwitch, IfaceKeys, Reconfigure, RefuseSwitch, ReleaseMemory
from ovsnat.compile.flows import KINDS
from ovsnat.runtime.metrics import Metrics
from ovsnat.model import ConfigError

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
    """Once a second: the calls on ovs-vswitchd that are due, the status file."""


class EventResult(fw.event.EventBase):
    """What a call on ovs-vswitchd answered (ovsnat.runtime.calls)."""

    def __init__(self, result):
        super().__init__()
        self.result = result


class OvsNatApp(fw.BaseApp):
    OFP_VERSIONS = [fw.ofproto.OFP_VERSION]
    _EVENTS = [EventOvsdb, EventTick, EventChores, EventResult]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            cfg = config.load(fw.CONF)
        except ConfigError as e:
            LOG.error("ovsnat: invalid configuration: %s", e)
            raise SystemExit(f"ovsnat: invalid configuration: {e}")
        opts = getattr(fw.CONF, "ovsnat")
        self.cfg, self.remote = cfg, opts.ovsdb_connection
        self.metrics = Metrics(opts.metrics_port, opts.metrics_host, self._status)
        self.core = controller.HostController(cfg, time.time, opts.audit_interval,
                                              pat_usage=self.metrics.enabled)
        self.watcher = ovsdb.Watcher(self.remote, cfg.bridge, self._post_ovsdb)
        self.effects = effects.Effects(dpctl.Target(opts.vswitchd_ctl), self._post_result)
        self.switches = runtime.Switches(self.core.failures)
        self.status_file = opts.status_file
        self.calls_since_status, self.listed = 1, 0
        self.meter = runtime.LoopMeter()

    # --- green threads ---------------------------------------------------------------------
    def start(self):
        thread = super().start()
        self.meter.start()
        self.threads += [fw.hub.spawn(self._ovsdb_loop), fw.hub.spawn(self._clock),
                         *self.effects.start()]
        if self.metrics.enabled:
            self.threads.append(fw.hub.spawn(runtime.serve_metrics, self.metrics,
                                             self.core.failures))
        LOG.info("ovsnat: bridge %s, uplink %s, OVSDB %s, SNAT %s:%d-%d, FIP activation %s, "
                 "ovs-vswitchd through %s", self.cfg.bridge, self.cfg.uplink_port, self.remote,
                 self.cfg.snat_ip or "(from the bridge)", self.cfg.snat_port_min,
                 self.cfg.snat_port_max, self.cfg.fip_activation,
                 self.effects.target.describe())
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

    def _post_result(self, result):
        self.send_event(self.name, EventResult(result))

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
            self._write(fn(*args, now), now)
        except Exception:
            LOG.exception("ovsnat: fault in %s", fn.__name__)
            try:
                self._write(self.core.recover(now), now)
            except Exception as e:               # controller.Fatal, or the recovery failed
                LOG.critical("ovsnat: %s; exiting so the supervisor restarts ovsnat (the "
                             "switch keeps its flows meanwhile)", e)
                logging.shutdown()
                os._exit(EXIT_DIVERGED)
        self.meter.handler(fn.__name__, time.perf_counter() - t0)

    def _write(self, out, now: float) -> None:
        """Do what a call returned. A large sync arrives as chunks: each goes out while the
        next is encoded (inside the caller's fault boundary), the switch decoding meanwhile."""
        for item in out:
            if isinstance(item, bytes):
                self.switches.send(item, now)
            elif isinstance(item, IfaceKeys):
                runtime.ovsdb_written(self.watcher, self.core.failures, self.watcher.write_keys(
                    item.name, dict(item.set), item.remove), now)
            elif isinstance(item, Reconfigure):
                runtime.ovsdb_written(self.watcher, self.core.failures,
                                      self.watcher.request_reconfigure(), now)
            elif isinstance(item, AdoptSwitch):
                self.switches.adopt(item.dpid)
            elif isinstance(item, RefuseSwitch):
                self.switches.refuse(item.dpid)
            elif not self.effects.run(item):      # else: an iterator of chunks
                for chunk in item:
                    if not self.switches.send(chunk, now):
                        break
                    fw.hub.sleep(0)

    # --- events ----------------------------------------------------------------------------
    @fw.set_ev_cls(EventOvsdb)
    def on_ovsdb(self, ev):
        self._call(self.core.ovsdb, ev.batch)

    @fw.set_ev_cls(EventTick)
    def on_tick(self, ev):
        self._call(self.core.tick)

    @fw.set_ev_cls(EventResult)
    def on_result(self, ev):
        self._call(self.core.result, ev.result)

    @fw.set_ev_cls(fw.ofp_event.EventOFPSwitchFeatures, fw.CONFIG_DISPATCHER)
    def on_features(self, ev):
        self.switches.connected(ev.msg.datapath)
        self._call(self.core.switch_up, ev.msg.datapath.id)

    @fw.set_ev_cls(fw.ofp_event.EventOFPStateChange, fw.DEAD_DISPATCHER)
    def on_disconnect(self, ev):
        was = self.switches.gone(ev.datapath)    # None: refused, or an older connection's
        if was == "ours":
            self._call(self.core.switch_down)
        elif was == "other":
            self._call(self.core.switch_gone, ev.datapath.id)

    @fw.set_ev_cls(fw.ofp_event.EventOFPFlowStatsReply, fw.MAIN_DISPATCHER)
    def on_flow_stats(self, ev):
        msg = ev.msg
        if msg.datapath is self.switches.ours:               # another switch's replies are not ours
            entries = [(s.table_id, s.cookie, s.digest, s.packets) for s in msg.body
                       if s.cookie >> 56 in KINDS]             # is_ours, inlined: 100,000
            self._call(self.core.flow_stats, msg.xid, entries, _more(msg))

    @fw.set_ev_cls(fw.ofp_event.EventOFPMeterConfigStatsReply, fw.MAIN_DISPATCHER)
    def on_meter_stats(self, ev):
        msg = ev.msg
        if msg.datapath is self.switches.ours:
            meters = [(m.meter_id, tuple(b.rate for b in m.bands)) for m in msg.body]
            self._call(self.core.meter_stats, msg.xid, meters, _more(msg))

    @fw.set_ev_cls(fw.ofp_event.EventOFPErrorMsg, fw.MAIN_DISPATCHER)
    def on_error(self, ev):
        if ev.msg.datapath is self.switches.ours:
            self._call(self.core.error, ev.msg.xid, ev.msg.type, ev.msg.code)

    @fw.set_ev_cls(fw.ofp_event.EventOFPBarrierReply, fw.MAIN_DISPATCHER)
    def on_barrier(self, ev):
        if ev.msg.datapath is self.switches.ours:
            self._call(self.core.barrier, ev.msg.xid)

    @fw.set_ev_cls(fw.ofp_event.EventOFPPacketIn, fw.MAIN_DISPATCHER)
    def on_packet_in(self, ev):
        msg = ev.msg
        if msg.datapath is self.switches.ours:
            self._call(self.core.packet_in, msg.match.get("in_port"), msg.table_id,
                       bytes(msg.data))

    @fw.set_ev_cls(EventChores)
    def on_chores(self, ev):
        t0, calls = time.perf_counter(), self.calls_since_status
        self._call(self.core.chores)
        self.calls_since_status = calls           # asking is no change to report
        failing = "status_file" in self.core.failures.current
        if self.status_file and (calls or failing or self.meter.listed != self.listed):
            self.calls_since_status, self.listed = 0, self.meter.listed
            runtime.write_status(self.status_file, self._status(), self.core.failures,
                                 time.time())
        self.meter.handler("chores+status file", time.perf_counter() - t0)


def _more(msg) -> bool:
    return bool(msg.flags & fw.ofproto.OFPMPF_REPLY_MORE)
