"""Actions and instructions of a flow, packed: OpenFlow 1.3 actions where they exist, Nicira
extensions (move, load, ct, nat, ct_clear, controller with a meter) where they do not."""

from __future__ import annotations

import struct
from functools import lru_cache

from ovsnat.compile.actions import (
    Conjunction,
    Controller,
    Ct,
    CtClear,
    DecTtl,
    Goto,
    Group,
    Load,
    Meter,
    Move,
    Output,
    OutputReg,
    PopVlan,
    PushVlan,
    Resubmit,
    SetField,
)
from ovsnat.compile.flows import Flow
from ovsnat.openflow.codec import (
    NX_VENDOR,
    OFPAT_GROUP,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    ip,
    mac,
    nx1,
    ofb,
    pad8,
)

NXM = {
    "eth_src": (0x00000406, 48),
    "eth_dst": (0x00000206, 48),
    "arp_sha": (0x00012206, 48),
    "arp_tha": (0x00012406, 48),
    "arp_spa": (0x00002004, 32),
    "arp_tpa": (0x00002204, 32),
    "in_port": (0x00000002, 16),
    "reg2": (0x00010404, 32),
    "reg3": (0x00010604, 32),
    "reg5": (0x00010A04, 32),
    "reg6": (0x00010C04, 32),
    "reg4": (0x00010804, 32),
    "reg7": (0x00010E04, 32),
    "reg8": (0x00011004, 32),
    "reg9": (0x00011204, 32),
    "reg10": (0x00011404, 32),
    "reg11": (0x00011604, 32),
    "ip_src": (0x00000E04, 32),
    "ip_dst": (0x00001004, 32),
}
SET_FIELD = {
    "eth_src": (ofb(4, 6), mac),
    "eth_dst": (ofb(3, 6), mac),
    "ip_src": (ofb(11, 4), ip),
    "ip_dst": (ofb(12, 4), ip),
    "arp_op": (ofb(21, 2), lambda v: struct.pack("!H", int(v))),
    "arp_sha": (ofb(24, 6), mac),
    "arp_spa": (ofb(22, 4), ip),
}


def _nx(subtype: int, body: bytes) -> bytes:
    data = struct.pack("!IH", NX_VENDOR, subtype) + body
    data = pad8(struct.pack("!HH", 0xFFFF, 0) + data)
    return data[:2] + struct.pack("!H", len(data)) + data[4:]


@lru_cache(maxsize=1024)
def action_bytes(a) -> bytes:
    """One action, packed. Cached for the host-level and shared actions (router MAC, SNAT,
    conntrack zones), which recur in every VM's flows; a cache large enough for per-VM
    actions would keep each VM's addresses alive twice over for nothing."""
    if isinstance(a, Output):
        port = OFPP_IN_PORT if a.port == "IN_PORT" else int(a.port)
        return struct.pack("!HHIH6x", 0, 16, port, 0)
    if isinstance(a, Group):
        return struct.pack("!HHI", OFPAT_GROUP, 8, a.id)
    if isinstance(a, Controller):
        if a.meter is None:
            return struct.pack("!HHIH6x", 0, 16, OFPP_CONTROLLER, a.max_len)
        # NXAST_CONTROLLER2: properties max_len (omitted at its default, 65535) and
        # meter_id, each padded to 8 bytes, in the order OVS writes them back.
        size = struct.pack("!HHH2x", 0, 8, a.max_len) if a.max_len != 0xFFFF else b""
        return _nx(37, bytes(6) + size + struct.pack("!HHI", 5, 8, a.meter))
    if isinstance(a, SetField):
        header, conv = SET_FIELD[a.field]
        data = pad8(struct.pack("!HHI", 25, 0, header) + conv(a.value))
        return data[:2] + struct.pack("!H", len(data)) + data[4:]
    if isinstance(a, DecTtl):
        return struct.pack("!HH4x", 24, 8)
    if isinstance(a, Move):
        (src, bits), (dst, _) = NXM[a.src], NXM[a.dst]
        dst_ofs = a.dst_bits[0] if a.dst_bits else 0
        if a.dst_bits:
            bits = a.dst_bits[1] - a.dst_bits[0] + 1
        return _nx(6, struct.pack("!HHHII", bits, 0, dst_ofs, src, dst))
    if isinstance(a, Load):
        dst, bits = NXM[a.field]
        if a.span is not None:
            ofs_nbits = a.span[0] << 6 | (a.span[1] - a.span[0])
        else:
            ofs_nbits = bits - 1 if a.bit is None else a.bit << 6
        return _nx(7, struct.pack("!HIQ", ofs_nbits, dst, a.value))
    if isinstance(a, PushVlan):
        vid = pad8(struct.pack("!HHI", 25, 0, ofb(6, 2)) + struct.pack("!H", 0x1000 | a.vid))
        return (
            struct.pack("!HHH2x", 17, 8, 0x8100) + vid[:2] + struct.pack("!H", len(vid)) + vid[4:]
        )
    if isinstance(a, PopVlan):
        return struct.pack("!HH4x", 18, 8)
    if isinstance(a, CtClear):
        return _nx(43, b"")
    if isinstance(a, Ct):
        nat = b""
        if a.nat is not None:
            flags, present, ranges = 0, 0, b""
            if a.nat.kind:
                flags = 1 if a.nat.kind == "src" else 2
                present = 0x1 | 0x2
                ranges = ip(a.nat.ip) * 2
                if a.nat.port_min is not None:
                    present |= 0x10 | 0x20
                    ranges += struct.pack("!HH", a.nat.port_min, a.nat.port_max)
            nat = _nx(36, struct.pack("!2xHH", flags, present) + ranges)
        if a.mark is not None:  # exec(set_field:mark->ct_mark)
            field = pad8(struct.pack("!HHI", 25, 0, nx1(107, 4)) + struct.pack("!I", a.mark))
            nat += field[:2] + struct.pack("!H", len(field)) + field[4:]
        table = a.table if a.table is not None else 0xFF
        zone_src, zone = (NXM[a.zone][0], 15) if isinstance(a.zone, str) else (0, a.zone)
        body = struct.pack("!HIHB3xH", 1 if a.commit else 0, zone_src, zone, table, 0) + nat
        data = struct.pack("!HHIH", 0xFFFF, 0, NX_VENDOR, 35) + body
        return data[:2] + struct.pack("!H", len(data)) + data[4:]
    if isinstance(a, OutputReg):  # NXAST_OUTPUT_REG: bits 0-15, max_len as ovs-ofctl writes
        return _nx(15, struct.pack("!HIH6x", 15, NXM[a.field][0], 0xFFFF))
    if isinstance(a, Conjunction):  # NXAST_CONJUNCTION: the clause is 0-based on the wire
        return _nx(34, struct.pack("!BBI", a.clause - 1, a.n_clauses, a.id))
    if isinstance(a, Resubmit):  # NXAST_RESUBMIT_TABLE, in_port unchanged (OFPP_IN_PORT)
        return _nx(14, struct.pack("!HB3x", 0xFFF8, a.table))
    raise ValueError(f"no wire encoding for action {a!r}")


def instructions_bytes(flow: Flow) -> bytes:
    out = b""
    applied = b""
    for a in flow.actions:
        if isinstance(a, Meter):
            out += struct.pack("!HHI", 6, 8, a.meter_id)
        elif not isinstance(a, Goto):
            applied += action_bytes(a)
    if applied:
        out += struct.pack("!HH4x", 4, 8 + len(applied)) + applied
    for a in flow.actions:
        if isinstance(a, Goto):
            out += struct.pack("!HHB3x", 1, 8, a.table)
    return out
