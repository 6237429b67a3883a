"""A host's desired flows, owner by owner, packed once and kept as OVS will hold them.

The host state (ovsnat.core.state) decides what each owner (host-level flows, a network, a port,
a departed port) compiles to; the book keeps the result, ready to send:

- each owner's flow_mods, packed (xid 0) and concatenated in compile order. Packed once,
  when they change, not at every sync: a controller that (re)connects only slices bytes
  (about 150 bytes a flow; no Flow objects kept). Keys are read back from the bytes
  (blobs.flow_mod_keys);
- which owner each cookie's owner bits name (dumps, errors and the audit map back by it);
- which owner holds each (table, priority, match) (ovsnat.compile.flowident): an owner's flow that
  another owner's flow would replace on the switch is not in its packed flows.
"""

from __future__ import annotations

from ovsnat.compile import flowident
from ovsnat.compile.flows import COOKIE_HOST, Flow
from ovsnat.compile.tables import check_flows
from ovsnat.core.delta import Delta, diff
from ovsnat.openflow import blobs


class FlowBook:
    def __init__(self):
        self.wire: dict = {}  # owner -> its packed flow_mods
        self.owner_names: dict[int, object] = {}  # cookie owner bits -> owner key
        self.idents = flowident.Identities()

    def store(self, owner, new: list[Flow]) -> tuple[Delta, list]:
        """`owner`'s flows are now `new`, held to the declared pipeline first (the
        controller's runtime path is checked as the batch compile is): (the change, the
        other owners that lose or regain a flow with it: the caller stores them again)."""
        check_flows(new)
        blob = self.wire.pop(owner, b"")
        old = blobs.flow_mod_keys(blob)
        prefix = old[0][1] >> 24 if old else self.idents.prefix(owner)
        kept, restore = self.idents.claim(owner, blob, flowident.settle(new))
        if kept:
            self.wire[owner] = b"".join([msg for _, msg, _ in kept])
        if prefix is not None and self.owner_names.get(prefix) == owner:
            del self.owner_names[prefix]
        if new:
            self.owner_names[new[0].cookie >> 24] = owner
        return diff(old, [f for f, _, _ in kept], {owner}), restore

    def keys(self, owner) -> list[tuple[int, int]]:
        """The (table, cookie) keys of one owner's desired flows."""
        return blobs.flow_mod_keys(self.wire.get(owner, b""))

    def all_keys(self) -> set[tuple[int, int]]:
        keys: set = set()
        for packed in self.wire.values():
            keys.update(blobs.flow_mod_keys(packed))
        return keys

    def iter_wire_for(self, keys: set[tuple[int, int]]):
        """(key, packed flow_mod) for these keys, straight from the packed cache."""
        for owner in self.owners_of(keys):
            for key, packed in blobs.iter_flow_mods(self.wire.get(owner, b"")):
                if key in keys:
                    yield key, packed

    def owners_of(self, keys: set[tuple[int, int]]) -> list:
        """The known owners of these keys, in a stable order. Goes through the distinct
        owner bits (cookie >> 24) first: a full sync asks for 55,000 keys of 10,000 owners."""
        prefixes = {c >> 24 for _, c in keys}
        owners = {
            flowident.HOST if p >> 32 == COOKIE_HOST else self.owner_names.get(p) for p in prefixes
        }
        return sorted((o for o in owners if o is not None), key=flowident.rank)
