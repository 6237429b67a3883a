"""The agent's view of the local OVSDB, through ovsdbapp: which VM ports sit on ovsnat's
bridge, their external_ids, and single-key writes.

Row events only wake the agent (ovsdbapp's style: the IDL runs in its own thread and hands
work to the app's loop). The agent then compares a fresh snapshot with what it wants, so
an OVSDB reconnect (the IDL drops and re-sends every row, without delete events) needs no
special case: the next snapshot is simply complete again.

Writes are single-key map mutations (`setkey`/`delkey`), never a rewrite of the column:
os-vif, Nova and ovsnat's controller write other keys of the same rows, and a whole-column
write (ovsdbapp's db_set on a map) could erase a key one of them set a moment earlier.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from oslo_log import log
from ovs.db import idl as ovs_idl
from ovsdbapp.backend.ovs_idl import command, connection, idlutils, transaction
from ovsdbapp.schema.open_vswitch import impl_idl

from ovsnat.neutron.keys import KeyDiff

LOG = log.getLogger(__name__)

COLUMNS = {
    "Open_vSwitch": ["bridges"],
    "Bridge": ["name", "ports", "external_ids", "datapath_type"],
    "Port": ["name", "interfaces"],
    "Interface": ["name", "external_ids"],
}


@dataclass(frozen=True)
class VmRow:
    """An Interface on ovsnat's bridge that carries a Neutron port id (os-vif's iface-id)."""

    name: str
    port_id: str
    external_ids: dict = field(hash=False)


@dataclass(frozen=True)
class Snapshot:
    """The bridge as OVSDB shows it now; connected=False: nothing was ever read (the agent
    waits). After a disconnection the IDL keeps the last rows it had, a consistent if
    aging picture: writes made meanwhile wait for OVSDB (up to [ovs] ovsdb_timeout) and
    are retried; on reconnection the IDL reloads and every change wakes the agent."""

    connected: bool
    bridge_found: bool
    datapath_type: str
    bridge_ids: dict
    rows: dict  # port id -> VmRow (a port id on two rows: the first name wins)


class _WakingIdl(ovs_idl.Idl):
    """An IDL that calls `on_change` after every row change (from the IDL's thread)."""

    def __init__(self, remote, helper, on_change: Callable[[], None]):
        super().__init__(remote, helper)
        self._on_change = on_change

    def notify(self, event, row, updates=None):
        self._on_change()


class _SetKeys(command.BaseCommand):
    """Set and delete single keys of one row's map column (mutations, not a rewrite)."""

    def __init__(self, api, table: str, record: str, column: str, diff: KeyDiff):
        super().__init__(api)
        self.table, self.record, self.column, self.diff = table, record, column, diff

    def run_idl(self, txn):
        try:
            row = self.api.lookup(self.table, self.record)
        except idlutils.RowNotFound:
            return  # unplugged meanwhile: nothing to write
        for key in self.diff.remove:
            row.delkey(self.column, key)
        for key, value in self.diff.set.items():
            row.setkey(self.column, key, value)


class LocalOvsdb:
    """ovsdbapp connection to this host's ovsdb-server, watching one bridge."""

    def __init__(
        self, remote: str, bridge: str, on_change: Callable[[], None], timeout: float = 10
    ):
        self.bridge = bridge
        self.timeout = timeout
        helper = idlutils.get_schema_helper(remote, "Open_vSwitch")
        for table, cols in COLUMNS.items():
            helper.register_columns(table, cols)
        self.idl = _WakingIdl(remote, helper, on_change)
        self.conn = connection.Connection(self.idl, timeout=timeout)
        self.api = impl_idl.OvsdbIdl(self.conn)
        self._lock = threading.Lock()

    def snapshot(self) -> Snapshot:
        """Read under the connection's lock, so the IDL thread does not change rows while
        we walk them."""
        with self.conn.lock:
            connected = self.idl.has_ever_connected()
            bridge = next(
                (b for b in self.idl.tables["Bridge"].rows.values() if b.name == self.bridge), None
            )
            if bridge is None:
                return Snapshot(connected, False, "", {}, {})
            rows: dict[str, VmRow] = {}
            for port in bridge.ports:
                for iface in port.interfaces:
                    ids = dict(iface.external_ids)
                    pid = ids.get("iface-id")
                    if pid and pid not in rows:
                        rows[pid] = VmRow(iface.name, pid, ids)
            return Snapshot(
                connected, True, bridge.datapath_type or "system", dict(bridge.external_ids), rows
            )

    def write_keys(self, table: str, record: str, diff: KeyDiff) -> None:
        """Apply one row's key changes in one transaction; raises on failure (the caller
        retries on its next pass)."""
        if not diff:
            return
        with self._lock:
            txn = transaction.Transaction(
                self.api, self.conn, self.timeout, check_error=True, log_errors=False
            )
            txn.add(_SetKeys(self.api, table, record, "external_ids", diff))
            txn.commit()

    def write_bridge(self, diff: KeyDiff, what: str, shown: Callable = list) -> bool:
        """Bridge keys (security groups', routers'): False when OVSDB refused them (logged;
        the caller retries at once). `shown`: how the set values are logged."""
        if not diff:
            return True
        try:
            self.write_keys("Bridge", self.bridge, diff)
        except Exception as e:
            LOG.warning("bridge %s: %s keys not written (%s); retrying", self.bridge, what, e)
            return False
        LOG.info(
            "bridge %s: %s set %s, removed %s",
            self.bridge,
            what,
            shown(diff.set),
            list(diff.remove),
        )
        return True

    def stop(self) -> None:
        self.conn.stop(timeout=2)
