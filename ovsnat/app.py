"""The controller: keeps one host's flows equal to what its OVSDB says.

Run it with `ryu-manager --config-file ovsnat.conf ovsnat.app` (or `ovsnat-agent` on os-ken).
This module and ovsnat.ofmsgs are the only ones that speak OpenFlow; everything they send is
computed by the pure core (ovsnat.state, ovsnat.compiler).

- OVSDB batches arrive as events in this app's own event loop, so every state change happens
  in one place, serialized with the OpenFlow events.
- On datapath connect: dump ovsnat's flows and meters, diff them against the desired state by
  (table, cookie) and send only the difference, in one atomic OpenFlow bundle. A restart with
  nothing changed sends no flow_mod, and flows keep their counters.
- On port events: the changed VMs' flows only, in one bundle.
- A rejected bundle is retried owner by owner, so one bad VM never blocks the others;
  OpenFlow errors are matched by xid to the flow and the port that caused them.
- When a FIP's flows are installed, gratuitous ARPs announce it on the uplink. With no
  configured external_gateway_mac the gateway is resolved (and followed) by ARP.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import os
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field

import netaddr

from ovsnat import config, icmp, metrics, ofmsgs, ofwire, ovsdb
from ovsnat.memory import release_memory
from ovsnat import framework as fw
from ovsnat.compiler import METERS
from ovsnat.flows import COOKIE_HOST, COOKIE_VM, cookie_owner, is_ours
from ovsnat.model import ConfigError, HostConfig, mac_str, with_gateway_mac
from ovsnat.pipeline import UPLINK_ARP
from ovsnat.state import Delta, HostState, port_from_row

LOG = logging.getLogger("ovsnat")
GARP_DELAYS = (0.0, 0.5, 1.5)          # three announcements of a FIP that became live here
ACTIVATION_SETTLE = 0.1                # after the first GARP, let the previous host yield
GATEWAY_ARP_INTERVAL = (1, 30)         # seconds: until resolved, then to follow changes

config.register(fw.CONF)
fw.use_light_flow_stats()
XID_BASE = 0xC0000000                  # xids of packed messages (the framework's are random)
SEND_CHUNK = 4096                      # messages per socket write during a large sync
SEND_TIMEOUT = 60.0                    # seconds a switch may read nothing before sends fail


class EventOvsdb(fw.event.EventBase):
    """A batch from the OVSDB watcher (ovsdb.Snapshot or ovsdb.Changes)."""

    def __init__(self, batch):
        super().__init__()
        self.batch = batch


class EventTick(fw.event.EventBase):
    """Periodic work (gateway ARP) run inside the event loop."""


class EventActivate(fw.event.EventBase):
    """Light the FIP of a port whose VM showed up (after the settle time)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name


@dataclass
class Bundle:
    """One atomic batch of flow changes in flight. Messages carry consecutive xids from
    first_xid: the open request, the deletes, the adds, the commit; so an error's xid names
    the flow that caused it without keeping the flows around."""

    id: int
    first_xid: int
    delete: list                                   # (table, cookie) keys
    add_keys: list = field(default_factory=list)
    owners: set = field(default_factory=set)
    announce: list = field(default_factory=list)   # (responder key, FIP) to GARP on success
    failed: str | None = None
    retry: bool = True
    sent_at: float = 0.0                           # unix time its last bytes were written

    def key_of(self, xid: int):
        i = xid - self.first_xid - 1
        if 0 <= i < len(self.delete):
            return self.delete[i]
        i -= len(self.delete)
        return self.add_keys[i] if 0 <= i < len(self.add_keys) else None

    @property
    def last_xid(self) -> int:
        return self.first_xid + len(self.delete) + len(self.add_keys) + 2


