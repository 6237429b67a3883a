"""The OVSDB watcher: Interface rows of one bridge, as batches of changes.

The only module that talks OVSDB. It runs the python-ovs IDL in one loop (in a green thread
of the controller) and hands each batch to a callback, which posts it to the app's event
loop: all state changes happen in one place (the ovsdbapp pattern).

Two kinds of batch:
- `Snapshot`: every VM interface of the bridge. Sent on the first sync and after every
  reconnect, because the IDL drops and re-sends all rows on reconnect without delete events:
  the receiver must treat anything missing from a snapshot as gone (level-triggered).
- `Changes`: the interfaces touched since the last batch (O(changes), not O(rows)).

Bridge membership is tracked incrementally (interface -> port -> bridge), so an interface
counts only while its port is on the configured bridge.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import ovs.db.idl
import ovs.jsonrpc
import ovs.poller
import ovs.stream

LOG = logging.getLogger(__name__)

COLUMNS = {"Bridge": ["name", "ports"], "Port": ["name", "interfaces"],
           "Interface": ["name", "ofport", "external_ids", "link_state"]}


@dataclass(frozen=True)
class IfaceRow:
    name: str
    ofport: int | None
    external_ids: dict
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
            "get_schema", ["Open_vSwitch"]))
    finally:
        rpc.close()
    if error or reply.error:
        raise ConnectionError(f"get_schema from {remote} failed: {error or reply.error}")
    return reply.result


class _Idl(ovs.db.idl.Idl):
    """An IDL that records which interfaces each notification touched."""

    def __init__(self, remote, helper, watcher: "Watcher"):
        self._watcher = watcher
        super().__init__(remote, helper, leader_only=False)

    def notify(self, event, row, updates=None):
        self._watcher._notify(row._table.name, event, row, updates)


class Watcher:
    def __init__(self, remote: str, bridge: str, publish: Callable[[object], None]):
        self.remote = remote
        self.bridge = bridge
        self.publish = publish
        self.running = True
        self.reconnects = 0
        self.idl: _Idl | None = None
        self._bridge_of_port: dict = {}      # port uuid -> bridge name
        self._port_of_iface: dict = {}       # iface uuid -> port uuid
        self._ifaces_of_port: dict = {}      # port uuid -> iface uuids
        self._our_ports: set = set()         # port uuids of our bridge
        self._names: dict = {}               # iface uuid -> last published name
        self._dirty: set = set()

    # --- the loop ---------------------------------------------------------------------
    def connect(self) -> None:
        helper = ovs.db.idl.SchemaHelper(schema_json=fetch_schema(self.remote))
        for table, columns in COLUMNS.items():
            helper.register_columns(table, columns)
        self.idl = _Idl(self.remote, helper, self)

    def run_forever(self) -> None:
        monitoring = False
        while self.running:
            self.idl.run()
            now = self.idl.state == self.idl.IDL_S_MONITORING
            if now and not monitoring:
                self._publish_snapshot()
                self.reconnects += 1
            elif now and self._dirty:
                self._publish_changes()
            monitoring = now and self.idl._session.is_connected()
            poller = ovs.poller.Poller()
            self.idl.wait(poller)
            poller.timer_wait(1000)
            poller.block()

    def snapshot_once(self, timeout: float = 10.0) -> "Snapshot":
        """Connect, wait for the first full view, and return it (for the CLI tools)."""
        import time
        got: list = []
        self.publish = got.append
        self.connect()
        deadline = time.monotonic() + timeout
        try:
            while not got:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer from OVSDB at {self.remote} in {timeout}s")
                self.idl.run()
                if self.idl.state == self.idl.IDL_S_MONITORING:
                    self._publish_snapshot()
                    break
                poller = ovs.poller.Poller()
                self.idl.wait(poller)
                poller.timer_wait(100)
                poller.block()
        finally:
            self.idl.close()
        return got[0]

    def stop(self) -> None:
        self.running = False
        if self.idl is not None:
            self.idl.close()

    # --- bookkeeping from notifications -----------------------------------------------
    def _notify(self, table: str, event: str, row, updates) -> None:
        deleted = event == ovs.db.idl.ROW_DELETE
        if table == "Interface":
            self._dirty.add(row.uuid)
        elif table == "Port":
            old = self._ifaces_of_port.pop(row.uuid, set())
            new = set() if deleted else self._uuids(row, "interfaces")
            for iface in old - new:
                if self._port_of_iface.get(iface) == row.uuid:
                    del self._port_of_iface[iface]
            for iface in new:
                self._port_of_iface[iface] = row.uuid
            if new:
                self._ifaces_of_port[row.uuid] = new
            self._dirty |= old | new
        elif table == "Bridge":
            # Only our bridge matters. Its port set is compared as raw datum keys (C-speed
            # set operations), and only the ports that joined or left mark interfaces dirty:
            # adding one port to a bridge of 10,000 costs microseconds, not a rescan.
            if row.name != self.bridge:
                return
            new = set() if deleted else {a.value for a in row._data["ports"].values}
            old, self._our_ports = self._our_ports, new
            for port in old - new:
                self._bridge_of_port.pop(port, None)
            for port in new - old:
                self._bridge_of_port[port] = row.name
            for port in old ^ new:
                self._dirty |= self._ifaces_of_port.get(port, set())

    @staticmethod
    def _uuids(row, column: str) -> set:
        try:
            return {r.uuid for r in getattr(row, column)}
        except AttributeError:
            return set()

    def _row(self, iface) -> IfaceRow | None:
        """The interface as an IfaceRow if it is on our bridge, else None."""
        port = self._port_of_iface.get(iface.uuid)
        if port is None or self._bridge_of_port.get(port) != self.bridge:
            return None
        ofport = iface.ofport[0] if iface.ofport else None
        link = iface.link_state[0] if iface.link_state else None
        return IfaceRow(iface.name, ofport, dict(iface.external_ids), link)

    def _publish_changes(self) -> None:
        rows = self.idl.tables["Interface"].rows
        batch = Changes()
        for uuid in self._dirty:
            iface = rows.get(uuid)
            row = self._row(iface) if iface is not None else None
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
        """Rebuild the membership indexes from the tables and publish everything."""
        tables = self.idl.tables
        self._bridge_of_port = {p.uuid: b.name for b in tables["Bridge"].rows.values()
                                for p in b.ports}
        self._our_ports = {p for p, b in self._bridge_of_port.items() if b == self.bridge}
        self._port_of_iface = {i.uuid: p.uuid for p in tables["Port"].rows.values()
                               for i in p.interfaces}
        self._ifaces_of_port = {}
        for iface, port in self._port_of_iface.items():
            self._ifaces_of_port.setdefault(port, set()).add(iface)
        self._names.clear()
        self._dirty.clear()
        rows = {}
        for iface in tables["Interface"].rows.values():
            row = self._row(iface)
            if row is not None:
                rows[row.name] = row
                self._names[iface.uuid] = row.name
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
