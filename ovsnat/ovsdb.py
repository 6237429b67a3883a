"""The OVSDB watcher: Interface rows of one bridge, as batches of changes.

The only module that talks OVSDB. It runs one monitor session (in a green thread of the
controller) and hands each batch to a callback, which posts it to the app's event loop: all
state changes happen in one place (the ovsdbapp pattern).

Two kinds of batch:
- `Snapshot`: every VM interface of the bridge. Sent on the first sync and after every
  reconnect, because a new monitor re-sends all rows without delete events: the receiver
  must treat anything missing from a snapshot as gone (level-triggered).
- `Changes`: the interfaces touched since the last batch (O(changes), not O(rows)).

Bridge membership is tracked incrementally (interface -> port -> bridge), so an interface
counts only while its port is on the configured bridge.

Why not the python-ovs IDL: at 10,000 VMs it held about 60 MB of Row/Datum/Atom objects for
four columns, and every port added to the bridge made it copy the bridge's whole port set
(10,000 atoms) before telling us. This watcher asks for exactly the columns it needs with
`monitor_cond`, whose `update2` notifications carry set and map columns as differences, and
keeps one small frozen `IfaceRow` per interface (only the external_ids keys ovsnat reads):
the cost of a change does not depend on how many ports the bridge has. The IDL is still
used for the rare writes (`set_iface_external_ids`).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Callable

import ovs.db.idl
import ovs.jsonrpc
import ovs.poller
import ovs.stream

from ovsnat.model import KEY_ATTACHED_MAC, KEY_IFACE_ID

LOG = logging.getLogger(__name__)

DATABASE = "Open_vSwitch"
MONITOR_ID = "ovsnat"
COLUMNS = {"Bridge": ["name", "ports"], "Port": ["interfaces"],
           "Interface": ["name", "ofport", "external_ids", "link_state"]}
RECONNECT_MS = 1000      # OVSDB gone: try again every second (python-ovs default backs off to 8 s)


def kept_key(key: str) -> bool:
    """The external_ids keys ovsnat reads; a hypervisor's other keys (vm-uuid, iface-status,
    Neutron's and os-vif's) are dropped as they arrive, so they cost no memory."""
    return key in (KEY_IFACE_ID, KEY_ATTACHED_MAC) or key.startswith("ovsnat-")


@dataclass(frozen=True, slots=True)
class IfaceRow:
    name: str
    ofport: int | None
    external_ids: dict                 # only the keys `kept_key` accepts
    link_state: str | None = None      # "down": the device is gone (e.g. the VM left)


@dataclass
class Snapshot:
    rows: dict[str, IfaceRow]


@dataclass
class Changes:
    rows: dict[str, IfaceRow] = field(default_factory=dict)   # created or updated
    removed: set[str] = field(default_factory=set)             # gone from the bridge


def fetch_schema(remote: str, timeout: float = 10) -> dict:
    """The Open_vSwitch schema from the server itself (no schema file needed)."""
    error, stream = ovs.stream.Stream.open_block(ovs.stream.Stream.open(remote),
                                                 timeout=int(timeout * 1000))
    if error:
        raise ConnectionError(f"cannot connect to OVSDB at {remote}: {error}")
    rpc = ovs.jsonrpc.Connection(stream)
    try:
        error, reply = rpc.transact_block(ovs.jsonrpc.Message.create_request(
            "get_schema", [DATABASE]))
    finally:
        rpc.close()
    if error or reply.error:
        raise ConnectionError(f"get_schema from {remote} failed: {error or reply.error}")
    return reply.result


# --- OVSDB JSON values (RFC 7047 section 5.1) ---------------------------------------------------
def _atom(value):
    """An atom; a UUID reference ["uuid", "..."] becomes its string, interned: each UUID is
    kept in several indexes, as one string object."""
    return sys.intern(value[1]) if isinstance(value, list) else value


def _set(value) -> list:
    """A set column's elements: ["set", [...]] or, for exactly one element, the atom itself."""
    if isinstance(value, list) and value[0] == "set":
        return [_atom(a) for a in value[1]]
    return [_atom(value)]