class OvsNatApp(fw.BaseApp):
    OFP_VERSIONS = [fw.ofproto.OFP_VERSION]
    _EVENTS = [EventOvsdb, EventTick, EventActivate]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            self.base_cfg = config.load(fw.CONF)
        except ConfigError as e:
            LOG.error("ovsnat: invalid configuration: %s", e)
            raise SystemExit(f"ovsnat: invalid configuration: {e}")
        opts = getattr(fw.CONF, "ovsnat")
        self.remote = opts.ovsdb_connection
        self.rows: dict[str, ovsdb.IfaceRow] = {}
        self.host: HostState | None = None
        self.gateway_mac = self.base_cfg.external_gateway_mac
        self.dp = None
        self.installed: set | None = None         # (table, cookie) known to be on the switch
        self.meters: set | None = None
        self.dump: dict = {}                      # xid -> partial dump while collecting
        self.bundles: dict[int, Bundle] = {}
        self.barriers: dict[int, int] = {}        # barrier xid -> bundle id
        self.bundle_ids = itertools.count(1)
        self.xids = itertools.count(XID_BASE)
        self.status_dirty = False
        self.reported: dict[str, str] = {}        # port name -> last logged rejection
        self.reported_errors: dict[str, str] = {}  # port name -> last logged error
        self.failed_owners: dict[int, str] = {}   # owner cookie bits -> OpenFlow error
        self.activating: set[str] = set()
        self.ticks = 0
        self.seen_ofport: dict[str, int | None] = {}   # ofport of each row at the last batch
        self.stats = {"flow_mods": 0, "bundles": 0, "of_errors": 0, "syncs": 0,
                      "fip_conflicts": 0, "activations": 0, "icmp_errors": 0}
        self.conflicts: list[dict] = []
        self.status_file = opts.status_file
        self.metrics = metrics.Metrics(opts.metrics_port, opts.metrics_host)
        self.watcher = ovsdb.Watcher(self.remote, self.base_cfg.bridge, self._post_ovsdb)

    # --- lifecycle ------------------------------------------------------------------------
    def start(self):
        thread = super().start()
        self.threads.append(fw.hub.spawn(self._ovsdb_loop))
        self.threads.append(fw.hub.spawn(self._ticker))
        if self.metrics.enabled:
            self.threads.append(fw.hub.spawn(self._serve_metrics))
        LOG.info("ovsnat: bridge %s, uplink %s, OVSDB %s, SNAT %s:%d-%d",
                 self.base_cfg.bridge, self.base_cfg.uplink_port, self.remote,
                 self.base_cfg.snat_ip, self.base_cfg.snat_port_min, self.base_cfg.snat_port_max)
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

    def _serve_metrics(self):
        def handle(sock, addr):
            try:
                sock.settimeout(5)
                sock.sendall(self.metrics.http_response(sock.recv(4096)))
            except OSError:
                pass
            finally:
                sock.close()
        server = fw.hub.StreamServer((self.metrics.host, self.metrics.port), handle)
        LOG.info("ovsnat: metrics on http://%s:%d/metrics", self.metrics.host,
                 self.metrics.port)
        server.serve_forever()

    def _post_ovsdb(self, batch):
        self.send_event(self.name, EventOvsdb(batch))

    def _ticker(self):
        while True:
            fw.hub.sleep(1)
            self.send_event(self.name, EventTick())

    # --- desired state from OVSDB -----------------------------------------------------------
    @fw.set_ev_cls(EventOvsdb)
    def on_ovsdb(self, ev):
        batch = ev.batch
        snapshot = isinstance(batch, ovsdb.Snapshot)
        if snapshot and not self.rows and not self.seen_ofport:
            # The controller's first view: VMs already plugged count as resident (their FIPs
            # were live before a restart). Should one be arriving by live migration right
            # now, the GARPs sent on activation make the source host yield.
            self.seen_ofport = {n: r.ofport for n, r in batch.rows.items()
                                if r.link_state != "down"}
        if snapshot:
            changed = set(self.rows) | set(batch.rows)
            self.rows = dict(batch.rows)
            LOG.info("ovsnat: OVSDB snapshot: %d interfaces on %s", len(self.rows),
                     self.base_cfg.bridge)
        else:
            for name in batch.removed:
                self.rows.pop(name, None)
            self.rows.update(batch.rows)
            changed = set(batch.rows) | batch.removed
        if snapshot:
            self.metrics.inc("ovsdb_reconnects")
        if self._rebuild_if_needed():
            self._send(self._activate_resident(set(self.rows)))
            self._sync_full()
            self.status_dirty = True
            return
        if self.host is None:
            return
        if snapshot:
            delta = self._full_resync_state()
        else:
            delta = Delta()
            for name in sorted(changed - {self.base_cfg.uplink_port}):
                delta.extend(self.host.update(name, self._port(name)))
            self._report_rejections()
        delta.extend(self._activate_resident(changed))
        self._send(delta)
        self.status_dirty = True

    def _activate_resident(self, changed: set) -> Delta:
        """A FIP given to a VM whose device was already here (same ofport as before this
        change, e.g. `ovsnat bind` on a running VM) needs no proof of presence. A new device
        (plug, migration) waits for the VM's first frame."""
        delta = Delta()
        for name in sorted(changed):
            row = self.rows.get(name)
            ofport = row.ofport if row and row.link_state != "down" else None
            if ofport and ofport > 0 and self.seen_ofport.get(name) == ofport and \
                    self.host.is_pending(name) and name not in self.host.yielded:
                LOG.info("ovsnat: port %s was already here; activating its FIP", name)
                delta.extend(self.host.activate(name))
            self.seen_ofport[name] = ofport
        return delta

    def _publish_status(self):
        """The status file (`ovsnat status` reads it) and the metrics gauges."""
        host = self.host
        vms, fips, pending = host.counts() if host else (0, 0, [])
        rejected = host.rejected if host else []
        self.metrics.set_state(fips, vms - fips, len(pending), len(rejected))
        if not self.status_file:
            return
        state = {
            "time": time.time(), "datapath": f"{self.dp.id:016x}" if self.dp else None,
            "in_sync": self.installed is not None and not self.bundles,
            "vms": vms, "fips": fips, "pending_fips": pending,
            "rejected": [{"name": r.name, "reason": r.reason} for r in rejected],
            "failed_owners": {f"{k:#x}": v for k, v in self.failed_owners.items()},
            "conflicts": self.conflicts[-20:], "stats": self.stats,
            "ovsdb_reconnects": self.watcher.reconnects,
        }
        try:
            os.makedirs(os.path.dirname(self.status_file) or ".", exist_ok=True)
            tmp = self.status_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(state, f, indent=1)
            os.replace(tmp, self.status_file)
        except OSError as e:
            LOG.warning("ovsnat: cannot write status file %s: %s", self.status_file, e)
            self.status_file = ""

    def _uplink_ofport(self) -> int | None:
        row = self.rows.get(self.base_cfg.uplink_port)
        return row.ofport if row and row.ofport and row.ofport > 0 else None

    def _config(self, uplink: int) -> HostConfig:
        cfg = HostConfig(**{**self.base_cfg.__dict__, "uplink_ofport": uplink})
        return with_gateway_mac(cfg, self.gateway_mac)

    def _rebuild_if_needed(self) -> bool:
        """Build the host state once the uplink's ofport is known (or when it changed)."""
        uplink = self._uplink_ofport()
        if uplink is None:
            if self.host is not None or not getattr(self, "_warned_uplink", False):
                LOG.error("ovsnat: uplink port %s is not on bridge %s (or has no ofport); "
                          "waiting for it", self.base_cfg.uplink_port, self.base_cfg.bridge)
                self._warned_uplink = True
            return False
        if self.host is not None and self.host.cfg.uplink_ofport == uplink:
            return False
        self.host = HostState(self._config(uplink))
        self._full_resync_state(collect=False)
        self._adopt()
        return True

    def _adopt(self):
        """FIPs still answered by the switch were active before a restart: keep them."""
        if self.host is not None and self.installed is not None:
            for name in self.host.adopt_installed(self.installed):
                LOG.info("ovsnat: FIP of port %s was active before the restart; kept", name)

    def _full_resync_state(self, collect: bool = True) -> Delta:
        """Make the host state hold exactly the current rows (level-triggered), then give
        back the memory the burst used. With collect=False the flows to send are not
        gathered (a full sync diffs keys anyway)."""
        delta = Delta()
        known = set(self.host.valid) | set(self.host.invalid)
        for name in sorted(known - set(self.rows)):
            change = self.host.update(name, None)
            if collect:
                delta.extend(change)
        for name in sorted(self.rows):
            if name != self.base_cfg.uplink_port:
                change = self.host.update(name, self._port(name))
                if collect:
                    delta.extend(change)
        self._report_rejections()
        release_memory()
        return delta

    def _port(self, name: str):
        row = self.rows.get(name)
        return None if row is None else port_from_row(name, row.ofport, row.external_ids,
                                                      row.link_state)

    def _report_rejections(self):
        """One log line per new reason: an error once per distinct bad value (not again
        when the port's link bounces), passing states at INFO."""
        rejected = self.host.rejected
        current = {r.name: r.reason for r in rejected}
        for r in rejected:
            if self.reported.get(r.name) == r.reason:
                continue
            if r.transient:
                LOG.info("ovsnat: skipping %s", r.reason)
            elif self.reported_errors.get(r.name) != r.reason:
                LOG.error("ovsnat: skipping %s", r.reason)
                self.reported_errors[r.name] = r.reason
        for name in set(self.reported) - set(current):
            self.reported_errors.pop(name, None)
            if name in self.host.valid:
                LOG.info("ovsnat: port %s is programmed again", name)
        self.reported = current

    # --- datapath connect and full sync -----------------------------------------------------
    @fw.set_ev_cls(fw.ofp_event.EventOFPSwitchFeatures, fw.CONFIG_DISPATCHER)
    def on_features(self, ev):
        dp = ev.msg.datapath
        LOG.info("ovsnat: datapath %016x connected", dp.id)
        _patient_sends(dp)
        self.dp, self.installed, self.meters = dp, None, None
        self.bundles.clear()
        self.dump = {"flows": set(), "pending": set(), "meters": set(), "t0": time.monotonic()}
        p, ofp = fw.parser, fw.ofproto
        for kind in (COOKIE_HOST, COOKIE_VM):         # only ovsnat's flows: foreign ones stay
            req = p.OFPFlowStatsRequest(dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                        kind << 56, 0xFF << 56, p.OFPMatch())
            self._send_msg(req)
            self.dump["pending"].add(req.xid)
        req = p.OFPMeterConfigStatsRequest(dp, 0, ofp.OFPM_ALL)
        self._send_msg(req)
        self.dump["pending"].add(req.xid)

    @fw.set_ev_cls(fw.ofp_event.EventOFPStateChange, fw.DEAD_DISPATCHER)
    def on_disconnect(self, ev):
        if self.dp is not None and ev.datapath.id == self.dp.id:
            LOG.warning("ovsnat: datapath %016x disconnected", ev.datapath.id)
            self.dp, self.installed = None, None
            self.bundles.clear()

    @fw.set_ev_cls(fw.ofp_event.EventOFPFlowStatsReply, fw.MAIN_DISPATCHER)
    def on_flow_stats(self, ev):
        self.dump["flows"].update((s.table_id, s.cookie) for s in ev.msg.body if is_ours(s.cookie))
        self._dump_part_done(ev.msg)

    @fw.set_ev_cls(fw.ofp_event.EventOFPMeterConfigStatsReply, fw.MAIN_DISPATCHER)
    def on_meter_stats(self, ev):
        self.dump["meters"].update((m.meter_id, tuple(b.rate for b in m.bands))
                                   for m in ev.msg.body)
        self._dump_part_done(ev.msg)

    def _dump_part_done(self, msg):
        if msg.flags & fw.ofproto.OFPMPF_REPLY_MORE:
            return
        self.dump["pending"].discard(msg.xid)
        if self.dump["pending"]:
            return
        self.installed, self.meters = self.dump["flows"], self.dump["meters"]
        LOG.info("ovsnat: switch holds %d ovsnat flows", len(self.installed))
        self._adopt()
        self._sync_full()

    def _sync_full(self):
        """Send the difference between the switch and the desired state."""
        if self.host is None or self.dp is None or self.installed is None:
            return
        self.stats["syncs"] += 1
        for meter in METERS:
            if (meter.meter_id, (meter.rate_pps,)) not in self.meters:
                command = fw.ofproto.OFPMC_MODIFY if any(
                    m[0] == meter.meter_id for m in self.meters) else fw.ofproto.OFPMC_ADD
                self._send_msg(ofmsgs.meter_add(self.dp, meter, command))
                self.meters.add((meter.meter_id, (meter.rate_pps,)))
        desired = self.host.all_keys()
        stale = self.installed - desired
        missing = desired - self.installed
        if not stale and not missing:
            LOG.info("ovsnat: flows in sync (%d), nothing sent", len(desired))
            if self.dump.get("t0") is not None:
                self.metrics.set_reconcile(time.monotonic() - self.dump.pop("t0"))
            release_memory()
            return
        LOG.info("ovsnat: sync: %d to add, %d stale to delete", len(missing), len(stale))
        self._send(_Lazy(sorted(stale), self.host.iter_wire_for(missing), {"(full sync)"},
                         len(missing)), announce=False)

    # --- sending ------------------------------------------------------------------------------
    def _send_msg(self, msg):
        self.dp.set_xid(msg)
        self.dp.send_msg(msg)
        return msg.xid

    def _send(self, delta: Delta, retry: bool = True, announce: bool = True):
        """Send a delta as one atomic bundle (deletes first) and a barrier, packed straight
        to bytes (ovsnat.ofwire) and written to the switch in one go. delta.add may be a
        generator: flows are encoded and dropped one by one, so a full sync of 100,000
        flows never holds them all. The cyclic GC is paused meanwhile: it would rescan
        every live object many times over while millions are created and freed."""
        if not delta or self.dp is None or self.installed is None:
            return
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            bundle = Bundle(next(self.bundle_ids), next(self.xids), list(delta.delete),
                            owners=set(delta.owners), retry=retry)
            parts = [ofwire.bundle_ctrl(bundle.id, ofwire.BUNDLE_OPEN, bundle.first_xid)]
            for table, cookie in bundle.delete:
                parts.append(ofwire.bundle_add(
                    bundle.id, ofwire.flow_delete(table, cookie, next(self.xids))))
            for item in delta.add:
                if isinstance(item, tuple):          # (key, packed flow_mod) of a full sync
                    key, packed = item
                    flow = None
                    parts.append(ofwire.bundle_add(bundle.id, ofwire.with_xid(
                        packed, next(self.xids))))
                else:
                    flow, key = item, (item.table, item.cookie)
                    parts.append(ofwire.bundle_add(bundle.id, ofwire.flow_add(
                        flow, next(self.xids))))
                bundle.add_keys.append(key)
                if len(parts) >= SEND_CHUNK:
                    # Hand this chunk to the socket now and let the sender green thread run:
                    # ovs-vswitchd (on the other core) decodes it while we encode the next.
                    self.dp.send(b"".join(parts))
                    parts.clear()
                    fw.hub.sleep(0)
                if announce and flow is not None and flow.table == UPLINK_ARP and \
                        flow.cookie >> 56 == COOKIE_VM and flow.match.get("arp_tpa"):
                    bundle.announce.append((key, flow.match.get("arp_tpa")))
            commit, barrier = next(self.xids), next(self.xids)
            parts += [ofwire.bundle_ctrl(bundle.id, ofwire.BUNDLE_COMMIT, commit),
                      ofwire.barrier(barrier)]
            self.bundles[bundle.id] = bundle
            self.barriers[barrier] = bundle.id
            self.dp.send(b"".join(parts))
            bundle.sent_at = time.time()
        finally:
            if gc_was_on:
                gc.enable()
        n = len(bundle.delete) + len(bundle.add_keys)
        self.stats["flow_mods"] += n
        self.stats["bundles"] += 1
        self.metrics.inc("flow_mods", n)
        self.metrics.inc("bundles")

    @fw.set_ev_cls(fw.ofp_event.EventOFPErrorMsg, fw.MAIN_DISPATCHER)
    def on_error(self, ev):
        msg = ev.msg
        self.stats["of_errors"] += 1
        self.metrics.inc("of_errors")
        bundle = next((b for b in self.bundles.values()
                       if b.first_xid <= msg.xid <= b.last_xid), None)
        if bundle is None:
            LOG.error("ovsnat: OpenFlow error type=%d code=%d for xid %d", msg.type, msg.code,
                      msg.xid)
            return
        key = bundle.key_of(msg.xid)
        if key is not None and not bundle.failed:
            flows = self.host.flows_for({key}) if self.host else []
            text = flows[0].text() if flows else f"table={key[0]} cookie={key[1]:#x}"
            what = f"flow {text} of {self._owner_name(key[1])}"
            bundle.failed = f"type={msg.type} code={msg.code} on {what}"
            LOG.error("ovsnat: switch rejected %s: OpenFlow error type=%d code=%d",
                      what, msg.type, msg.code)
        elif not bundle.failed:
            bundle.failed = f"type={msg.type} code={msg.code}"
            LOG.error("ovsnat: bundle %d rejected: OpenFlow error type=%d code=%d",
                      bundle.id, msg.type, msg.code)

    @fw.set_ev_cls(fw.ofp_event.EventOFPBarrierReply, fw.MAIN_DISPATCHER)
    def on_barrier(self, ev):
        bundle = self.bundles.pop(self.barriers.pop(ev.msg.xid, None), None)
        if bundle is None:
            return
        # "sent at": when the bundle left ovsnat; the rest until "at" is the switch's.
        LOG.info("ovsnat: programmed %s (%d flow_mods) at %.6f, sent at %.6f%s",
                 _names(bundle.owners), len(bundle.add_keys) + len(bundle.delete), time.time(),
                 bundle.sent_at,
                 f" FAILED: {bundle.failed}" if bundle.failed else "")
        if not self.bundles and self.dump.get("t0") is not None:
            took = time.monotonic() - self.dump.pop("t0")
            LOG.info("ovsnat: in sync %.3f s after the datapath connected", took)
            self.metrics.set_reconcile(took)
            release_memory()
        self.status_dirty = True
        prefixes = {c >> 24 for _, c in bundle.delete} | {c >> 24 for _, c in bundle.add_keys}
        if bundle.failed is None:
            self.installed.difference_update(bundle.delete)
            self.installed.update(bundle.add_keys)
            for prefix in prefixes:
                self.failed_owners.pop(prefix & 0xFFFFFFFF, None)
            self._announce_fips(bundle.announce)
        elif bundle.retry:
            LOG.warning("ovsnat: retrying %d owners one by one", len(prefixes))
            self._resync_owners(prefixes)
        else:
            for prefix in prefixes:
                self.failed_owners[prefix & 0xFFFFFFFF] = bundle.failed
            LOG.error("ovsnat: giving up on %s: %s",
                      self._owner_name(min(prefixes) << 24), bundle.failed)

    def _resync_owners(self, prefixes: set):
        """A rejected bundle changed nothing: bring each owner it touched to its desired
        state on its own bundle, so one bad owner cannot hold the others back."""
        installed: dict[int, set] = defaultdict(set)
        desired: dict[int, set] = defaultdict(set)
        for key in self.installed:
            if key[1] >> 24 in prefixes:
                installed[key[1] >> 24].add(key)
        for key in self.host.all_keys():
            if key[1] >> 24 in prefixes:
                desired[key[1] >> 24].add(key)
        for prefix in sorted(prefixes):
            stale = sorted(installed[prefix] - desired[prefix])
            missing = self.host.flows_for(desired[prefix] - installed[prefix])
            self._send(Delta(stale, missing, {self._owner_name(prefix << 24)}), retry=False)

    def _owner_name(self, cookie: int) -> str:
        if cookie >> 56 == COOKIE_HOST:
            return "host-level flows"
        ip = str(netaddr.IPAddress(cookie_owner(cookie)))
        name = self.host.owner_names.get(cookie >> 24) if self.host else None
        port = self.host.valid.get(name) if name else None
        return f"port {port.name} ({port.iface_id}, {ip})" if port else f"VM {ip}"

    # --- packets: GARP, gateway ARP ---------------------------------------------------------
    def _announce_fips(self, announce: list):
        """Gratuitous ARPs for every FIP whose ARP responder was just installed."""
        for key, fip in announce:
            mac = mac_str(self.host.cfg.ip_mac(netaddr.IPAddress(fip)))
            for delay in GARP_DELAYS:
                fw.hub.spawn_after(delay, self._garp, key, mac, fip)
            LOG.info("ovsnat: FIP %s is live here; announcing it (%d GARPs)", fip,
                     len(GARP_DELAYS))

    def _garp(self, responder: tuple, mac: str, fip: str):
        """Announce only while the FIP's ARP responder is still installed here."""
        if self.installed is not None and responder in self.installed:
            self._send_arp(1, mac, fip, fip, "00:00:00:00:00:00")

    def _send_arp(self, op: int, src_mac: str, src_ip: str, dst_ip: str, dst_mac: str):
        dp, host = self.dp, self.host
        if dp is None or host is None:
            return
        pkt = fw.packet.Packet()
        pkt.add_protocol(fw.ethernet.ethernet(dst="ff:ff:ff:ff:ff:ff", src=src_mac,
                                              ethertype=0x0806))
        pkt.add_protocol(fw.arp.arp(opcode=op, src_mac=src_mac, src_ip=src_ip,
                                    dst_mac=dst_mac, dst_ip=dst_ip))
        pkt.serialize()
        p, ofp = fw.parser, fw.ofproto
        self._send_msg(p.OFPPacketOut(dp, ofp.OFP_NO_BUFFER, ofp.OFPP_CONTROLLER,
                                      [p.OFPActionOutput(host.cfg.uplink_ofport)], pkt.data))

    def _refresh_pat_usage(self):
        if not self.metrics.enabled or self.host is None:
            return
        from ovsnat.inspect import pat_usage
        try:
            out = subprocess.run(["ovs-appctl", "dpctl/dump-conntrack",
                                  f"zone={self.host.cfg.ct_zone}"], capture_output=True,
                                 text=True, timeout=5).stdout
        except (OSError, subprocess.TimeoutExpired):
            return
        self.metrics.set_pat(pat_usage(self.host.cfg, out))

    @fw.set_ev_cls(EventTick)
    def on_tick(self, ev):
        self.ticks += 1
        if self.status_dirty:
            self.status_dirty = False
            self._publish_status()
        if self.ticks % 5 == 1:
            self._refresh_pat_usage()
        interval = GATEWAY_ARP_INTERVAL[1 if self.gateway_mac else 0]
        if self.base_cfg.learn_gateway_mac and self.host is not None and \
                self.ticks % interval == 0:
            cfg = self.host.cfg
            self._send_arp(1, mac_str(cfg.snat_mac), str(cfg.snat_ip),
                           str(cfg.external_gateway_ip), "00:00:00:00:00:00")

    @fw.set_ev_cls(fw.ofp_event.EventOFPPacketIn, fw.MAIN_DISPATCHER)
    def on_packet_in(self, ev):
        if self.host is None:
            return
        in_port = ev.msg.match.get("in_port")
        data = bytes(ev.msg.data)
        if data[12:14] == b"\x08\x00" and len(data) > 23 and data[23] == 1:
            self._icmp_error(in_port, data)
            return
        pkt = fw.packet.Packet(data)
        if in_port == self.host.cfg.uplink_ofport:
            self._from_uplink(pkt.get_protocol(fw.arp.arp))
        else:
            self._from_vm(in_port, pkt)

    def _from_uplink(self, a):
        if a is None:
            return
        cfg = self.host.cfg
        if cfg.learn_gateway_mac and a.src_ip == str(cfg.external_gateway_ip):
            mac = netaddr.EUI(a.src_mac)
            if mac != self.gateway_mac:
                LOG.info("ovsnat: external gateway %s is at %s", a.src_ip, mac_str(mac))
                self.gateway_mac = mac
                self._send(self.host.set_config(with_gateway_mac(cfg, mac)))
            return
        if a.src_ip == str(cfg.snat_ip):
            self._conflict(a, "SNAT IP")
            LOG.warning("ovsnat: this host's SNAT IP %s is claimed on the uplink by %s; "
                        "address conflict", a.src_ip, a.src_mac)
            return
        name = self.host.fip_owner(a.src_ip)
        if name is None or self.host.is_pending(name):
            return
        self._conflict(a, name)
        if netaddr.EUI(a.src_mac) == cfg.ip_mac(netaddr.IPAddress(a.src_ip)):
            # Another ovsnat host announces the FIP with the FIP's own MAC: the VM moved
            # there (or the FIP is configured on two hosts). Yield, so two hosts never
            # answer for it; the VM's own RARP/GARP brings it back here.
            LOG.warning("ovsnat: FIP %s of port %s is announced by another host; yielding "
                        "until the VM announces itself here again", a.src_ip, name)
            self._send(self.host.yield_fip(name))
        else:
            # Anyone else claiming it is an address conflict (or an attack): keep answering,
            # so no host on the external network can take a FIP offline with one GARP.
            LOG.warning("ovsnat: FIP %s of port %s is claimed on the uplink by %s; "
                        "address conflict, keeping it", a.src_ip, name, a.src_mac)

    def _conflict(self, a, owner: str):
        self.stats["fip_conflicts"] += 1
        self.metrics.inc("conflicts")
        self.conflicts.append({"fip": a.src_ip, "mac": a.src_mac, "port": owner,
                               "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.status_dirty = True

    def _from_vm(self, in_port, pkt):
        name = self.host.by_ofport.get(in_port)
        if name is None or not self.host.is_pending(name) or name in self.activating:
            return
        a = pkt.get_protocol(fw.arp.arp)
        eth = pkt.get_protocol(fw.ethernet.ethernet)
        announce = (eth is not None and eth.ethertype == 0x8035) or \
            (a is not None and a.src_ip == a.dst_ip)
        if name in self.host.yielded and not announce:
            return          # yielded ports come back only on a RARP/GARP from the VM
        port = self.host.valid[name]
        fip, mac = str(port.fip), mac_str(self.host.cfg.ip_mac(port.fip))
        self.activating.add(name)
        self._send_arp(1, mac, fip, fip, "00:00:00:00:00:00")   # the old host yields now
        fw.hub.spawn_after(ACTIVATION_SETTLE, self.send_event, self.name, EventActivate(name))

    def _icmp_error(self, in_port, frame: bytes):
        """An ICMP error to or from a FIP VM: translate the quoted header too and send it
        on (inbound to the VM's port, outbound to the gateway)."""
        cfg, ihl = self.host.cfg, (frame[14] & 0x0F) * 4
        dst, src = frame[30:34], frame[26:30]
        name = self.host.fip_owner(str(netaddr.IPAddress(int.from_bytes(dst, "big"))))
        inbound = name is not None and not self.host.is_pending(name)
        if not inbound:
            name = self.host.by_ofport.get(in_port)
        port = self.host.valid.get(name) if name else None
        if port is None or port.fip is None or self.host.is_pending(name) or ihl < 20:
            return
        fip, fixed = port.fip.packed, port.fixed_ip.packed
        if inbound:
            out = icmp.translate_error(frame, fip, fixed, True, cfg.router_mac.packed,
                                       port.mac.packed)
            out_port = port.ofport
        elif src == fixed and cfg.external_gateway_mac is not None:
            out = icmp.translate_error(frame, fixed, fip, False, cfg.ip_mac(port.fip).packed,
                                       cfg.external_gateway_mac.packed)
            out_port = cfg.uplink_ofport
        else:
            return
        if out is None:
            return
        self.stats["icmp_errors"] += 1
        self.status_dirty = True
        p, ofp = fw.parser, fw.ofproto
        self._send_msg(p.OFPPacketOut(self.dp, ofp.OFP_NO_BUFFER, ofp.OFPP_CONTROLLER,
                                      [p.OFPActionOutput(out_port)], out))

    @fw.set_ev_cls(EventActivate)
    def on_activate(self, ev):
        self.activating.discard(ev.name)
        if self.host is not None and self.host.is_pending(ev.name):
            self.stats["activations"] += 1
            self.metrics.inc("activations")
            LOG.info("ovsnat: port %s is here (first frame seen); activating its FIP",
                     ev.name)
            self._send(self.host.activate(ev.name))
            self.status_dirty = True


class _Lazy:
    """A delta whose adds are produced while they are encoded (full sync)."""

    def __init__(self, delete, add_iter, owners, n_add):
        self.delete, self.add, self.owners, self.n_add = delete, add_iter, owners, n_add

    def __bool__(self) -> bool:
        return bool(self.delete or self.n_add)


def _patient_sends(dp) -> None:
    """ryu and os-ken give a send 5 s (--socket-timeout) to make progress, then shut the
    socket mid-message: the switch sees a truncated message ("Protocol error"), drops the
    connection, and the next full sync starts over. A busy ovs-vswitchd (10,000 ports,
    a 115,000-flow bundle) can read nothing for longer than that, so ovsnat gives its
    switch a minute: a switch that reads nothing for a minute is gone. Receives are
    unaffected (the frameworks retry a timed-out read)."""
    sock = getattr(dp, "socket", None)
    if sock is not None and (sock.gettimeout() or SEND_TIMEOUT) < SEND_TIMEOUT:
        sock.settimeout(SEND_TIMEOUT)


def _names(owners: set) -> str:
    names = sorted(str(o) for o in owners)
    return ",".join(names[:5]) + (f",... ({len(names)} owners)" if len(names) > 5 else "")
