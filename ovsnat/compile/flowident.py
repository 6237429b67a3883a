"""Flow identity as Open vSwitch has it: (table, priority, match).

OVS keeps one flow per (table, priority, match): an add with the same three replaces the
flow there, cookie and all. ovsnat names a flow by (table, cookie) (flows.py), which says
whose it is and what it holds, but not what OVS will merge. So, before a flow is desired:

- Within one owner (`settle`): two flows with one identity are a compiler bug; the one whose
  text sorts first is kept and the other left out (logged). Two flows with one (table,
  cookie) (their 24-bit digests collide: a VM's flows about once in 4 to 17 million, the
  host-level flows once in 100,000 configurations) would make the diffs treat them as one;
  the flow that sorts first by (priority, text) keeps its digest and each other one takes
  the digest of its text with a salt 1, 2, ... until its key is free. A function of the
  owner's flows alone: a restarted controller computes the same cookies, so it still sends
  nothing when nothing changed. A key that must mean one flow in every state of its owner
  is kept for it (`reserve`: a FIP VM's ARP responder, by which a restarted controller
  tells a live FIP).
- Across owners (`Identities`): every desired identity maps to the one owner whose flow the
  switch holds. When two owners want one identity, the owner that sorts first keeps it
  (host-level flows, then networks by name, then ports by name, then departed ports by
  name); the other's flow is left out of its desired set, logged once, listed in the
  status (`duplicate_flows`), and installed when the winner lets go of it.

The identity is read from the packed flow_mod: table, priority and the match's OXM bytes.
ovsnat writes a match in one canonical order and form (ovsnat.openflow.match: as OVS writes it back,
which the audit relies on), so one match always packs to the same bytes. Cost per owner stored:
its own flows (a port event stays O(1)); memory: one dict entry per desired flow (5.8 MiB
at 10,000 VMs, 55,067 flows: docs/performance.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import netaddr

from ovsnat.compile import flows as flowlib
from ovsnat.compile.flows import Flow
from ovsnat.openflow import messages
from ovsnat.openflow.blobs import blob_identities, identity, with_cookie

LOG = logging.getLogger("ovsnat")


class _HostOwner:
    """The owner key of host-level flows: an object no port name can be equal to (a port
    named "host" once took the host-level flows' place)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "(host)"

    __str__ = __repr__


HOST = _HostOwner()


SG_LABELS = {"sgp": "security profile", "sgg": "remote group", "sgm": "remote group member"}


def rank(owner) -> tuple[int, str]:
    """The order in which owners win an identity: host, networks, ports, departed ports."""
    if owner is HOST:
        return 0, ""
    if isinstance(owner, tuple):
        order = {
            "net": 1,
            "gone": 3,
            "sgp": 4,
            "sgg": 5,
            "sgm": 6,
            "vip": 7,
            "ew": 8,
            "hostmacs": 9,
        }
        return order[owner[0]], str(owner[1])
    return 2, owner


def label(owner) -> str:
    if owner is HOST:
        return "host-level flows"
    if isinstance(owner, tuple):
        if owner[0] == "net":
            return f"network {owner[1] or '(default)'}"
        if owner[0] == "vip":
            return f"VIP {netaddr.IPAddress(owner[1])}"
        if owner[0] in SG_LABELS:
            return f"{SG_LABELS[owner[0]]} {owner[1]}"
        if owner[0] == "ew":
            return f"east-west routes to network {owner[1] or '(default)'}"
        if owner[0] == "hostmacs":
            return "hosts' routed MACs"
        return f"departed port {owner[1]}"
    return f"port {owner}"


def text(flow: Flow) -> str:
    """The identity as an operator reads it."""
    match = ("," + flow.match.text()) if flow.match.fields else ""
    return f"table={flow.table}, priority={flow.priority}{match}"


# --- within one owner --------------------------------------------------------------------
@dataclass
class Settled:
    """One owner's flows made fit for the switch: `kept` (flow, packed flow_mod with xid 0,
    identity) in compile order; `doubled` (left out, kept) pairs of one identity; `salted`
    (as compiled, as kept) pairs whose digest was re-derived."""

    kept: list = field(default_factory=list)
    doubled: list = field(default_factory=list)
    salted: list = field(default_factory=list)


def settle(flows: Iterable[Flow]) -> Settled:
    """At most one flow per identity and one per (table, cookie); see the module docstring."""
    out, by_ident = Settled(), {}
    for f in flows:
        msg = messages.flow_add(f, 0)
        ident = identity(msg)
        have = by_ident.get(ident)
        if have is None:
            by_ident[ident] = (f, msg)
        elif f.body() < have[0].body():
            by_ident[ident] = (f, msg)
            out.doubled.append((have[0], f))
        elif f.body() != have[0].body():
            out.doubled.append((f, have[0]))
    keys = {(f.table, f.cookie) for f, _ in by_ident.values()}
    if len(keys) < len(by_ident):
        by_ident = _salt(by_ident, keys, out.salted)
    out.kept = [(f, msg, ident) for ident, (f, msg) in by_ident.items()]
    return out


def _salt(by_ident: dict, used: set, salted: list) -> dict:
    groups: dict = {}
    for ident, (f, _) in by_ident.items():
        groups.setdefault((f.table, f.cookie), []).append(ident)
    for idents in groups.values():
        if len(idents) < 2:
            continue
        idents.sort(key=lambda i: (by_ident[i][0].priority, by_ident[i][0].body()))
        for ident in idents[1:]:
            f, msg = by_ident[ident]
            new = flowlib.resalted(f, used)
            by_ident[ident] = (new, with_cookie(msg, new.cookie))
            salted.append((f, new))
    return by_ident


def reserve(flows: list[Flow], keeper: Flow) -> list[Flow]:
    """`flows` with `keeper`'s (table, cookie) left to it alone, whether it is among them or
    not: any other flow with that key (a digest collision) is salted. For a key that must
    say one thing in every state of its owner (a live FIP's ARP responder)."""
    key = (keeper.table, keeper.cookie)
    if all((f.table, f.cookie) != key or f == keeper for f in flows):
        return flows
    used = {key, *((f.table, f.cookie) for f in flows)}
    return [
        flowlib.resalted(f, used) if (f.table, f.cookie) == key and f != keeper else f
        for f in flows
    ]


def resolve(groups: Iterable[tuple[object, list[Flow]]]) -> list[Flow]:
    """Every owner's flows as the controller would desire them (the offline compile):
    settled one owner at a time, and each identity kept by the owner that sorts first."""
    held, out = set(), []
    for _, flows in sorted(groups, key=lambda g: rank(g[0])):
        for f, _, ident in settle(flows).kept:
            if ident not in held:
                held.add(ident)
                out.append(f)
    return out


# --- across owners -------------------------------------------------------------------------
class Identities:
    """Which owner's flow the switch holds for each desired identity (see the docstring).
    `rivals` and `losing` hold only the contested identities: nearly always empty."""

    def __init__(self):
        self.held: dict[bytes, object] = {}  # identity -> owner whose flow is desired
        self.rivals: dict[bytes, set] = {}  # identity -> owners left out of it
        self.losing: dict[object, dict[bytes, tuple]] = {}  # -> (text, its owner cookie)
        self.doubled: dict[object, list[str]] = {}  # owner -> its own duplicates left out

    def claim(self, owner, old: bytes, settled: Settled) -> tuple[list, list]:
        """`owner`'s flows are now `settled` (its packed flows were `old`): (the entries of
        `settled.kept` it holds, the other owners whose desired flows changed with it)."""
        self._report_own(owner, settled)
        losing = self.losing.get(owner, {})
        before = {ident for _, ident in blob_identities(old)} | set(losing)
        now = {ident for _, _, ident in settled.kept}
        restore = []
        for ident in before - now:
            restore += self._release(owner, ident)
        kept = []
        for entry in settled.kept:
            f, _, ident = entry
            holder = self.held.setdefault(ident, owner)
            if holder == owner:
                kept.append(entry)
            elif ident in losing:  # already left out, already said
                losing[ident] = (text(f), f.owner_cookie)
            elif rank(owner) < rank(holder):  # its own cookie: when it is stored again
                self._lose(holder, ident, f, owner, None)
                self.held[ident] = owner
                restore.append(holder)
                kept.append(entry)
            else:
                self._lose(owner, ident, f, holder, f.owner_cookie)
        return kept, sorted(set(restore), key=rank)

    def _lose(self, loser, ident: bytes, f: Flow, winner, cookie: int | None) -> None:
        self.rivals.setdefault(ident, set()).add(loser)
        self.losing.setdefault(loser, {})[ident] = (text(f), cookie)
        LOG.error(
            "ovsnat: %s and %s both want the flow %s (OVS keeps one flow per table, "
            "priority and match): %s keeps it, sorting first; %s's is left out",
            label(winner),
            label(loser),
            text(f),
            label(winner),
            label(loser),
        )

    def _release(self, owner, ident: bytes) -> list:
        """`owner` no longer wants `ident`: the rival that sorts first takes it over."""
        rivals, heirs = self.rivals.get(ident, set()), []
        if self.held.get(ident) != owner:
            rivals.discard(owner)
            self._forget(owner, ident)
        elif not rivals:
            del self.held[ident]
        else:
            heir = min(rivals, key=rank)
            rivals.discard(heir)
            self.held[ident] = heir
            LOG.warning(
                "ovsnat: the flow %s of %s is installed now: %s no longer has it",
                self.losing[heir][ident][0],
                label(heir),
                label(owner),
            )
            self._forget(heir, ident)
            heirs.append(heir)
        if not rivals:
            self.rivals.pop(ident, None)
        return heirs

    def _forget(self, owner, ident: bytes) -> None:
        losing = self.losing.get(owner)
        if losing is not None:
            losing.pop(ident, None)
            if not losing:
                del self.losing[owner]

    def _report_own(self, owner, settled: Settled) -> None:
        for before, after in settled.salted:
            LOG.info(
                "ovsnat: %s: cookie %#x of flow %s is taken by another of its flows "
                "(digest collision); it gets cookie %#x",
                label(owner),
                before.cookie,
                text(before),
                after.cookie,
            )
        doubled = [
            f"{text(gone)} (actions {gone.text().split(' actions=')[1]})"
            for gone, _ in settled.doubled
        ]
        if doubled != self.doubled.get(owner, []):
            for line in doubled:
                LOG.error(
                    "ovsnat: %s compiles two flows %s; the one sorting first is kept",
                    label(owner),
                    line,
                )
        if doubled:
            self.doubled[owner] = doubled
        else:
            self.doubled.pop(owner, None)

    def prefix(self, owner) -> int | None:
        """The cookie owner bits of an owner all of whose flows are left out, if any."""
        for _, cookie in self.losing.get(owner, {}).values():
            if cookie is not None:
                return cookie >> 24
        return None

    def status(self) -> list[dict]:
        """Every flow left out, for `ovsnat status`: whose, which, and who keeps it."""
        out = [
            {"owner": label(o), "flow": t, "kept_by": label(self.held.get(i))}
            for o, idents in self.losing.items()
            for i, (t, _) in idents.items()
        ]
        out += [
            {"owner": label(o), "flow": t, "kept_by": label(o)}
            for o, texts in self.doubled.items()
            for t in texts
        ]
        return sorted(out, key=lambda d: (d["owner"], d["flow"]))
