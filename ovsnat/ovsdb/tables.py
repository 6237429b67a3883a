"""One bridge's rows as OVSDB's monitor describes them, kept up to date from `update2`
notifications: interfaces, the ports that hold them, the bridges that hold the ports. Pure
bookkeeping for the watcher (ovsnat.ovsdb.watcher), which publishes what changed.

Bridge membership is tracked incrementally (interface -> port -> bridge), so an interface
counts only while its port is on the configured bridge, and a set or map column arrives as
a difference: the cost of a change does not depend on how many ports the bridge has. One
small frozen `IfaceRow` per interface, with only the external_ids keys ovsnat reads.
"""

from __future__ import annotations

import sys

from ovsnat.model import KEY_ATTACHED_MAC, KEY_IFACE_ID
from ovsnat.model.ports import PROXY_KEYS
from ovsnat.model.rows import IfaceRow
from ovsnat.ovsdb.values import apply_map_diff as _apply_map_diff
from ovsnat.ovsdb.values import map_of as _map
from ovsnat.ovsdb.values import optional as _optional
from ovsnat.ovsdb.values import set_of as _set


def kept_key(key: str) -> bool:
    """The external_ids keys the controller reads; a hypervisor's other keys (vm-uuid,
    iface-status, Neutron's and os-vif's, and the metadata proxy's instance and project) are
    dropped as they arrive, so they cost no memory."""
    if key in PROXY_KEYS:
        return False
    return key in (KEY_IFACE_ID, KEY_ATTACHED_MAC) or key.startswith("ovsnat-")


class Tables:
    def __init__(self, bridge: str):
        self.bridge = bridge
        self.ifaces: dict[str, IfaceRow] = {}  # iface uuid -> row (every bridge)
        self.bridges: dict[str, tuple[str, set]] = {}  # bridge uuid -> (name, port uuids)
        self.bridge_ids: dict[str, dict] = {}  # bridge uuid -> its ovsnat-* external_ids
        self.dpids: dict[str, str] = {}  # bridge uuid -> its datapath_id
        self.controllers: dict[str, set] = {}  # bridge uuid -> its Controller uuids
        self.port_of_iface: dict[str, str] = {}  # iface uuid -> port uuid
        self.ifaces_of_port: dict[str, tuple] = {}  # port uuid -> iface uuids
        self.dirty: set[str] = set()  # interfaces changed since the watcher last looked

    def apply(self, updates: dict) -> None:
        """One monitor reply or update2 notification."""
        for table, rows in updates.items():
            apply = {
                "Bridge": self._bridge,
                "Port": self._port,
                "Interface": self._iface,
            }[table]
            for uuid, change in rows.items():
                for kind, row in change.items():
                    apply(sys.intern(uuid), kind, row or {})

    def _bridge(self, uuid: str, kind: str, row: dict) -> None:
        """Only our bridge's port set matters. A modify carries the ports that joined or
        left, so adding one port to a bridge of 10,000 touches one port, not 10,000."""
        name, ports = self.bridges.pop(uuid, (None, set()))
        was_ours = name == self.bridge
        if kind == "delete":
            touched = ports if was_ours else set()
            self.bridge_ids.pop(uuid, None)
            self.controllers.pop(uuid, None)
            self.dpids.pop(uuid, None)
        else:
            diff = set(_set(row["ports"])) if "ports" in row else set()
            if kind == "modify":
                ports ^= diff  # in place: O(ports changed)
            else:
                ports = diff  # initial, insert: the whole set
            name = row.get("name", name)
            self.bridges[uuid] = (name, ports)
            if "controller" in row:
                ctls = set(_set(row["controller"]))
                self.controllers[uuid] = (
                    self.controllers.get(uuid, set()) ^ ctls if kind == "modify" else ctls
                )
            if "datapath_id" in row:
                self.dpids[uuid] = _optional(row["datapath_id"]) or ""
            if "external_ids" in row:
                ids = {k: v for k, v in _map(row["external_ids"]).items() if kept_key(k)}
                old = self.bridge_ids.get(uuid, {})
                self.bridge_ids[uuid] = _apply_map_diff(old, ids) if kind == "modify" else ids
            is_ours = name == self.bridge
            if was_ours and is_ours:
                touched = diff
            else:  # became ours, stopped being ours, or neither
                touched = ports | diff if was_ours or is_ours else set()
        for port in touched:
            self.dirty.update(self.ifaces_of_port.get(port, ()))

    def _port(self, uuid: str, kind: str, row: dict) -> None:
        old = self.ifaces_of_port.pop(uuid, ())
        new = old
        if kind == "delete":
            new = ()
        elif "interfaces" in row:
            diff = _set(row["interfaces"])
            new = tuple(set(old) ^ set(diff)) if kind == "modify" else tuple(diff)
        for iface in old:
            if self.port_of_iface.get(iface) == uuid:
                del self.port_of_iface[iface]
        for iface in new:
            self.port_of_iface[iface] = uuid
        if new:
            self.ifaces_of_port[uuid] = new
        self.dirty.update(old)
        self.dirty.update(new)

    def _iface(self, uuid: str, kind: str, row: dict) -> None:
        self.dirty.add(uuid)
        old = self.ifaces.pop(uuid, None)
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
        self.ifaces[uuid] = IfaceRow(row.get("name", old.name), ofport, ids, link)

    def ours(self) -> set:
        return next((ports for name, ports in self.bridges.values() if name == self.bridge), set())

    def our_ids(self) -> dict:
        for uuid, (name, _) in self.bridges.items():
            if name == self.bridge:
                return dict(self.bridge_ids.get(uuid, {}))
        return {}

    def our_dpid(self) -> str:
        return next(
            (
                self.dpids.get(uuid, "")
                for uuid, (name, _) in self.bridges.items()
                if name == self.bridge
            ),
            "",
        )

    def row(self, uuid: str, ours: set) -> IfaceRow | None:
        """The interface if it is on our bridge, else None."""
        if self.port_of_iface.get(uuid) not in ours:
            return None
        return self.ifaces.get(uuid)

    def our_controllers(self) -> set[str]:
        """The Controller rows of our bridge."""
        return {
            c
            for u, (name, _) in self.bridges.items()
            if name == self.bridge
            for c in self.controllers.get(u, ())
        }