def _optional(value):
    """A column of at most one element (ofport, link_state): its value or None. In update2 a
    change of such a column carries the new value, not a difference."""
    values = _set(value)
    return values[0] if values else None


def _map(value) -> dict:
    return {sys.intern(k): v for k, v in value[1]}


def _apply_map_diff(old: dict, diff: dict) -> dict:
    """update2's map difference: a new key is added, a key with its old value is removed,
    a key with another value is changed."""
    new = dict(old)
    for k, v in diff.items():
        if new.get(k) == v:
            del new[k]
        else:
            new[k] = v
    return new


class Watcher:
    def __init__(self, remote: str, bridge: str, publish: Callable[[object], None]):
        self.remote = remote
        self.bridge = bridge
        self.publish = publish
        self.running = True
        self.reconnects = 0
        self.session: ovs.jsonrpc.Session | None = None
        self._session_state = None
        self._request_id = None              # our monitor_cond request, until its reply
        self._monitoring = False
        self._warned = False
        self._refused = None                 # the server's last refusal, logged once
        self._reset()

    def _reset(self) -> None:
        self._ifaces: dict[str, IfaceRow] = {}       # iface uuid -> row (every bridge)
        self._bridges: dict[str, tuple[str, set]] = {}   # bridge uuid -> (name, port uuids)
        self._port_of_iface: dict[str, str] = {}     # iface uuid -> port uuid
        self._ifaces_of_port: dict[str, tuple] = {}  # port uuid -> iface uuids
        self._names: dict[str, str] = {}             # iface uuid -> last published name
        self._dirty: set[str] = set()

    # --- the loop ---------------------------------------------------------------------
    def connect(self) -> None:
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
        state = (session.get_seqno(), session.is_connected())
        if state != self._session_state:    # python-ovs bumps seqno on connecting, not
            self._session_state = state      # on connected: watch both
            self._on_session_change()
        for _ in range(1000):                 # bounded: let the caller's loop breathe
            msg = session.recv()
            if msg is None:
                break
            self._handle(msg)
        if self._monitoring and self._dirty:
            self._publish_changes()

    def snapshot_once(self, timeout: float = 10.0) -> "Snapshot":
        """Connect, wait for the first full view, and return it (for the CLI tools, which
        should fail at once, not retry, when OVSDB is not there)."""
        import time
        got: list = []
        self.publish = got.append
        self._warned = True                  # no "retrying" line: a failure raises below
        self.connect()
        deadline = time.monotonic() + timeout
        try:
            while not got:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer from OVSDB at {self.remote} in {timeout}s")
                self.run_once()
                if not self.session.is_connected() and \
                        self.session.reconnect.state.name == "BACKOFF":   # attempt failed
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
        if not self.session.is_connected():
            if self._session_state[0] > 1 and not self._warned:    # a failed attempt
                LOG.warning("ovsnat: OVSDB %s: not connected; retrying every %d ms",
                            self.remote, RECONNECT_MS)
                self._warned = True
            return
        request = ovs.jsonrpc.Message.create_request("monitor_cond", [
            DATABASE, MONITOR_ID, {t: [{"columns": c}] for t, c in COLUMNS.items()}])
        self._request_id = request.id
        self.session.send(request)

    def _handle(self, msg) -> None:
        Message = ovs.jsonrpc.Message
        if msg.type in (Message.T_REPLY, Message.T_ERROR) and msg.id == self._request_id:
            self._request_id = None
            if msg.type == Message.T_ERROR:
                if self._refused != msg.error:       # once per distinct answer, not per retry
                    LOG.error("ovsnat: OVSDB %s refused to monitor %s: %s; retrying",
                              self.remote, DATABASE, msg.error)
                    self._refused = msg.error
                self.session.force_reconnect()
                return
            self._reset()
            self._apply(msg.result)
            self._monitoring, self._warned, self._refused = True, False, None
            self.reconnects += 1
            self._publish_snapshot()
        elif msg.type == Message.T_NOTIFY and msg.method == "update2" and self._monitoring \
                and msg.params[0] == MONITOR_ID:
            self._apply(msg.params[1])
        elif msg.type == Message.T_NOTIFY and msg.method == "monitor_canceled":
            LOG.warning("ovsnat: OVSDB %s canceled the monitor; reconnecting", self.remote)
            self.session.force_reconnect()

    # --- applying updates ---------------------------------------------------------------
    def _apply(self, updates: dict) -> None:
        for table, rows in updates.items():
            apply = {"Bridge": self._apply_bridge, "Port": self._apply_port,
                     "Interface": self._apply_iface}[table]
            for uuid, change in rows.items():
                for kind, row in change.items():
                    apply(sys.intern(uuid), kind, row or {})

    def _apply_bridge(self, uuid: str, kind: str, row: dict) -> None:
        """Only our bridge's port set matters. A modify carries the ports that joined or
        left, so adding one port to a bridge of 10,000 touches one port, not 10,000."""
        name, ports = self._bridges.pop(uuid, (None, set()))
        was_ours = name == self.bridge
        if kind == "delete":
            touched = ports if was_ours else set()
        else:
            diff = set(_set(row["ports"])) if "ports" in row else set()
            if kind == "modify":
                ports ^= diff                 # in place: O(ports changed)
            else:
                ports = diff                  # initial, insert: the whole set
            name = row.get("name", name)
            self._bridges[uuid] = (name, ports)
            is_ours = name == self.bridge
            if was_ours and is_ours:
                touched = diff
            else:                             # became ours, stopped being ours, or neither
                touched = ports | diff if was_ours or is_ours else set()
        for port in touched:
            self._dirty.update(self._ifaces_of_port.get(port, ()))

    def _apply_port(self, uuid: str, kind: str, row: dict) -> None:
        old = self._ifaces_of_port.pop(uuid, ())
        new = old
        if kind == "delete":
            new = ()
        elif "interfaces" in row:
            diff = _set(row["interfaces"])
            new = tuple(set(old) ^ set(diff)) if kind == "modify" else tuple(diff)
        for iface in old:
            if self._port_of_iface.get(iface) == uuid:
                del self._port_of_iface[iface]
        for iface in new:
            self._port_of_iface[iface] = uuid
        if new:
            self._ifaces_of_port[uuid] = new
        self._dirty.update(old)
        self._dirty.update(new)

    def _apply_iface(self, uuid: str, kind: str, row: dict) -> None:
        self._dirty.add(uuid)
        old = self._ifaces.pop(uuid, None)
        if kind == "delete":
            return
        if kind != "modify" or old is None:
            old = IfaceRow("", None, {}, None)
        ids = old.external_ids
        if "external_ids" in row:
            diff = {k: v for k, v in _map(row["external_ids"]).items() if kept_key(k)}
            ids = _apply_map_diff(ids, diff) if kind == "modify" else diff
        ofport = _optional(row["ofport"]) if "ofport" in row else old.ofport
        link = _optional(row["link_state"]) if "link_state" in row else old.link_state
        self._ifaces[uuid] = IfaceRow(row.get("name", old.name), ofport, ids, link)

    # --- publishing -----------------------------------------------------------------------
    def _ours(self) -> set:
        for name, ports in self._bridges.values():
            if name == self.bridge:
                return ports
        return set()

    def _row(self, uuid: str, ours: set) -> IfaceRow | None:
        """The interface if it is on our bridge, else None."""
        if self._port_of_iface.get(uuid) not in ours:
            return None
        return self._ifaces.get(uuid)

    def _publish_changes(self) -> None:
        ours = self._ours()
        batch = Changes()
        for uuid in self._dirty:
            row = self._row(uuid, ours)
            old_name = self._names.pop(uuid, None)
            if row is not None:
                self._names[uuid] = row.name
                batch.rows[row.name] = row
                if old_name and old_name != row.name:
                    batch.removed.add(old_name)
            elif old_name:
                batch.removed.add(old_name)
        batch.removed -= set(batch.rows)
        self._dirty.clear()
        if batch.rows or batch.removed:
            self.publish(batch)

    def _publish_snapshot(self) -> None:
        ours = self._ours()
        self._dirty.clear()
        rows = {}
        for uuid in self._ifaces:
            row = self._row(uuid, ours)
            if row is not None:
                rows[row.name] = row
                self._names[uuid] = row.name
        self.publish(Snapshot(rows))


