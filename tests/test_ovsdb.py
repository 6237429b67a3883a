"""The OVSDB watcher against a real ovsdb-server and ovs-vswitchd: after every kind of change
an operator or Nova can make, the watcher's view of br-int equals what OVSDB says; and the
update2 bookkeeping costs O(change), whatever the bridge's size (pure tests at the end)."""

from __future__ import annotations

import json
import threading

import pytest

from ovsnat import ovsdb
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import BRIDGE
from ovsnat.model.rows import IfaceRow, Snapshot
from ovsnat.ovsdb.tables import Tables

VM_IDS = {
    "iface-id": "vm1",
    "attached-mac": "02:00:00:00:00:01",
    "ovsnat-fixed-ip": "10.0.0.5",
    "ovsnat-fip": "203.0.113.10",
    "vm-uuid": "8f0c",
    "iface-status": "active",
}


class View:
    """What a controller would hold: Snapshots replace it, Changes patch it."""

    def __init__(self, remote: str):
        self.rows: dict[str, IfaceRow] = {}
        self.snapshots = 0
        self.lock = threading.Lock()
        self.watcher = ovsdb.Watcher(remote, BRIDGE, self._publish)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _publish(self, batch) -> None:
        with self.lock:
            if isinstance(batch, Snapshot):
                self.snapshots += 1
                self.rows = dict(batch.rows)
            else:
                for name in batch.removed:
                    self.rows.pop(name, None)
                self.rows.update(batch.rows)

    def _run(self) -> None:
        self.watcher.connect()
        self.watcher.run_forever()

    def plain(self) -> dict:
        with self.lock:
            return {n: (r.ofport, r.external_ids, r.link_state) for n, r in self.rows.items()}


def truth(host) -> dict:
    """br-int's interfaces as OVSDB has them, read with ovs-vsctl, external_ids filtered the
    way the watcher documents."""

    def table(name, columns):
        out = json.loads(host.vsctl("--format=json", f"--columns=_uuid,{columns}", "list", name))
        return [dict(zip(out["headings"], row, strict=True)) for row in out["data"]]

    def atoms(value):
        return [a[1] for a in value[1]] if value[0] == "set" else [value[1]]

    def optional(value):
        return None if value == ["set", []] else value

    bridge = next(b for b in table("Bridge", "name,ports") if b["name"] == BRIDGE)
    ports = {p["_uuid"][1]: atoms(p["interfaces"]) for p in table("Port", "interfaces")}
    ours = {i for p in atoms(bridge["ports"]) for i in ports[p]}
    return {
        i["name"]: (
            optional(i["ofport"]),
            {k: v for k, v in i["external_ids"][1] if ovsdb.kept_key(k)},
            optional(i["link_state"]),
        )
        for i in table("Interface", "name,ofport,external_ids,link_state")
        if i["_uuid"][1] in ours
    }


@pytest.fixture
def watched(make_lab):
    lab = make_lab()
    host = lab.add_host("hv1", dummy=True)
    view = View(f"unix:{host.ovs.db_sock}")
    view.thread.start()
    yield host, view
    view.watcher.running = False
    view.thread.join(5)
    view.watcher.stop()


def agrees(host, view, what: str) -> None:
    wait_for(lambda: view.plain() == truth(host), 10, what=f"watcher agrees with OVSDB {what}")


def add_dummy(host, name: str, bridge: str = BRIDGE, **ids) -> None:
    host.vsctl(
        "add-port",
        bridge,
        name,
        "--",
        "set",
        "Interface",
        name,
        "type=dummy",
        *[f'external_ids:{k}="{v}"' for k, v in ids.items()],
    )


@pytest.mark.lab
def test_the_watchers_view_of_br_int_follows_every_kind_of_change(watched):
    host, view = watched
    agrees(host, view, "at start")
    add_dummy(host, "p1", **VM_IDS)
    add_dummy(host, "p2", **{**VM_IDS, "iface-id": "vm2", "ovsnat-fixed-ip": "10.0.0.6"})
    agrees(host, view, "after two VMs were plugged")
    assert "vm-uuid" not in view.plain()["p1"][1], "keys ovsnat does not read are dropped"
    assert view.plain()["p1"][0] > 0

    host.vsctl("set", "Interface", "p1", 'external_ids:ovsnat-fip="203.0.113.20"')
    host.vsctl("remove", "Interface", "p2", "external_ids", "ovsnat-fip")
    host.vsctl(
        "set", "Interface", "p2", 'external_ids:ovsnat-extra="x"', 'external_ids:vm-uuid="other"'
    )
    agrees(host, view, "after external_ids edits (changed, removed, added keys)")
    assert view.plain()["p1"][1]["ovsnat-fip"] == "203.0.113.20"
    assert "ovsnat-fip" not in view.plain()["p2"][1]

    host.vsctl("set", "Interface", "p1", "link_state=down")
    agrees(host, view, "after a link went down")
    host.vsctl("set", "Interface", "p1", "ofport_request=77")
    wait_for(lambda: view.plain().get("p1", (0,))[0] == 77, 10, what="p1's new ofport")
    agrees(host, view, "after an ofport change")

    host.vsctl("add-br", "br-other", "--", "set", "Bridge", "br-other", "datapath_type=netdev")
    host.vsctl(
        "del-port",
        "p2",
        "--",
        "add-port",
        "br-other",
        "p2",
        "--",
        "set",
        "Interface",
        "p2",
        "type=dummy",
    )
    agrees(host, view, "after p2 moved to another bridge")
    assert "p2" not in view.plain()
    add_dummy(host, "q1", bridge="br-other", **{**VM_IDS, "iface-id": "q"})
    host.vsctl(
        "add-bond",
        BRIDGE,
        "bond0",
        "b1",
        "b2",
        "--",
        "set",
        "Interface",
        "b1",
        "type=dummy",
        'external_ids:iface-id="b1"',
        "--",
        "set",
        "Interface",
        "b2",
        "type=dummy",
    )
    agrees(host, view, "after a bond (one port, two interfaces) joined")
    assert {"b1", "b2"} <= set(view.plain()) and "q1" not in view.plain()
    host.vsctl("del-port", "p1", "--", "del-port", "bond0")
    agrees(host, view, "after ports were deleted")
    assert not {"p1", "b1", "b2"} & set(view.plain())
    host.vsctl("del-br", "br-other")
    agrees(host, view, "after another bridge was deleted")
    assert view.snapshots == 1, "no reconnect happened, so no second snapshot"


