"""The framework rendering (ryu/os-ken flow_mods) says exactly what the ovs-ofctl text says:
OVS itself decodes the serialized messages (`ovs-ofctl ofp-parse`) and the decoded flows must
equal the golden text line for line."""

from __future__ import annotations

import re
import subprocess

import pytest

from ovsnat.cli import golden
from ovsnat.compile.compiler import compile_state
from ovsnat.compile.punt_flows import METERS
from ovsnat.runtime import framework as fw
from tests import framework_render as ofmsgs


class OfflineDatapath:
    """Enough of a datapath for message serialization."""

    ofproto = fw.ofproto
    ofproto_parser = fw.parser


def serialize(msgs) -> bytes:
    buf = b""
    for xid, msg in enumerate(msgs, 1):
        msg.set_xid(xid)
        msg.serialize()
        buf += bytes(msg.buf)
    return buf


def ofp_parse(tmp_path, data: bytes) -> str:
    path = tmp_path / "msgs.bin"
    path.write_bytes(data)
    return subprocess.run(
        ["ovs-ofctl", "ofp-parse", str(path)], capture_output=True, text=True, check=True
    ).stdout


ADD = re.compile(
    r"ADD (?:table:(\d+) )?(priority=\d+\S*) cookie:(0x[0-9a-f]+) "
    r"out_port:\d+ actions=(\S+)"
)


def as_dump_line(m: re.Match) -> str:
    table = f"table={m.group(1)}, " if m.group(1) else ""
    return f"cookie={m.group(3)}, {table}{m.group(2)} actions={m.group(4)}"


@pytest.mark.parametrize("name", sorted(golden.SCENARIOS))
def test_framework_flow_mods_decode_to_the_golden_text(tmp_path, name):
    flows = compile_state(golden.scenario_state(name))
    dp = OfflineDatapath()
    decoded = ofp_parse(tmp_path, serialize(ofmsgs.flow_add(dp, f) for f in flows))
    lines = [as_dump_line(m) for m in ADD.finditer(decoded)]
    assert lines == [f.text() for f in flows]


def test_framework_meter_and_delete_messages(tmp_path):
    dp = OfflineDatapath()
    decoded = ofp_parse(
        tmp_path,
        serialize(
            [ofmsgs.meter_add(dp, METERS[0]), ofmsgs.flow_delete(dp, 30, 0xA20A00000B123456)]
        ),
    )
    assert "meter=1 pktps bands=\ntype=drop rate=100" in decoded.replace(" \n", "\n")
    assert re.search(r"DEL table:30 cookie:0xa20a00000b123456/0xffffffffffffffff", decoded), decoded
