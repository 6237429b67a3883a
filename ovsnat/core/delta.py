"""A change to send to the switch: flows to add and (table, cookie) keys to delete.

Kept apart from the host state so every producer of changes (the host state, the FIP
activation logic, the controller) speaks the same small type.
"""

from __future__ import annotations

from ovsnat.compile.flows import Flow


class Delta:
    """What to send to go from the previous desired state to the new one: flows to add, and
    (table, cookie) keys of flows to delete (a cookie names exactly one flow). Composing
    deltas costs the size of the added one, so a resync of 10,000 ports stays linear."""

    def __init__(self, delete=(), add=(), owners=()):
        self._delete: dict = dict.fromkeys(delete)
        self._add: dict = {flow_key(f): f for f in add}
        self.owners: set = set(owners)

    @property
    def delete(self) -> list[tuple[int, int]]:
        return list(self._delete)

    @property
    def add(self) -> list[Flow]:
        return list(self._add.values())

    def __bool__(self) -> bool:
        return bool(self._delete or self._add)

    def extend(self, other: Delta) -> None:
        """Compose: `other` applies after self. A flow added then deleted is never sent; a
        flow deleted then added again stays as it is on the switch."""
        for k in other._delete:
            if self._add.pop(k, None) is None:
                self._delete[k] = None
        for k, f in other._add.items():
            if k in self._delete:
                del self._delete[k]
            else:
                self._add[k] = f
        self.owners |= other.owners


def flow_key(flow: Flow) -> tuple[int, int]:
    return flow.table, flow.cookie


def diff(old: list[tuple[int, int]], new: list[Flow], owners: set) -> Delta:
    new_keys = {flow_key(f) for f in new}
    old_keys = set(old)
    return Delta(
        [k for k in old if k not in new_keys],
        [f for f in new if flow_key(f) not in old_keys],
        owners,
    )