@pytest.mark.lab
def test_after_ovsdb_server_restarts_the_watcher_resyncs_with_a_snapshot(watched):
    host, view = watched
    add_dummy(host, "p1", **VM_IDS)
    agrees(host, view, "before the restart")
    host.ovs.stop_daemon("ovsdb-server")
    host.ovs.start_db()
    wait_for(lambda: view.snapshots == 2, 10, what="a second snapshot after the reconnect")
    host.vsctl("set", "Interface", "p1", 'external_ids:ovsnat-fip="203.0.113.30"')
    agrees(host, view, "after the restart and a change")
    assert view.watcher.reconnects == 2


def _pump(watcher: ovsdb.Watcher, got: list, until, what: str) -> None:
    """Run the watcher in this thread until `until(got)` holds."""
    wait_for(lambda: (watcher.run_once(), until(got))[1], 10, interval=0.02, what=what)


@pytest.mark.lab
def test_bridge_keys_are_published_and_the_controllers_key_writes_land(make_lab):
    lab = make_lab()
    host = lab.add_host("hv1", dummy=True)
    add_dummy(host, "p1", **VM_IDS)
    host.vsctl("br-set-external-id", BRIDGE, "ovsnat-snat-ip", "203.0.113.50")
    host.vsctl("br-set-external-id", BRIDGE, "unrelated", "x")
    got: list = []
    w = ovsdb.Watcher(f"unix:{host.ovs.db_sock}", BRIDGE, got.append)
    w.connect()
    try:
        _pump(w, got, lambda g: g, "the first snapshot")
        assert got[0].bridge_ids == {"ovsnat-snat-ip": "203.0.113.50"}
        host.vsctl("br-set-external-id", BRIDGE, "ovsnat-snat-ip", "203.0.113.51")
        _pump(
            w,
            got,
            lambda g: any(
                getattr(b, "bridge_ids", None) == {"ovsnat-snat-ip": "203.0.113.51"} for b in g[1:]
            ),
            "the bridge key's change",
        )
        assert w.write_keys("p1", {"ovsnat-installed": "true"})
        _pump(
            w,
            got,
            lambda g: (
                g[-1].rows.get("p1") is not None
                and g[-1].rows["p1"].external_ids.get("ovsnat-installed") == "true"
            ),
            "the written key to come back",
        )
        assert w.write_keys("p1", {}, ("ovsnat-installed",))
        _pump(
            w,
            got,
            lambda g: (
                "ovsnat-installed"
                not in g[-1].rows.get("p1", IfaceRow("", 0, {"ovsnat-installed": 1})).external_ids
            ),
            "the removed key to go",
        )
        ids = host.vsctl("get", "Interface", "p1", "external_ids")
        assert "vm-uuid" in ids and "iface-status" in ids, "other writers' keys untouched"
        assert not w.write_keys("no-such-port", {"ovsnat-installed": "true"})
    finally:
        w.stop()


