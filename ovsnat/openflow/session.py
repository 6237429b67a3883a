"""The switch session: what ovsnat believes its switch holds, and the messages that change it.

Pure: it returns OpenFlow messages as bytes (ovsnat.openflow.messages) and takes parsed
replies, so the host controller's reconcile logic is unit-tested without a switch.

- One allocator (`Xids`) numbers every message ovsnat sends, so an error reply names exactly
  the message that caused it: a flow of a bundle, a packet-out, a meter, a dump request.
- `installed` holds the (table, cookie) keys the switch has confirmed (a barrier after each
  bundle); `expected()` adds the bundles still in flight, so a diff taken while a bundle is
  on its way never sends the same flows twice.
- A bundle is atomic: when the switch rejects one message, nothing of it was applied.
- A bundle is decided when it is made: its xids and every key it deletes and adds. Only
  the encoding of its flow_mods is streamed (pure, as the shim writes it, inside its fault
  boundary), so what the session expects never depends on how far a write got.
"""

from __future__ import annotations

import gc
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from ovsnat.compile.flows import KINDS, Flow, MeterSpec
from ovsnat.compile.groups import OWN_GROUPS, SelectGroup
from ovsnat.openflow import blobs, codec, messages
from ovsnat.openflow.actions import action_bytes

MAX_XID = 0xFFFFFFFF
SEND_CHUNK = 1024  # messages per write during a large sync: the switch decodes one
# chunk while the next is encoded (about 10 ms of encoding, the
# longest the sync keeps the controller's other green threads)
RECENT = 4096  # packet-outs and meter mods remembered (their errors name them)


class Xids:
    """Transaction ids: 32 bits, wrapping, never reusing one that still awaits an answer."""

    def __init__(self, start: int = 1):
        self._next = start
        self._busy: dict[int, int] = {}  # first -> last xid of each range in flight

    def take(self, n: int = 1, busy: bool = False) -> int:
        """n consecutive xids; returns the first. busy: held until release(first)."""
        first = self._next
        while True:
            if first + n - 1 > MAX_XID:
                first = 1
            last = first + n - 1
            clash = [
                b_last
                for b_first, b_last in self._busy.items()
                if b_first <= last and b_last >= first
            ]
            if not clash:
                break
            first = max(clash) + 1
        self._next = 1 if last >= MAX_XID else last + 1
        if busy:
            self._busy[first] = last
        return first

    def release(self, first: int) -> None:
        self._busy.pop(first, None)


@dataclass
class Bundle:
    """One atomic batch in flight. Its messages carry consecutive xids from first_xid: open,
    deletes, adds, commit, barrier; so an error's xid names its flow without keeping flows."""

    id: int
    first_xid: int
    delete: list
    n_add: int
    owners: set
    announce: list = field(default_factory=list)  # port names whose FIP goes live with it
    retry: bool = True
    add_keys: list | set = field(default_factory=list)  # decided when the bundle is made
    order: list = field(default_factory=list)  # the adds' keys in xid order, as encoded
    failed: str | None = None
    sent_at: float = 0.0

    @property
    def commit_xid(self) -> int:
        return self.first_xid + len(self.delete) + self.n_add + 1

    @property
    def barrier_xid(self) -> int:
        return self.commit_xid + 1

    def key_of(self, xid: int):
        i = xid - self.first_xid - 1
        if 0 <= i < len(self.delete):
            return self.delete[i]
        i -= len(self.delete)
        return self.order[i] if 0 <= i < len(self.order) else None

    @property
    def size(self) -> int:
        return len(self.delete) + len(self.add_keys)


@dataclass
class _Dump:
    pending: set
    flows: set = field(default_factory=set)
    meters: set = field(default_factory=set)
    groups: dict = field(default_factory=dict)


