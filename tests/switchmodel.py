"""A model of the switch side of OpenFlow, as far as ovsnat uses it, for the unit tests of the
host controller: it reads the bytes the controller writes and answers the way Open vSwitch
does (atomic bundles, barriers in order, flow and meter dumps filtered by cookie, errors
naming the offending message's xid). The lab tests check the real switch; this one lets the
controller's decisions be tested event by event, without root or OVS.

Flows are kept as OVS keeps them: one per (table, priority, match), read from the bytes here
(not with ovsnat's own code, so a mistake there cannot hide in the model). An add with the
(table, priority, match) of a flow replaces that flow, cookie and all; a delete by (table,
cookie/mask) removes every flow of the table with that cookie; a long flow dump comes back
in several replies, all but the last flagged OFPMPF_REPLY_MORE, as OVS splits big dumps.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from ovsnat.compile.groups import OWN_GROUPS
from ovsnat.openflow import blobs, codec
from ovsnat.openflow.digest import flow_mod_digest, group_digest

OFPET_BAD_ACTION, OFPET_BUNDLE_FAILED = 2, 0xFFFF
OFPET_GROUP_MOD_FAILED, OFPBAC_BAD_OUT_GROUP = 6, 9
OFPAT_GROUP = 22


@dataclass
class Reply:
    kind: str  # flow_stats | meter_stats | barrier | error
    xid: int
    args: tuple = ()


def flow_identity(msg: bytes) -> tuple[int, int, bytes]:
    """(table, priority, match) of a flow_mod: what OVS knows a flow by."""
    match_len = struct.unpack_from("!H", msg, 50)[0]
    return msg[24], struct.unpack_from("!H", msg, 30)[0], bytes(msg[48 : 48 + match_len])


def flow_key(msg: bytes) -> tuple[int, int]:
    """(table, cookie) of a flow_mod: what ovsnat names a flow by."""
    return msg[24], struct.unpack_from("!Q", msg, 8)[0]


@dataclass
class ModelSwitch:
    entries: dict = field(default_factory=dict)  # (table, priority, match) -> flow_mod
    meters: dict = field(default_factory=dict)  # meter id -> rate
    groups: dict = field(default_factory=dict)  # group id -> (type, packed buckets)
    group_mods: list = field(default_factory=list)  # (command, group id), in order
    packet_outs: list = field(default_factory=list)  # (port, frame)
    flow_mods: int = 0  # every flow_mod received
    xids: list = field(default_factory=list)  # every xid received, in order
    reject: Callable[[tuple], bool] | None = None  # flow key -> refuse it
    frag_mode: int = 0  # OFPC_FRAG_*: 3 is OVS's nx-match
    temporary: dict = field(default_factory=dict)  # key -> hard timeout (outside bundles)
    packets: dict = field(default_factory=dict)  # key -> packet count the test sets
    stats_part: int = 16  # flow stats entries per reply
    _bundles: dict = field(default_factory=dict)  # id -> [(xid, inner message)]

    def receive(self, data: bytes) -> list[Reply]:
        replies = []
        for msg_type, xid, msg in blobs.split_messages(data):
            self.xids.append(xid)
            replies += self._one(msg_type, xid, msg)
        return replies

    def _one(self, msg_type: int, xid: int, msg: bytes) -> list[Reply]:
        if msg_type == codec.OFPT_EXPERIMENTER:
            return self._bundle_msg(xid, msg)
        if msg_type == codec.OFPT_BARRIER_REQUEST:
            return [Reply("barrier", xid)]
        if msg_type == codec.OFPT_MULTIPART_REQUEST:
            return self._stats(xid, msg)
        if msg_type == codec.OFPT_METER_MOD:
            meter_id = struct.unpack_from("!I", msg, 12)[0]
            self.meters[meter_id] = struct.unpack_from("!I", msg, 20)[0]
            return []
        if msg_type == codec.OFPT_GROUP_MOD:
            return self._group_mod(xid, msg)
        if msg_type == codec.OFPT_SET_CONFIG:
            self.frag_mode = struct.unpack_from("!H", msg, 8)[0]
            return []
        if msg_type == codec.OFPT_FLOW_MOD:  # only flows with a hard timeout
            hard = struct.unpack_from("!H", msg, 28)[0]
            assert msg[25] == codec.OFPFC_ADD and hard, "flow_mod outside a bundle"
            self.temporary[flow_key(msg)] = hard
            self.entries[flow_identity(msg)] = msg
            return []
        if msg_type == codec.OFPT_PACKET_OUT:
            port = struct.unpack_from("!I", msg, 24 + 4)[0]
            self.packet_outs.append((port, msg[40:]))
            return []
        raise AssertionError(f"unexpected message type {msg_type}")

    def _group_mod(self, xid: int, msg: bytes) -> list[Reply]:
        """As OVS: an add of a group that exists, or a modify of one that does not, is
        refused (OFPET_GROUP_MOD_FAILED). ovsnat sends no delete."""
        command, group_type, group_id = struct.unpack_from("!HBxI", msg, 8)
        assert command in (codec.OFPGC_ADD, codec.OFPGC_MODIFY), command
        self.group_mods.append((command, group_id))
        exists = group_id in self.groups
        if (command == codec.OFPGC_ADD) == exists:
            return [Reply("error", xid, (OFPET_GROUP_MOD_FAILED, 0 if exists else 8))]
        self.groups[group_id] = (group_type, msg[16:])
        return []

    def _bundle_msg(self, xid: int, msg: bytes) -> list[Reply]:
        exp_type, bundle_id = struct.unpack_from("!II", msg, 12)
        if exp_type == codec.ONF_ET_BUNDLE_ADD:
            inner = msg[24:]
            self._bundles[bundle_id].append((struct.unpack_from("!I", inner, 4)[0], inner))
            return []
        kind = struct.unpack_from("!H", msg, 20)[0]
        if kind == codec.BUNDLE_OPEN:
            self._bundles[bundle_id] = []
            return []
        return self._commit(xid, self._bundles.pop(bundle_id))

    def _commit(self, commit_xid: int, messages: list) -> list[Reply]:
        """All or nothing, as OVS applies an atomic bundle."""
        entries = dict(self.entries)
        for xid, inner in messages:
            self.flow_mods += 1
            key = flow_key(inner)
            if inner[25] == codec.OFPFC_DELETE:  # non-strict, by cookie/mask, any match
                mask = struct.unpack_from("!Q", inner, 16)[0]
                entries = {
                    i: m for i, m in entries.items() if not _selected(m, inner[24], key[1], mask)
                }
            elif any(g not in self.groups for g in _groups_used(inner)):
                return [
                    Reply("error", xid, (OFPET_BAD_ACTION, OFPBAC_BAD_OUT_GROUP)),
                    Reply("error", commit_xid, (OFPET_BUNDLE_FAILED, 0)),
                ]
            elif self.reject and self.reject(key):
                return [
                    Reply("error", xid, (OFPET_BAD_ACTION, 4)),
                    Reply("error", commit_xid, (OFPET_BUNDLE_FAILED, 0)),
                ]
            else:
                entries[flow_identity(inner)] = inner
        self.entries = entries
        return []

    def _stats(self, xid: int, msg: bytes) -> list[Reply]:
        mp_type = struct.unpack_from("!H", msg, 8)[0]
        if mp_type == codec.OFPMP_GROUP_DESC:
            entries = [(i, group_digest(t, b)) for i, (t, b) in self.groups.items()]
            return [Reply("group_stats", xid, (entries, False))]
        if mp_type == codec.OFPMP_METER_CONFIG:
            return [Reply("meter_stats", xid, ([(m, (r,)) for m, r in self.meters.items()], False))]
        table, (cookie, mask) = msg[16], struct.unpack_from("!QQ", msg, 32)
        entries = [
            (*flow_key(m), flow_mod_digest(m), self.packets.get(flow_key(m), 0))
            for m in self.entries.values()  # OVS returns the bytes it got
            if _selected(m, table, cookie, mask)
        ]
        parts = [
            entries[i : i + self.stats_part] for i in range(0, len(entries), self.stats_part)
        ] or [[]]
        return [
            Reply("flow_stats", xid, (part, i < len(parts) - 1)) for i, part in enumerate(parts)
        ]

    # --- what the switch holds, and changes behind the controller's back -----------------
    def flow_keys(self) -> set:
        """(table, cookie) of every flow."""
        return {flow_key(m) for m in self.entries.values()}

    def held(self) -> dict:
        """(table, cookie) -> flow_mod of every flow (two flows with one key: either)."""
        return {flow_key(m): m for m in self.entries.values()}

    def flow(self, key: tuple[int, int]) -> bytes:
        """The one flow with this (table, cookie)."""
        [msg] = [m for m in self.entries.values() if flow_key(m) == key]
        return msg

    def with_identity(self, table: int, priority: int) -> dict:
        """(table, priority, match) -> flow_mod of the flows of one table and priority."""
        return {i: m for i, m in self.entries.items() if i[:2] == (table, priority)}

    def install(self, msg: bytes) -> None:
        """An add made by someone else (`ovs-ofctl add-flow`, `mod-flows`)."""
        self.entries[flow_identity(msg)] = msg

    def remove(self, key: tuple[int, int]) -> None:
        """`ovs-ofctl del-flows table=T,cookie=C/-1` made by someone else."""
        self.entries = {i: m for i, m in self.entries.items() if flow_key(m) != key}


def _groups_used(msg: bytes) -> set[int]:
    """The groups a flow_mod's actions send to (ovsnat's flows use only its own group ids,
    so a look for the packed action is enough for the model)."""
    return {
        gid
        for gid in OWN_GROUPS
        if struct.pack("!HHI", OFPAT_GROUP, 8, gid) in msg[blobs.MATCH_AT :]
    }


def _selected(msg: bytes, table: int, cookie: int, mask: int) -> bool:
    """A flow a request for (table or OFPTT_ALL, cookie/mask) selects."""
    t, c = flow_key(msg)
    return c & mask == cookie & mask and table in (t, codec.OFPTT_ALL)
