"""The match of a flow as OXM/NXM TLVs, written in the order Open vSwitch writes them back,
so a flow dumped from the switch has exactly the match bytes ovsnat sent (the audit compares
digests of the two)."""

from __future__ import annotations

import struct
from functools import lru_cache

from ovsnat.compile.flows import PROTOCOLS, Flow
from ovsnat.openflow.codec import CT_STATE_BITS, ONF_EXPERIMENTER, ip, mac, nx1, ofb, oxm, pad8


def _tlv(header: int, value: bytes, mask: bytes | None = None) -> bytes:
    length = len(value) + (len(mask) if mask else 0)
    return (
        struct.pack("!I", header & ~0xFF | length | (0x100 if mask else 0)) + value + (mask or b"")
    )


def _ip_tlv(field: int, text: str) -> bytes:
    if "/" in text:
        addr, plen = text.split("/")
        mask = (0xFFFFFFFF << (32 - int(plen))) & 0xFFFFFFFF
        return _tlv(ofb(field, 8, True), ip(addr), struct.pack("!I", mask))
    return _tlv(ofb(field, 4), ip(text))


def ct_state(text: str) -> tuple[int, int]:
    value = mask = 0
    for token in text.replace("+", " +").replace("-", " -").split():
        bit = CT_STATE_BITS[token[1:]]
        mask |= bit
        value |= bit if token[0] == "+" else 0
    return value, mask


@lru_cache(maxsize=1024)
def _field(name: str, value: str, proto: str | None) -> tuple[int, bytes]:
    """(sort rank, TLV) of one match field. The rank is the order in which Open vSwitch
    writes the fields back (lib/nx-match.c nx_put_raw), so a flow dumped from the switch has
    exactly the match bytes ovsnat sent: the audit compares the two by digest. The cache
    serves the fields shared by many flows; per-VM ones would not fit at scale anyway."""
    if name in REGISTERS:
        reg = int(name[3:])
        value, _, mask = value.partition("/")
        if mask:
            return 30 + reg, _tlv(
                nx1(reg, 8, True), struct.pack("!I", int(value, 0)), struct.pack("!I", int(mask, 0))
            )
        return 30 + reg, _tlv(nx1(reg, 4), struct.pack("!I", int(value, 0)))
    if name == "conj_id":  # before in_port, as OVS writes it (nx_put_raw)
        return -1, _tlv(nx1(37, 4), struct.pack("!I", int(value, 0)))
    if name == "nw_proto":
        return 24, _tlv(ofb(10, 1), bytes([int(value)]))
    if name == "in_port":
        return 0, _tlv(ofb(0, 4), struct.pack("!I", int(value)))
    if name == "dl_vlan":
        return 13, _tlv(ofb(6, 2), struct.pack("!H", 0x1000 | int(value)))
    if name == "vlan_tci":  # untagged only: OFPVID_NONE
        return 13, _tlv(ofb(6, 2), b"\0\0")
    if name == "dl_src":
        return 10, _tlv(ofb(4, 6), mac(value))
    if name == "dl_dst":
        return 11, _tlv(ofb(3, 6), mac(value))
    if name in ("nw_src", "nw_dst"):
        return 20 + (name == "nw_dst"), _ip_tlv(11 if name == "nw_src" else 12, value)
    if name in ("arp_spa", "arp_tpa"):
        return 21 + (name == "arp_tpa"), _ip_tlv(22 if name == "arp_spa" else 23, value)
    if name == "arp_op":
        return 20, _tlv(ofb(21, 2), struct.pack("!H", int(value)))
    if name == "arp_sha":
        return 23, _tlv(ofb(24, 6), mac(value))
    if name == "nw_ttl":
        return 23, _tlv(nx1(29, 1), bytes([int(value)]))
    if name == "nw_frag":  # value/mask over the ANY (1) and LATER (2) bits
        v, m = {"yes": (1, 1), "no": (0, 1), "first": (1, 3), "later": (3, 3)}[value]
        if m == 3:  # both bits: OVS writes it unmasked
            return 22, _tlv(nx1(26, 1), bytes([v]))
        return 22, _tlv(nx1(26, 2, True), bytes([v]), bytes([m]))
    if name in ("tp_src", "tp_dst"):
        field = {"tcp": 13, "udp": 15, "sctp": 17}[proto] + (name == "tp_dst")
        value, _, mask = value.partition("/")
        if mask:  # a block of a port range: value/mask
            return 25 + (name == "tp_dst"), _tlv(
                ofb(field, 4, True),
                struct.pack("!H", int(value, 0)),
                struct.pack("!H", int(mask, 0)),
            )
        return 25 + (name == "tp_dst"), _tlv(ofb(field, 2), struct.pack("!H", int(value)))
    if name == "tcp_flags":  # "-syn" / "+syn": the SYN bit clear or set
        # OpenFlow 1.3 has no TCP flags field: OVS writes ONF's experimenter OXM (field 42)
        # back, so ovsnat sends that rather than NXM's, and the audit's digests agree.
        return 27, _tlv(
            oxm(0xFFFF, 42, 8, True),
            struct.pack("!I", ONF_EXPERIMENTER) + struct.pack("!H", 2 if value == "+syn" else 0),
            struct.pack("!H", 2),
        )
    if name == "icmp_type":
        return 25, _tlv(ofb(19, 1), bytes([int(value)]))
    if name == "icmp_code":
        return 26, _tlv(ofb(20, 1), bytes([int(value)]))
    if name == "ct_state":
        v, m = ct_state(value)
        return 50, _tlv(nx1(105, 8, True), struct.pack("!I", v), struct.pack("!I", m))
    if name == "ct_mark":  # after ct_state (and ct_zone), as OVS writes it
        v, _, m = value.partition("/")
        return 52, _tlv(
            nx1(107, 8, True),
            struct.pack("!I", int(v, 0)),
            struct.pack("!I", int(m or "0xffffffff", 0)),
        )
    raise ValueError(f"no wire encoding for match field {name}")


REGISTERS = ("reg2", "reg3", "reg4", "reg5", "reg6", "reg7", "reg9", "reg10", "reg11")


def match_bytes(flow: Flow) -> bytes:
    fields = dict(flow.match.fields)
    proto = fields.pop("proto", None)
    parts = [_field(k, v, proto) for k, v in fields.items()]
    if proto:
        eth_type, ip_proto = PROTOCOLS[proto]
        parts.append((12, _tlv(ofb(5, 2), struct.pack("!H", eth_type))))
        if ip_proto:
            parts.append((24, _tlv(ofb(10, 1), bytes([ip_proto]))))
    body = b"".join(tlv for _, tlv in sorted(parts, key=lambda p: p[0]))
    return pad8(struct.pack("!HH", 1, 4 + len(body)) + body)
