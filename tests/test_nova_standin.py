"""The stand-in of Nova's os-server-external-events (ovsnat.lab.openstack.novaapi): Nova 34's
schema and answers, and its records. Pure parts; the lab tests have Neutron's real Nova
notifier post to it (tests/test_openstack_traffic.py)."""

from __future__ import annotations

import json

from ovsnat.lab.openstack.novaapi import Records, answer, microversion, validate

VM, OTHER = "8d6a3a61-3f0b-4f57-9e1c-0e7a6c5f4e21", "0b9e7d2c-2c55-4a5e-8f0e-61f5d1b3c0aa"
PLUGGED = {"name": "network-vif-plugged", "server_uuid": VM, "status": "completed",
           "tag": "port-1"}


def test_neutrons_body_is_valid_and_what_nova_refuses_is_not():
    assert validate({"events": [PLUGGED]}, (2, 1)) is None
    assert validate({"events": [{"name": "network-changed", "server_uuid": VM}]}, (2, 1)) \
        is None
    for bad in ({}, {"events": []}, {"events": [PLUGGED], "x": 1},
                {"events": [{**PLUGGED, "name": "volume-extended"}]},     # 2.51 and later
                {"events": [{**PLUGGED, "status": "done"}]},
                {"events": [{**PLUGGED, "server_uuid": "vm1"}]},
                {"events": [{**PLUGGED, "host": "hv1"}]},
                {"events": [{**PLUGGED, "tag": "t" * 256}]},
                {"events": [{"name": "network-vif-plugged"}]}):
        assert validate(bad, (2, 1)), bad
    assert validate({"events": [{**PLUGGED, "name": "volume-extended"}]}, (2, 51)) is None


def test_answers_as_novas_controller_does():
    """200 when every event is for an instance with a host; otherwise 207, the event
    refused with 404 (unknown instance) or 422 (no host yet)."""
    assert answer([PLUGGED], {VM: "hv1"}) == (200, [{**PLUGGED, "code": 200}])
    code, events = answer([PLUGGED, {**PLUGGED, "server_uuid": OTHER}], {VM: None})
    assert code == 207
    assert [(e["status"], e["code"]) for e in events] == [("failed", 422), ("failed", 404)]
    code, events = answer([{**PLUGGED, "status": "failed"}], {VM: "hv2"})
    assert (code, events[0]["status"], events[0]["code"]) == (200, "completed", 200)


def test_the_microversion_comes_from_either_header_and_defaults_to_2_1():
    assert microversion({"OpenStack-API-Version": "compute 2.51"}) == (2, 51)
    assert microversion({"X-OpenStack-Nova-API-Version": "2.1"}) == (2, 1)
    assert microversion({}) == (2, 1)


def test_records_keep_instances_and_read_only_whole_event_lines(tmp_path):
    records = Records(str(tmp_path))
    records.set_instance(VM, "hv1")
    records.set_instance(OTHER, "hv2")
    records.set_instance(OTHER, None)
    assert records.instances() == {VM: "hv1"}
    records.append([{**PLUGGED, "code": 200, "at": 10.0}, {**PLUGGED, "code": 200, "at": 12.0}])
    with open(records.events_file, "a") as f:
        f.write(json.dumps({**PLUGGED, "at": 13.0})[:20])          # a line being written
    assert [e["at"] for e in records.events()] == [10.0, 12.0]
    assert [e["at"] for e in records.events(since=11.0)] == [12.0]
