"""ovsnat's controller as a Ryu/os-ken application: a thin shim over the host controller.

Run it with `ryu-manager --config-file ovsnat.conf ovsnat.app` (or `ovsnat-agent` on
os-ken). Every decision lives in ovsnat.core.controller, plain Python unit-tested without a
switch (as Faucet's faucet.py sits over valve.py). This module only:
- turns framework events into calls with `now`, inside the app's one event loop;
- does what they return (`_write`, the one send point): bytes to the switch it was told is
  ours, and each effect (ovsnat.core.effects) by its type: key writes to OVSDB, calls on
  ovs-vswitchd handed to green threads (ovsnat.runtime.calls) whose answers come back as
  events, memory given back; no handler waits on anything;
- runs the OVSDB watcher and the clock in green threads (ovsnat.runtime.events), which post
  their news as events;
- writes the status file and serves the metrics (ovsnat.runtime).
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
from ovsnat.compile.flows import KINDS
from ovsnat.core.controller import HostController
from ovsnat.core.effects import (
    AdoptSwitch,
    FlushConntrack,
    IfaceKeys,
    Probe,
    ReadConntrack,
    Reconfigure,
    RefuseSwitch,
    ReleaseMemory,
    Routes,
    ZoneLimits,
)
from ovsnat.model import ConfigError
from ovsnat.runtime import config, dpctl, events, memory, outside
from ovsnat.runtime import framework as fw
from ovsnat.runtime.bgp_kernel import BgpKernel
from ovsnat.runtime.calls import Calls
from ovsnat.runtime.events import EventChores, EventOvsdb, EventResult, EventTick
from ovsnat.runtime.loopmeter import LoopMeter
from ovsnat.runtime.metrics import Metrics, serve_metrics
from ovsnat.runtime.switches import Switches

LOG = logging.getLogger("ovsnat")
config.register(fw.CONF)
fw.use_light_flow_stats()
EXIT_DIVERGED = 70  # exit status after repeated faults (EX_SOFTWARE)


class OvsNatApp(fw.BaseApp):
    OFP_VERSIONS = [fw.ofproto.OFP_VERSION]
    _EVENTS = [EventOvsdb, EventTick, EventChores, EventResult]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            cfg = config.load(fw.CONF)
        except ConfigError as e:
            LOG.error("ovsnat: invalid configuration: %s", e)
            raise SystemExit(f"ovsnat: invalid configuration: {e}") from None
        opts = fw.CONF.ovsnat
        self.cfg, self.remote = cfg, opts.ovsdb_connection
        self.metrics = Metrics(opts.metrics_port, opts.metrics_host, self._status)
        self.core = HostController(
            cfg, time.time, opts.audit_interval, pat_usage=self.metrics.enabled
        )
        self.watcher = ovsdb.Watcher(self.remote, cfg.bridge, self._post_ovsdb)
        self.calls = Calls(dpctl.Target(opts.vswitchd_ctl), self._post_result)
        self.routes = BgpKernel(cfg.bgp, self._post_result)  # bgp mode's kernel side
        self.switches = Switches(self.core.failures)
        self.status_file = opts.status_file
        self.calls_since_status, self.listed = 1, 0
        self.meter = LoopMeter()
        # What `_write` does with each effect the core returns (ovsnat.core.effects).
        self.effects = {
            IfaceKeys: lambda e, now: self._ovsdb_written(
                self.watcher.write_keys(e.name, dict(e.set), e.remove), now
            ),
            Reconfigure: lambda e, now: self._ovsdb_written(
                self.watcher.request_reconfigure(), now
            ),
            AdoptSwitch: lambda e, now: self.switches.adopt(e.dpid),
            RefuseSwitch: lambda e, now: self.switches.refuse(e.dpid),
            ReleaseMemory: lambda e, now: memory.release_memory(),
            ZoneLimits: lambda e, now: self.calls.run(e),
            FlushConntrack: lambda e, now: self.calls.run(e),
            ReadConntrack: lambda e, now: self.calls.run(e),
            Probe: lambda e, now: self.calls.run(e),
            Routes: lambda e, now: self.routes.run(e),
        }

    # --- green threads ---------------------------------------------------------------------
    def start(self):
        thread = super().start()
        self.meter.start()
        self.threads += [
            fw.hub.spawn(events.watch_ovsdb, self.watcher, self.remote),
            fw.hub.spawn(events.clock, self.core.next_wakeup, self._post),
            *self.calls.start(),
            *self.routes.start(),
        ]
        if self.metrics.enabled:
            self.threads.append(fw.hub.spawn(serve_metrics, self.metrics, self.core.failures))
        LOG.info("ovsnat: %s", config.describe(self.cfg, self.remote, self.calls.target))
        return thread

    def stop(self):
        self.watcher.stop()
        super().stop()

    def _post(self, event) -> None:
        self.send_event(self.name, event)

    def _post_ovsdb(self, batch):
        self._post(EventOvsdb(batch))

    def _post_result(self, result):
        self._post(EventResult(result))

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
            except Exception as e:  # core.controller.Fatal, or the recovery failed
                LOG.critical(
                    "ovsnat: %s; exiting so the supervisor restarts ovsnat (the "
                    "switch keeps its flows meanwhile)",
                    e,
                )
                logging.shutdown()
                os._exit(EXIT_DIVERGED)
        self.meter.handler(fn.__name__, time.perf_counter() - t0)

    def _write(self, out, now: float) -> None:
        """Do what a call returned: bytes go to our switch, an effect to its handler
        (`self.effects`). Anything else is a large sync's chunks: each goes out while the
        next is encoded (inside the caller's fault boundary), the switch decoding meanwhile."""
        for item in out:
            if isinstance(item, bytes):
                self.switches.send(item, now)
            elif type(item) in self.effects:
                self.effects[type(item)](item, now)
            else:
                for chunk in item:
                    if not self.switches.send(chunk, now):
                        break
                    fw.hub.sleep(0)

    def _ovsdb_written(self, sent: bool, now: float) -> None:
        outside.ovsdb_written(self.watcher, self.core.failures, sent, now)

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
        was = self.switches.gone(ev.datapath)  # None: refused, or an older connection's
        if was == "ours":
            self._call(self.core.switch_down)
        elif was == "other":
            self._call(self.core.switch_gone, ev.datapath.id)

    @fw.set_ev_cls(fw.ofp_event.EventOFPFlowStatsReply, fw.MAIN_DISPATCHER)
    def on_flow_stats(self, ev):
        msg = ev.msg
        if msg.datapath is self.switches.ours:  # another switch's replies are not ours
            entries = [
                (s.table_id, s.cookie, s.digest, s.packets)
                for s in msg.body
                if s.cookie >> 56 in KINDS
            ]  # is_ours, inlined: 100,000
            self._call(self.core.flow_stats, msg.xid, entries, _more(msg))

    @fw.set_ev_cls(fw.ofp_event.EventOFPMeterConfigStatsReply, fw.MAIN_DISPATCHER)
    def on_meter_stats(self, ev):
        msg = ev.msg
        if msg.datapath is self.switches.ours:
            meters = [(m.meter_id, tuple(b.rate for b in m.bands)) for m in msg.body]
            self._call(self.core.meter_stats, msg.xid, meters, _more(msg))

    @fw.set_ev_cls(fw.ofp_event.EventOFPGroupDescStatsReply, fw.MAIN_DISPATCHER)
    def on_group_desc(self, ev):
        msg = ev.msg
        if msg.datapath is self.switches.ours:
            groups = [(g.group_id, g.digest) for g in msg.body]
            self._call(self.core.group_stats, msg.xid, groups, _more(msg))

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
            self._call(self.core.packet_in, msg.match.get("in_port"), msg.table_id, bytes(msg.data))

    @fw.set_ev_cls(EventChores)
    def on_chores(self, ev):
        t0, calls = time.perf_counter(), self.calls_since_status
        self._call(self.core.chores)
        self.calls_since_status = calls  # asking is no change to report
        failing = "status_file" in self.core.failures.current
        if self.status_file and (calls or failing or self.meter.listed != self.listed):
            self.calls_since_status, self.listed = 0, self.meter.listed
            outside.write_status(self.status_file, self._status(), self.core.failures, time.time())
        self.meter.handler("chores+status file", time.perf_counter() - t0)


def _more(msg) -> bool:
    return bool(msg.flags & fw.ofproto.OFPMPF_REPLY_MORE)
