"""What the match, action and message codecs share: OpenFlow 1.3 and Nicira constants, OXM
headers, and the byte helpers."""

from __future__ import annotations

VERSION = 0x04
OFPT_EXPERIMENTER, OFPT_SET_CONFIG, OFPT_PACKET_OUT, OFPT_FLOW_MOD = 4, 9, 13, 14
OFPT_MULTIPART_REQUEST, OFPT_BARRIER_REQUEST, OFPT_METER_MOD = 18, 20, 29
OFPT_GROUP_MOD, OFPGC_ADD, OFPGC_MODIFY, OFPGC_DELETE, OFPGT_SELECT = 15, 0, 1, 2, 1
OFPAT_GROUP = 22
OFPC_FRAG_NX_MATCH, OFPCML_NO_BUFFER = 3, 0xFFFF
OFPMP_FLOW, OFPMP_GROUP_DESC, OFPMP_METER_CONFIG = 1, 7, 10
OFPTT_ALL, OFPM_ALL = 0xFF, 0xFFFFFFFF
OFPMC_ADD, OFPMC_MODIFY = 0, 1
OFPMF_PKTPS, OFPMBT_DROP = 0x2, 1
OFPFC_ADD, OFPFC_DELETE = 0, 3
OFPP_IN_PORT, OFPP_CONTROLLER, OFPP_ANY = 0xFFFFFFF8, 0xFFFFFFFD, 0xFFFFFFFF
OFPG_ANY = 0xFFFFFFFF
NO_BUFFER = 0xFFFFFFFF
ONF_EXPERIMENTER = 0x4F4E4600
ONF_ET_BUNDLE_CONTROL, ONF_ET_BUNDLE_ADD = 2300, 2301
BUNDLE_OPEN, BUNDLE_COMMIT = 0, 4
BUNDLE_FLAGS = 0x1 | 0x2  # atomic | ordered
NX_VENDOR = 0x00002320
CT_STATE_BITS = {"new": 0x01, "est": 0x02, "rel": 0x04, "rpl": 0x08, "inv": 0x10, "trk": 0x20}


def oxm(cls: int, field: int, length: int, masked: bool = False) -> int:
    return cls << 16 | field << 9 | (1 << 8 if masked else 0) | length


def ofb(field: int, length: int, masked: bool = False) -> int:
    return oxm(0x8000, field, length, masked)


def nx1(field: int, length: int, masked: bool = False) -> int:
    return oxm(0x0001, field, length, masked)


def ip(text: str) -> bytes:
    return bytes(int(b) for b in text.split("."))


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def pad8(data: bytes) -> bytes:
    return data + bytes(-len(data) % 8)
