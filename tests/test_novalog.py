"""What the OpenStack lab reads from logs, without running anything: the events Nova's API
accepted (ovsnat/lab/openstack/novalog.py) and the moments an OVSDB monitor announced a row
and its keys (ovsnat/lab/openstack/rowwatch.py), from text as Nova 34 and ovsdb-client
write it."""

from __future__ import annotations

import os
from datetime import datetime, timezone

from ovsnat.lab.openstack import config as cfg
from ovsnat.lab.openstack import novalog
from ovsnat.lab.openstack.rowwatch import RowWatch

PORT, SERVER = "5d3af28c-e4ca-4c8c-94e1-f6608bac24e8", "a4d0b5ef-4ebb-4842-8170-7f78fdf97b4d"
NOVA_API_LOG = f"""\
2026-12-05 01:41:50.100 8104 INFO nova.api.openstack.requestlog [None req-1 u p - - default default] 127.0.0.1 "POST /v2.1/servers/{SERVER}/action" status: 202
2026-12-05 01:41:51.250 8104 DEBUG nova.api.openstack.compute.server_external_events [None req-2 u p - - default default] Dropping event network-vif-plugged:{PORT} for unknown instance {SERVER}
2026-12-05 01:41:52.345 8104 INFO nova.api.openstack.compute.server_external_events [None req-3 u p - - default default] Creating event network-changed:{PORT} for instance {SERVER} on hv4
2026-12-05 01:41:53.006 8104 INFO nova.api.openstack.compute.server_external_events [None req-4 u p - - default default] Creating event network-vif-plugged:{PORT} for instance {SERVER} on hv4
"""


def _paths(tmp_path) -> cfg.Paths:
    paths = cfg.Paths(str(tmp_path))
    os.makedirs(paths.log)
    with open(novalog.log_path(paths, "nova-api"), "w") as f:
        f.write(NOVA_API_LOG)
    return paths


def test_the_events_nova_accepted_with_their_times_and_no_other(tmp_path):
    paths = _paths(tmp_path)
    got = novalog.events(paths)
    assert [(e.name, e.tag, e.server, e.host) for e in got] == [
        ("network-changed", PORT, SERVER, "hv4"),
        ("network-vif-plugged", PORT, SERVER, "hv4"),
    ]
    assert got[1].at == datetime(2026, 12, 5, 1, 41, 53, 6000).timestamp()  # local time
    plugged = novalog.first_event(paths, novalog.VIF_PLUGGED, PORT, got[0].at)
    assert plugged == got[1]
    # `since` is compared a millisecond early: the log truncates to the millisecond
    assert novalog.first_event(paths, novalog.VIF_PLUGGED, PORT, got[1].at + 0.0009) == got[1]
    assert novalog.first_event(paths, novalog.VIF_PLUGGED, PORT, got[1].at + 0.002) is None
    assert novalog.first_event(paths, novalog.VIF_PLUGGED, "other-port", 0.0) is None


def test_no_log_yet_means_no_event(tmp_path):
    paths = cfg.Paths(str(tmp_path))
    assert novalog.events(paths) == []


MONITOR = """\
row                                  action  name           external_ids
------------------------------------ ------- -------------- ------------
7f0b0a3e-1111-4b6e-9a43-0a0a0a0a0a0a initial br-int         {}

2026-12-05 01:41:51.862
row                                  action name           external_ids
------------------------------------ ------ -------------- ----------------------------------
9d8358d1-08cb-4090-a8f1-613f13a48038 insert tap5d3af28c-e4 {attached-mac="fa:16:3e:ef:27:a8"}

2026-12-05 01:41:52.001
row                                  action name           external_ids
------------------------------------ ------ -------------- ----------------------------------
9d8358d1-08cb-4090-a8f1-613f13a48038 old                   {attached-mac="fa:16:3e:ef:27:a8"}
                                     new    tap5d3af28c-e4 {attached-mac="fa:16:3e:ef:27:a8", ovsnat-fixed-ip="10.1.0.9"}

2026-12-05 01:41:52.140
row                                  action name           external_ids
------------------------------------ ------ -------------- ----------------------------------
9d8358d1-08cb-4090-a8f1-613f13a48038 old                   {attached-mac="fa:16:3e:ef:27:a8", ovsnat-fixed-ip="10.1.0.9"}
                                     new    tap5d3af28c-e4 {attached-mac="fa:16:3e:ef:27:a8", ovsnat-fixed-ip="10.1.0.9", ovsnat-ready="true"}
"""


def _watch(tmp_path, iface: str) -> RowWatch:
    watch = RowWatch.__new__(RowWatch)  # no lab: only the monitor's text is read
    watch.iface, watch.path = iface, str(tmp_path / "monitor.log")
    with open(watch.path, "w") as f:
        f.write(MONITOR)
    return watch


def _utc(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


def test_a_rows_insertion_and_its_keys_as_the_monitor_announced_them(tmp_path):
    watch = _watch(tmp_path, "tap5d3af28c-e4")
    assert watch.inserted_or_none() == _utc("2026-12-05 01:41:51.862")  # ovsdb-client: UTC
    assert watch.key_at("ovsnat-fixed-ip", timeout=0) == _utc("2026-12-05 01:41:52.001")
    assert watch.key_at("ovsnat-ready", timeout=0) == _utc("2026-12-05 01:41:52.140")
    # an old row's values are not the row's state: only inserts and new rows count
    assert _watch(tmp_path, "tap-other").inserted_or_none() is None
    assert _watch(tmp_path, "br-int").inserted_or_none() is None  # initial, not new
