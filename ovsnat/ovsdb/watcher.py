"""The OVSDB watcher: Interface rows of one bridge, as batches of changes.

The only module that talks OVSDB. It runs one monitor session (in a green thread of the
controller) and hands each batch to a callback, which posts it to the app's event loop: all
state changes happen in one place (the ovsdbapp pattern).

Two kinds of batch (ovsnat.model.rows): a `Snapshot` of every VM interface of the bridge
on the first sync and after every reconnect (a new monitor re-sends all rows without
delete events), and `Changes`: the interfaces touched since the last batch.

Bridge membership is tracked incrementally (ovsnat.ovsdb.tables), so an interface counts
only while its port is on the configured bridge. The bridge's datapath_id comes with the
batches too: the controller programs that datapath only (ovsnat.core.datapaths).

Why not the python-ovs IDL: at 10,000 VMs it held about 60 MB of Row/Datum/Atom objects for
four columns, and every port added to the bridge made it copy the bridge's whole port set
(10,000 atoms) before telling us. This watcher asks for exactly the columns it needs with
`monitor_cond`, whose `update2` notifications carry set and map columns as differences, and
keeps one small frozen `IfaceRow` per interface (only the external_ids keys ovsnat reads):
the cost of a change does not depend on how many ports the bridge has. The IDL is still
used for the rare interactive writes (ovsnat.ovsdb.writer); the controller's own marker
writes go through this session (`write_keys`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import ovs.jsonrpc
import ovs.poller

from ovsnat.model.rows import Changes, Snapshot
from ovsnat.ovsdb import fastjson, ownwrites
from ovsnat.ovsdb.tables import Tables

LOG = logging.getLogger(__name__)

DATABASE = "Open_vSwitch"
MONITOR_ID = "ovsnat"
COLUMNS = {
    "Bridge": ["name", "ports", "external_ids", "controller", "datapath_id"],
    "Port": ["interfaces"],
    "Interface": ["name", "ofport", "external_ids", "link_state"],
}
RECONNECT_MS = 1000  # OVSDB gone: try again every second (python-ovs default backs off to 8 s)
MAX_WRITES = 10_000  # key writes awaiting OVSDB's answer (more: the oldest is forgotten)


class Watcher:
    def __init__(self, remote: str, bridge: str, publish: Callable[[object], None]):
        self.remote = remote
        self.bridge = bridge
        self.publish = publish
        self.running = True
        self.reconnects = 0
        self.session: ovs.jsonrpc.Session | None = None
        self._session_state = None
        self._request_id = None  # our monitor_cond request, until its reply
        self._writes: dict = {}  # request id -> what a key write was for
        self._monitoring = False
        self._warned = False
        self._refused = None  # the server's last refusal, logged once
        self._write_error = None  # the last write refusal, logged once
        self._reset()

    def _reset(self) -> None:
        """A new monitor: everything is described again (tables) and published again."""
        self.tables = Tables(self.bridge)
        self._published_dpid: str | None = None
        self._published_ids: dict | None = None
        self._uuid_of: dict[str, str] = {}  # published name -> iface uuid
        self._names: dict[str, str] = {}  # iface uuid -> last published name

    # --- the loop ---------------------------------------------------------------------
    def connect(self) -> None:
        """Open the session (closing any previous one: a reconnect must not leak it)."""
        if self.session is not None:
            self.session.close()
        self.session = ovs.jsonrpc.Session.open(self.remote)
        self.session.reconnect.set_backoff(RECONNECT_MS, RECONNECT_MS)

    def run_forever(self) -> None:
        while self.running:
            self.run_once()
            self._wait(1000)

    def _wait(self, ms: int) -> None:
        """Sleep until the session has something to do, or `ms` have passed."""
        poller = ovs.poller.Poller()
        self.session.wait(poller)
        self.session.recv_wait(poller)
        poller.timer_wait(ms)
        poller.block()

    def run_once(self) -> None:
        """Connect or reconnect, read what has arrived, publish the batch it makes."""
        session = self.session
        session.run()
        fastjson.upgrade(session)  # decode with the C decoder (ovsdb/fastjson.py)
        state = (session.get_seqno(), session.is_connected())
        if state != self._session_state:  # python-ovs bumps seqno on connecting, not
            self._session_state = state  # on connected: watch both
            self._on_session_change()
        for _ in range(1000):  # bounded: let the caller's loop breathe
            msg = session.recv()
            if msg is None:
                break
            self._handle(msg)
        if self._monitoring and (
            self.tables.dirty
            or self.tables.our_ids() != self._published_ids
            or self.tables.our_dpid() != self._published_dpid
        ):
            self._publish_changes()

    def snapshot_once(self, timeout: float = 10.0) -> Snapshot:
        """Connect, wait for the first full view, and return it (for the CLI tools, which
        should fail at once, not retry, when OVSDB is not there)."""
        got: list = []
        self.publish = got.append
        self._warned = True  # no "retrying" line: a failure raises below
        self.connect()
        deadline = time.monotonic() + timeout
        try:
            while not got:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer from OVSDB at {self.remote} in {timeout}s")
                self.run_once()
                if (
                    not self.session.is_connected()
                    and self.session.reconnect.state.name == "BACKOFF"
                ):  # attempt failed
                    raise ConnectionError(f"cannot connect to OVSDB at {self.remote}")
                self._wait(100)
        finally:
            self.stop()
        return got[0]

    def stop(self) -> None:
        self.running = False
        if self.session is not None:
            self.session.close()

    # --- the session ------------------------------------------------------------------
    def _on_session_change(self) -> None:
        self._monitoring, self._request_id = False, None
        self._writes.clear()  # a new session never answers the old one's
        if not self.session.is_connected():
            if self._session_state[0] > 1 and not self._warned:  # a failed attempt
                LOG.warning(
                    "ovsnat: OVSDB %s: not connected; retrying every %d ms",
                    self.remote,
                    RECONNECT_MS,
                )
                self._warned = True
            return
        request = ovs.jsonrpc.Message.create_request(
            "monitor_cond",
            [DATABASE, MONITOR_ID, {t: [{"columns": c}] for t, c in COLUMNS.items()}],
        )
        self._request_id = request.id
        self.session.send(request)

    def _handle(self, msg) -> None:
        Message = ovs.jsonrpc.Message
        if msg.type in (Message.T_REPLY, Message.T_ERROR) and msg.id == self._request_id:
            self._request_id = None
            if msg.type == Message.T_ERROR:
                if self._refused != msg.error:  # once per distinct answer, not per retry
                    LOG.error(
                        "ovsnat: OVSDB %s refused to monitor %s: %s; retrying",
                        self.remote,
                        DATABASE,
                        msg.error,
                    )
                    self._refused = msg.error
                self.session.force_reconnect()
                return
            self._reset()
            self.tables.apply(msg.result)
            self._monitoring, self._warned, self._refused = True, False, None
            self.reconnects += 1
            self._publish_snapshot()
        elif msg.type in (Message.T_REPLY, Message.T_ERROR) and msg.id in self._writes:
            self._write_done(self._writes.pop(msg.id), msg)
        elif (
            msg.type == Message.T_NOTIFY
            and msg.method == "update2"
            and self._monitoring
            and msg.params[0] == MONITOR_ID
        ):
            self.tables.apply(msg.params[1])
        elif msg.type == Message.T_NOTIFY and msg.method == "monitor_canceled":
            LOG.warning("ovsnat: OVSDB %s canceled the monitor; reconnecting", self.remote)
            self.session.force_reconnect()

    def _publish_changes(self) -> None:
        ours = self.tables.ours()
        batch = Changes()
        for uuid in self.tables.dirty:
            row = self.tables.row(uuid, ours)
            old_name = self._names.pop(uuid, None)
            if old_name and self._uuid_of.get(old_name) == uuid:
                del self._uuid_of[old_name]
            if row is not None:
                self._names[uuid] = row.name
                self._uuid_of[row.name] = uuid
                batch.rows[row.name] = row
                if old_name and old_name != row.name:
                    batch.removed.add(old_name)
            elif old_name:
                batch.removed.add(old_name)
        batch.removed -= set(batch.rows)
        self.tables.dirty.clear()
        ids = self.tables.our_ids()
        if ids != self._published_ids:
            batch.bridge_ids = self._published_ids = ids
        if self.tables.our_dpid() != self._published_dpid:
            batch.datapath_id = self._published_dpid = self.tables.our_dpid()
        if (
            batch.rows
            or batch.removed
            or batch.bridge_ids is not None
            or batch.datapath_id is not None
        ):
            self.publish(batch)

    def _publish_snapshot(self) -> None:
        ours = self.tables.ours()
        self.tables.dirty.clear()
        rows = {}
        for uuid in self.tables.ifaces:
            row = self.tables.row(uuid, ours)
            if row is not None:
                rows[row.name] = row
                self._names[uuid] = row.name
                self._uuid_of[row.name] = uuid
        self._published_ids, self._published_dpid = self.tables.our_ids(), self.tables.our_dpid()
        self.publish(Snapshot(rows, dict(self._published_ids), self._published_dpid))

    # --- the controller's own writes ------------------------------------------------------
    def connected(self) -> bool:
        return self.session is not None and self.session.is_connected()

    def write_keys(self, name: str, set_keys: dict, remove_keys=()) -> bool:
        """Set and remove external_ids keys on the Interface `name` of our bridge. Fire and
        forget: the update comes back through the monitor; a write lost to a reconnect is
        made again by the level-triggered caller after the next snapshot."""
        uuid = self._uuid_of.get(name)
        if uuid is None or self.session is None or not self.session.is_connected():
            return False
        request = ownwrites.iface_keys(uuid, set_keys, remove_keys)
        self._remember(request.id, f"{name}: set {sorted(set_keys)} remove {list(remove_keys)}")
        return self.session.send(request) == 0

    def request_reconfigure(self) -> bool:
        """Touch our bridge's Controller rows (ovsnat.ovsdb.ownwrites says why)."""
        uuids = self.tables.our_controllers()
        if not uuids or self.session is None or not self.session.is_connected():
            return False
        request = ownwrites.touch_controllers(uuids, f"{time.time():.6f}")
        self._remember(request.id, "the bridge's Controller rows")
        return self.session.send(request) == 0

    def _remember(self, request_id, what: str) -> None:
        """What a write was for, until OVSDB answers it. Bounded: a server that answers
        nothing (yet keeps the session up) costs at most MAX_WRITES entries."""
        if len(self._writes) >= MAX_WRITES:
            del self._writes[next(iter(self._writes))]
        self._writes[request_id] = what

    def _write_done(self, what: str, msg) -> None:
        """OVSDB answered a write: a refusal is logged once per distinct error (the marker
        is written again when its port next changes, or after a reconnect)."""
        error = ownwrites.failure(msg)
        if error and error != self._write_error:
            LOG.warning(
                "ovsnat: OVSDB refused a write (%s): %s; the same error again is not logged",
                what,
                error,
            )
        self._write_error = error or None
