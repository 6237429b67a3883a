"""The controller's fast path: flow_mods packed directly to bytes decode, in OVS itself,
exactly like the framework's messages and the golden text."""

from __future__ import annotations

import pytest

from ovsnat.cli import golden
from ovsnat.compile import groups
from ovsnat.compile.actions import DecTtl, Group
from ovsnat.compile.compiler import compile_state
from ovsnat.compile.flows import Match, make_flow
from ovsnat.core.state import HostState
from ovsnat.model import HostConfig
from ovsnat.openflow import blobs, codec, messages
from tests import framework_render as ofmsgs
from tests.test_ofmsgs import ADD, OfflineDatapath, as_dump_line, ofp_parse, serialize


def scenario_flows(name):
    return compile_state(golden.scenario_state(name))


@pytest.mark.parametrize("name", sorted(golden.SCENARIOS))
def test_packed_flow_mods_decode_like_the_framework_path_and_the_golden_text(tmp_path, name):
    flows = scenario_flows(name)
    fast = ofp_parse(tmp_path, b"".join(messages.flow_add(f, i) for i, f in enumerate(flows, 1)))
    framework = ofp_parse(tmp_path, serialize(ofmsgs.flow_add(OfflineDatapath(), f) for f in flows))
    fast_lines = [as_dump_line(m) for m in ADD.finditer(fast)]
    assert fast_lines == [as_dump_line(m) for m in ADD.finditer(framework)]
    assert fast_lines == [f.text() for f in flows]
    assert "decode error" not in fast


def test_pending_fip_flows_decode_too(tmp_path):
    host = HostState(HostConfig.parse(golden.BASE))
    port = golden.port(11, "203.0.113.10")
    host.update(port.name, port)
    flows = host.all_flows()
    decoded = ofp_parse(tmp_path, b"".join(messages.flow_add(f, 1) for f in flows))
    assert [as_dump_line(m) for m in ADD.finditer(decoded)] == [f.text() for f in flows]


@pytest.mark.parametrize("name", sorted(golden.SCENARIOS))
def test_a_concatenation_of_packed_flow_mods_reads_back_as_its_flows_keys(name):
    flows = scenario_flows(name)
    blob = b"".join(messages.flow_add(f, 0) for f in flows)
    keys = [(f.table, f.cookie) for f in flows]
    assert blobs.flow_mod_keys(blob) == keys
    assert list(blobs.iter_flow_mods(blob)) == [
        (k, messages.flow_add(f, 0)) for k, f in zip(keys, flows, strict=True)
    ]
    assert blobs.flow_mod_keys(b"") == [] and list(blobs.iter_flow_mods(b"")) == []


def test_a_corrupt_blob_of_flow_mods_raises_instead_of_looping_or_misreading():
    one = messages.flow_add(scenario_flows("fip-only")[0], 0)
    for bad in (one + one[:60], one[:2] + b"\0\0" + one[4:], one[:-8]):
        with pytest.raises(ValueError):
            blobs.flow_mod_keys(bad)
        with pytest.raises(ValueError):
            list(blobs.iter_flow_mods(bad))


def test_bundle_delete_and_barrier_messages_decode(tmp_path):
    flow = scenario_flows("fip-only")[0]
    data = (
        messages.bundle_ctrl(7, codec.BUNDLE_OPEN, 1)
        + messages.bundle_add(7, messages.flow_add(flow, 2))
        + messages.bundle_add(7, messages.flow_delete(30, 0xA20A00000B123456, 3))
        + messages.bundle_ctrl(7, codec.BUNDLE_COMMIT, 4)
        + messages.barrier(5)
    )
    out = ofp_parse(tmp_path, data)
    assert "decode error" not in out, out
    assert "bundle_id=0x7 type=OPEN_REQUEST flags=atomic ordered" in out
    assert "bundle_id=0x7 type=COMMIT_REQUEST flags=atomic ordered" in out
    assert out.count("ONFT_BUNDLE_ADD_MESSAGE") == 2
    assert "DEL table:30 priority=0 cookie:0xa20a00000b123456/0xffffffffffffffff" in out
    assert "OFPT_BARRIER_REQUEST" in out


def test_the_routed_uplinks_select_group_and_its_action_decode(tmp_path):
    """bgp mode's way out (docs/bgp.md section 4): a select group with a bucket per ToR
    that watches its uplink, and a flow that sends to it; OVS reads them as their text."""
    group = groups.SelectGroup(
        groups.UPLINKS_GROUP,
        (
            groups.tor_bucket(3, "02:00:00:00:fe:01", "02:aa:00:00:00:01"),
            groups.tor_bucket(4, "02:00:00:00:fe:02", "02:bb:00:00:00:02"),
        ),
    )
    out = ofp_parse(tmp_path, messages.group_mod(9, codec.OFPGC_ADD, group))
    assert "decode error" not in out, out
    assert f"ADD {group.text()}" in out, (group.text(), out)
    flow = make_flow(0, 50, 10, Match.of(proto="ip"), [DecTtl(), Group(groups.UPLINKS_GROUP)])
    out = ofp_parse(tmp_path, messages.flow_add(flow, 10))
    assert "actions=dec_ttl,group:1" in out, out