# --- writing a VM's contract keys (`ovsnat bind` / `unbind`) ---------------------------------
class IfaceNotFound(LookupError):
    """No Interface row carries the requested external_ids:iface-id."""


def set_iface_external_ids(remote: str, iface_id: str, set_keys: dict[str, str],
                           remove_keys: list[str] | tuple = (),
                           check: Callable[[str, int | None, dict], None] | None = None,
                           timeout: float = 10) -> dict[str, dict]:
    """Set and remove external_ids keys on every Interface row whose external_ids:iface-id is
    `iface_id`, in one OVSDB transaction; returns {interface name: external_ids after}.

    The keys are written as map mutations of single keys, so the keys other writers own
    (os-vif's, Neutron's) are never rewritten, even when they change meanwhile.
    `check(name, ofport, external_ids_after)` runs on each row before anything is sent and
    may raise to abort without writing. Raises IfaceNotFound, ConnectionError or
    TimeoutError."""
    import time
    if set(set_keys) & set(remove_keys):
        raise ValueError(f"keys both set and removed: {sorted(set(set_keys) & set(remove_keys))}")
    Txn = ovs.db.idl.Transaction
    deadline = time.monotonic() + timeout
    helper = ovs.db.idl.SchemaHelper(schema_json=fetch_schema(remote, timeout))
    helper.register_columns("Interface", ["name", "ofport", "external_ids"])
    idl = ovs.db.idl.Idl(remote, helper, leader_only=False)

    def wait(txn=None) -> None:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"OVSDB at {remote}: no answer within {timeout:g} s")
        poller = ovs.poller.Poller()
        idl.wait(poller)
        if txn is not None:
            txn.wait(poller)
        poller.timer_wait(100)
        poller.block()

    try:
        seqno = None                     # the IDL contents the last attempt was built on
        while True:
            idl.run()
            while idl.state != idl.IDL_S_MONITORING or idl.change_seqno == seqno:
                wait()
                idl.run()
            seqno = idl.change_seqno
            rows = [r for r in idl.tables["Interface"].rows.values()
                    if dict(r.external_ids).get("iface-id") == iface_id]
            if not rows:
                raise IfaceNotFound(f"no Interface has external_ids:iface-id={iface_id!r} "
                                    f"(OVSDB {remote})")
            after = {}
            for row in sorted(rows, key=lambda r: r.name):
                ids = dict(row.external_ids)
                ids.update({key: str(value) for key, value in set_keys.items()})
                for key in remove_keys:
                    ids.pop(key, None)
                if check is not None:
                    check(row.name, row.ofport[0] if row.ofport else None, ids)
                after[row.name] = ids
            txn = Txn(idl)
            for row in rows:
                present = dict(row.external_ids)
                for key in remove_keys:
                    if key in present:
                        row.delkey("external_ids", key)
                for key, value in set_keys.items():
                    if present.get(key) != str(value):
                        row.setkey("external_ids", key, str(value))
            status = txn.commit()
            while status == Txn.INCOMPLETE:
                idl.run()
                status = txn.commit()
                if status == Txn.INCOMPLETE:
                    wait(txn)
            if status in (Txn.SUCCESS, Txn.UNCHANGED):
                return after
            if status != Txn.TRY_AGAIN:
                raise ConnectionError(f"OVSDB {remote}: transaction failed: {txn.get_error()}")
            # TRY_AGAIN (connection dropped, or a row went away): wait for fresh contents.
    finally:
        idl.close()
