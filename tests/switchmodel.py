"""A model of the switch side of OpenFlow, as far as ovsnat uses it, for the unit tests of the
host controller: it reads the bytes the controller writes and answers the way Open vSwitch
does (atomic bundles, barriers in order, flow and meter dumps filtered by cookie, errors
naming the offending message's xid). The lab tests check the real switch; this one lets the
controller's decisions be tested event by event, without root or OVS.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable

from ovsnat import ofwire
from ovsnat.flowdigest import flow_mod_digest

OFPET_BAD_ACTION, OFPET_BUNDLE_FAILED = 2, 0xFFFF


@dataclass
class Reply:
    kind: str            # flow_stats | meter_stats | barrier | error
    xid: int
    args: tuple = ()


@dataclass
class ModelSwitch:
    flows: dict = field(default_factory=dict)          # (table, cookie) -> flow_mod bytes
    meters: dict = field(default_factory=dict)         # meter id -> rate
    packet_outs: list = field(default_factory=list)    # (port, frame)
    flow_mods: int = 0                                 # every flow_mod received
    xids: list = field(default_factory=list)           # every xid received, in order
    reject: Callable[[tuple], bool] | None = None      # flow key -> refuse it
    frag_mode: int = 0                                 # OFPC_FRAG_*: 3 is OVS's nx-match
    temporary: dict = field(default_factory=dict)      # key -> hard timeout (outside bundles)
    packets: dict = field(default_factory=dict)        # key -> packet count the test sets
    _bundles: dict = field(default_factory=dict)       # id -> [(xid, inner message)]

    def receive(self, data: bytes) -> list[Reply]:
        replies = []
        for msg_type, xid, msg in ofwire.split_messages(data):
            self.xids.append(xid)
            replies += self._one(msg_type, xid, msg)
        return replies

    def _one(self, msg_type: int, xid: int, msg: bytes) -> list[Reply]:
        if msg_type == ofwire.OFPT_EXPERIMENTER:
            return self._bundle_msg(xid, msg)
        if msg_type == ofwire.OFPT_BARRIER_REQUEST:
            return [Reply("barrier", xid)]
        if msg_type == ofwire.OFPT_MULTIPART_REQUEST:
            return [self._stats(xid, msg)]
        if msg_type == ofwire.OFPT_METER_MOD:
            meter_id = struct.unpack_from("!I", msg, 12)[0]
            self.meters[meter_id] = struct.unpack_from("!I", msg, 20)[0]
            return []
        if msg_type == ofwire.OFPT_SET_CONFIG:
            self.frag_mode = struct.unpack_from("!H", msg, 8)[0]
            return []
        if msg_type == ofwire.OFPT_FLOW_MOD:           # only flows with a hard timeout
            hard = struct.unpack_from("!H", msg, 28)[0]
            assert msg[25] == ofwire.OFPFC_ADD and hard, "flow_mod outside a bundle"
            self.temporary[(msg[24], struct.unpack_from("!Q", msg, 8)[0])] = hard
            return []
        if msg_type == ofwire.OFPT_PACKET_OUT:
            port = struct.unpack_from("!I", msg, 24 + 4)[0]
            self.packet_outs.append((port, msg[40:]))
            return []
        raise AssertionError(f"unexpected message type {msg_type}")

    def _bundle_msg(self, xid: int, msg: bytes) -> list[Reply]:
        exp_type, bundle_id = struct.unpack_from("!II", msg, 12)
        if exp_type == ofwire.ONF_ET_BUNDLE_ADD:
            inner = msg[24:]
            self._bundles[bundle_id].append((struct.unpack_from("!I", inner, 4)[0], inner))
            return []
        kind = struct.unpack_from("!H", msg, 20)[0]
        if kind == ofwire.BUNDLE_OPEN:
            self._bundles[bundle_id] = []
            return []
        return self._commit(xid, self._bundles.pop(bundle_id))

    def _commit(self, commit_xid: int, messages: list) -> list[Reply]:
        """All or nothing, as OVS applies an atomic bundle."""
        flows = dict(self.flows)
        for xid, inner in messages:
            self.flow_mods += 1
            key = (inner[24], struct.unpack_from("!Q", inner, 8)[0])
            if inner[25] == ofwire.OFPFC_DELETE:
                flows.pop(key, None)
            elif self.reject and self.reject(key):
                return [Reply("error", xid, (OFPET_BAD_ACTION, 4)),
                        Reply("error", commit_xid, (OFPET_BUNDLE_FAILED, 0))]
            else:
                flows[key] = inner
        self.flows = flows
        return []

    def _stats(self, xid: int, msg: bytes) -> Reply:
        mp_type = struct.unpack_from("!H", msg, 8)[0]
        if mp_type == ofwire.OFPMP_METER_CONFIG:
            return Reply("meter_stats", xid, ([(m, (r,)) for m, r in self.meters.items()],
                                              False))
        table, (cookie, mask) = msg[16], struct.unpack_from("!QQ", msg, 32)
        entries = [(*k, flow_mod_digest(m), self.packets.get(k, 0))   # OVS returns the
                   for k, m in self.flows.items()                    # bytes it got
                   if k[1] & mask == cookie & mask and table in (k[0], ofwire.OFPTT_ALL)]
        return Reply("flow_stats", xid, (entries, False))

    def keys(self) -> set:
        return set(self.flows)