class SwitchSession:
    def __init__(self, clock: Callable[[], float]):
        self.clock = clock  # stamps when a bundle's last bytes left
        self.xids = Xids()
        self.installed: set | None = None  # confirmed keys; None until the first dump
        self.meters: set | None = None  # (meter_id, (rate,)) on the switch
        self.groups: dict[int, int] | None = None  # ovsnat's group id -> digest on the switch
        self.group_mods: OrderedDict[int, tuple[int, int]] = OrderedDict()  # xid -> (id, digest)
        self.refused_groups: dict[int, tuple[int, str]] = {}  # id -> (digest, why)
        self.bundles: dict[int, Bundle] = {}  # barrier xid -> bundle, in send order
        self.recent: OrderedDict[int, str] = OrderedDict()  # xid -> what (not bundles)
        self._dump: _Dump | None = None
        self._ids = itertools.count(1)
        self._watched: list[Bundle] | None = None  # bundles sent while an audit reads

    # --- connection and dump ------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.installed is not None

    def connect(self) -> list[bytes]:
        """A (re)connected switch: forget what we believed and ask what it holds. Only
        ovsnat's cookies are dumped: other controllers' and operators' flows stay unseen."""
        self.disconnect()
        out, pending = [messages.set_config(self.note("switch config"))], set()
        for kind in KINDS:
            xid = self.xids.take(busy=True)
            out.append(messages.flow_stats_request(xid, kind << 56, 0xFF << 56))
            pending.add(xid)
        xid = self.xids.take(busy=True)
        out.append(messages.meter_config_request(xid))
        pending.add(xid)
        xid = self.xids.take(busy=True)
        out.append(messages.group_desc_request(xid))
        pending.add(xid)
        self._dump = _Dump(pending)
        return out

    def disconnect(self) -> None:
        for b in self.bundles.values():
            self.xids.release(b.first_xid)
        if self._dump:
            for xid in self._dump.pending:
                self.xids.release(xid)
        self.installed = self.meters = self.groups = self._dump = None
        self.bundles.clear()
        self.refused_groups.clear()  # the next connect's dump says again

    def dumped_flows(self, xid: int, keys: Iterable, more: bool) -> bool:
        """Part of the flow dump; True once the whole dump (flows and meters) is in."""
        if self._dump is None or xid not in self._dump.pending:
            return False
        self._dump.flows.update(keys)
        return self._part_done(xid, more)

    def dumped_meters(self, xid: int, meters: Iterable, more: bool) -> bool:
        if self._dump is None or xid not in self._dump.pending:
            return False
        self._dump.meters.update(meters)
        return self._part_done(xid, more)

    def dumped_groups(self, xid: int, groups: Iterable, more: bool) -> bool:
        """(group id, digest) of the switch's groups; only ovsnat's ids are kept (another
        controller's groups are neither compared nor touched)."""
        if self._dump is None or xid not in self._dump.pending:
            return False
        self._dump.groups.update((i, d) for i, d in groups if i in OWN_GROUPS)
        return self._part_done(xid, more)

    def _part_done(self, xid: int, more: bool) -> bool:
        if more:
            return False
        self._dump.pending.discard(xid)
        self.xids.release(xid)
        if self._dump.pending:
            return False
        dump, self._dump = self._dump, None
        self.installed, self.meters, self.groups = dump.flows, dump.meters, dump.groups
        return True

    # --- what the switch holds -----------------------------------------------------------
    def expected(self) -> set:
        """The keys the switch will hold once the bundles in flight commit (the confirmed
        set itself when none is in flight: do not modify it)."""
        if not self.bundles:
            return self.installed
        keys = set(self.installed)
        for b in self.bundles.values():
            keys.difference_update(b.delete)
            keys.update(b.add_keys)
        return keys

    def in_flight_owners(self) -> set[int]:
        """Owner bits (cookie >> 24) of every flow in a bundle not yet confirmed."""
        return {c >> 24 for b in self.bundles.values() for _, c in (*b.delete, *b.add_keys)}

    # --- messages ------------------------------------------------------------------------
    def note(self, what: str) -> int:
        """An xid for a message without a reply (packet-out, meter mod), remembered for a
        while so an error about it names it."""
        xid = self.xids.take()
        self.recent[xid] = what
        while len(self.recent) > RECENT:
            self.recent.popitem(last=False)
        return xid

    def meter_updates(self, specs: Iterable[MeterSpec]) -> list[bytes]:
        """Meter mods for every meter that is missing or has another rate."""
        out = []
        for m in specs:
            if (m.meter_id, (m.rate_pps,)) in self.meters:
                continue
            command = (
                codec.OFPMC_MODIFY
                if any(i == m.meter_id for i, _ in self.meters)
                else codec.OFPMC_ADD
            )
            xid = self.note(f"meter {m.text()}")
            out.append(messages.meter_mod(xid, command, m.meter_id, m.rate_pps))
            self.meters = {x for x in self.meters if x[0] != m.meter_id} | {
                (m.meter_id, (m.rate_pps,))
            }
        return out

    def group_updates(self, desired: Iterable[SelectGroup], adopt: bool = False) -> list:
        """An add or a modify for each desired group the switch lacks or holds otherwise,
        sent before the flows that use it; nothing while in sync. `adopt`: the groups the
        switch holds are kept as they are; only missing ones are added. ovsnat deletes no
        group: in bgp mode its group is always wanted, and l2 mode touches none."""
        out = []
        for group in sorted(desired, key=lambda g: g.id):
            gid, digest = group.id, messages.desired_group_digest(group)
            if self.groups.get(gid) == digest or (adopt and gid in self.groups):
                continue
            if self.refused_groups.get(gid, (None,))[0] == digest:
                continue  # refused as it is: tried again when it changes, or at a reconnect
            command = codec.OFPGC_MODIFY if gid in self.groups else codec.OFPGC_ADD
            xid = self.note(f"group {group.text()}")
            self.group_mods[xid] = (gid, digest)
            while len(self.group_mods) > RECENT:
                self.group_mods.popitem(last=False)
            out.append(messages.group_mod(xid, command, group))
            self.groups[gid] = digest
        return out

    def group_refused(self, xid: int, why: str) -> None:
        """The switch refused a group_mod: what it holds of that group is unknown now (a
        modify of a group deleted behind ovsnat's back is refused; the next change adds it)."""
        gid, digest = self.group_mods.pop(xid, (None, 0))
        if gid is not None and self.groups is not None:
            self.groups.pop(gid, None)
            self.refused_groups[gid] = (digest, why)

    def packet_out(self, port: int, frame: bytes, what: str, actions=()) -> bytes:
        """`frame` out of `port`, or through `actions` (compile.actions values) instead."""
        packed = b"".join(action_bytes(a) for a in actions) if actions else None
        return messages.packet_out(self.note(what), port, frame, packed)

    def temporary_flow(self, flow: Flow, seconds: int, what: str) -> bytes:
        """A flow outside the desired state (its cookie kind is never dumped), which the
        switch removes after `seconds`."""
        return messages.flow_add(flow, self.note(what), hard_timeout=seconds)

    def bundle(
        self,
        delete: list,
        add_keys,
        adds: Iterable,
        owners: set,
        retry: bool = True,
        announce: Iterable[str] = (),
    ) -> Iterator[bytes]:
        """One atomic bundle (deletes first) and its barrier, as chunks of bytes. `add_keys`:
        the keys it adds (a list, or a set the bundle then owns). `adds` holds those Flows or
        ((table, cookie), packed flow_mod) pairs, in any order, and may be a generator: a
        full sync of 55,000 flows is encoded while it is written, never held whole. An add
        that was not announced, or a count that differs, raises."""
        n_add = len(add_keys)
        first = self.xids.take(len(delete) + n_add + 3, busy=True)
        keys = add_keys if isinstance(add_keys, set) else list(add_keys)
        b = Bundle(
            next(self._ids), first, list(delete), n_add, set(owners), list(announce), retry, keys
        )
        self.bundles[b.barrier_xid] = b
        if self._watched is not None:
            self._watched.append(b)
        return self._chunks(b, adds)

    def watch(self) -> None:
        """Remember the bundles sent from now on (an audit's dump is being read)."""
        self._watched = []

    def unwatch(self) -> set[int]:
        """Stop remembering; the owner bits (cookie >> 24) of every flow the bundles sent
        since `watch()` deleted or added."""
        watched, self._watched = self._watched or [], None
        return {c >> 24 for b in watched for _, c in (*b.delete, *b.add_keys)}

    def _chunks(self, b: Bundle, adds: Iterable) -> Iterator[bytes]:
        """The cyclic GC is paused meanwhile: it would rescan every live object many times
        over while a full sync creates and frees millions."""
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            parts = [messages.bundle_ctrl(b.id, codec.BUNDLE_OPEN, b.first_xid)]
            xid = b.first_xid + 1
            for table, cookie in b.delete:
                parts.append(messages.bundle_add(b.id, messages.flow_delete(table, cookie, xid)))
                xid += 1
            keys = b.add_keys if isinstance(b.add_keys, set) else set(b.add_keys)
            for item in adds:
                if xid >= b.commit_xid:
                    raise ValueError(f"bundle {b.id}: more adds than the {b.n_add} announced")
                if isinstance(item, Flow):
                    key, msg = (item.table, item.cookie), messages.flow_add(item, xid)
                else:
                    key, msg = item[0], blobs.with_xid(item[1], xid)
                if key not in keys:
                    raise ValueError(f"bundle {b.id}: add {key} was not announced")
                parts.append(messages.bundle_add(b.id, msg))
                b.order.append(key)
                xid += 1
                if len(parts) >= SEND_CHUNK:
                    yield b"".join(parts)
                    parts = []
            if xid != b.commit_xid:
                raise ValueError(
                    f"bundle {b.id}: {xid - b.first_xid - 1 - len(b.delete)} "
                    f"adds, {b.n_add} announced"
                )
            parts += [
                messages.bundle_ctrl(b.id, codec.BUNDLE_COMMIT, b.commit_xid),
                messages.barrier(b.barrier_xid),
            ]
            b.sent_at = self.clock()
            yield b"".join(parts)
        finally:
            if gc_was_on:
                gc.enable()

    # --- replies -------------------------------------------------------------------------
    def barrier_reply(self, xid: int) -> Bundle | None:
        """The switch finished a bundle: on success its flows are now confirmed."""
        b = self.bundles.pop(xid, None)
        if b is None:
            return None
        self.xids.release(b.first_xid)
        if b.failed is None and self.installed is not None:
            self.installed.difference_update(b.delete)
            self.installed.update(b.add_keys)
        return b

    def blame(self, xid: int):
        """(bundle, its flow key or None, None) for an error inside a bundle in flight, or
        (None, None, what) for another message ovsnat sent, or (None, None, None)."""
        for b in self.bundles.values():
            if b.first_xid <= xid <= b.barrier_xid:
                return b, b.key_of(xid), None
        return None, None, self.recent.get(xid)