def test_reconnecting_closes_the_previous_session(tmp_path):
    import socket

    path = str(tmp_path / "db.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    w = ovsdb.Watcher(f"unix:{path}", BRIDGE, lambda batch: None)
    try:
        w.connect()
        w.run_once()
        first, _ = server.accept()
        first.settimeout(5)
        w.connect()  # e.g. the controller's OVSDB loop retrying
        w.run_once()
        while first.recv(4096):  # the old session is closed: EOF, not a timeout
            pass
        second, _ = server.accept()  # and the new one is connected
        second.close()
        first.close()
    finally:
        w.stop()
        server.close()


# --- pure: update2 bookkeeping -------------------------------------------------------------------
def _updates(tables: Tables, updates: dict) -> set:
    tables.apply(updates)
    dirty, tables.dirty = set(tables.dirty), set()
    return dirty


def _big_bridge(n: int) -> Tables:
    w = Tables(BRIDGE)
    ports = [f"port-{i}" for i in range(n)]
    _updates(
        w,
        {
            "Bridge": {
                "br": {"initial": {"name": BRIDGE, "ports": ["set", [["uuid", p] for p in ports]]}}
            },
            "Port": {p: {"initial": {"interfaces": ["uuid", f"if-{p}"]}} for p in ports},
            "Interface": {f"if-{p}": {"initial": {"name": p, "ofport": 5}} for p in ports},
        },
    )
    return w


def test_one_port_joining_a_bridge_of_10000_touches_only_that_port():
    w = _big_bridge(10_000)
    dirty = _updates(
        w,
        {
            "Interface": {"if-new": {"insert": {"name": "new", "ofport": 9}}},
            "Port": {"port-new": {"insert": {"interfaces": ["uuid", "if-new"]}}},
            "Bridge": {"br": {"modify": {"ports": ["uuid", "port-new"]}}},
        },
    )
    assert dirty == {"if-new"}
    assert "port-new" in w.ours() and len(w.ours()) == 10_001
    dirty = _updates(w, {"Bridge": {"br": {"modify": {"ports": ["uuid", "port-7"]}}}})
    assert dirty == {"if-port-7"} and "port-7" not in w.ours(), "a diff element toggles"


def test_update2_values_optional_columns_are_replaced_maps_are_diffs():
    w = _big_bridge(1)
    _updates(
        w,
        {
            "Interface": {
                "if-port-0": {
                    "modify": {
                        "ofport": 7,
                        "link_state": "up",
                        "external_ids": [
                            "map",
                            [["iface-id", "a"], ["ovsnat-fip", "1.2.3.4"], ["x", "y"]],
                        ],
                    }
                }
            }
        },
    )
    row = w.ifaces["if-port-0"]
    assert (row.ofport, row.link_state) == (7, "up")
    assert row.external_ids == {"iface-id": "a", "ovsnat-fip": "1.2.3.4"}
    _updates(
        w,
        {
            "Interface": {
                "if-port-0": {
                    "modify": {
                        "ofport": ["set", []],
                        "external_ids": ["map", [["iface-id", "b"], ["ovsnat-fip", "1.2.3.4"]]],
                    }
                }
            }
        },
    )
    row = w.ifaces["if-port-0"]
    assert row.ofport is None and row.external_ids == {"iface-id": "b"}


def test_the_bridges_datapath_id_is_published_and_its_changes_too():
    got = []
    w = ovsdb.Watcher("unix:/nonexistent", BRIDGE, got.append)
    w.tables = _big_bridge(1)
    _updates(
        w.tables,
        {
            "Bridge": {"br": {"modify": {"datapath_id": "00000000000000aa"}}},
            "Interface": {"if-port-0": {"modify": {"ofport": 5}}},
        },
    )
    w._publish_snapshot()
    assert got[-1].datapath_id == "00000000000000aa"
    _updates(w.tables, {"Bridge": {"br": {"modify": {"datapath_id": "00000000000000bb"}}}})
    w._publish_changes()
    assert got[-1].datapath_id == "00000000000000bb" and not got[-1].rows
    w.tables.apply({"Interface": {"if-port-0": {"modify": {"ofport": 6}}}})
    w._publish_changes()
    assert got[-1].rows and got[-1].datapath_id is None  # unchanged: not repeated


class _Session:
    """A connected jsonrpc session that sends anything and never answers."""

    def __init__(self):
        self.connected = True

    def is_connected(self):
        return self.connected

    def send(self, msg):
        return 0


def test_key_writes_awaiting_an_answer_are_bounded_and_forgotten_on_reconnect():
    from ovsnat.ovsdb.watcher import MAX_WRITES

    w = ovsdb.Watcher("unix:/nonexistent", BRIDGE, lambda batch: None)
    w.session, w._uuid_of["tap1"] = _Session(), "if-1"
    for i in range(MAX_WRITES + 50):  # a server that never answers
        assert w.write_keys("tap1", {"ovsnat-installed": str(i)})
    assert len(w._writes) == MAX_WRITES
    w.session.connected, w._session_state = False, (3, False)
    w._on_session_change()  # the session dropped: none will be answered
    assert w._writes == {}


def test_a_refused_key_write_is_logged_once_per_distinct_error(caplog):
    import logging

    import ovs.jsonrpc

    w = ovsdb.Watcher("unix:/nonexistent", BRIDGE, lambda batch: None)
    refused = ovs.jsonrpc.Message.create_reply([{"error": "constraint violation"}], 1)
    other = ovs.jsonrpc.Message.create_reply([{"error": "permission denied"}], 2)
    with caplog.at_level(logging.WARNING):
        for msg in (refused, refused, refused, other):
            w._write_done("tap1: set ['ovsnat-installed']", msg)
    warnings = [r.getMessage() for r in caplog.records if "refused a write" in r.getMessage()]
    assert len(warnings) == 2 and "constraint violation" in warnings[0], warnings
