"""Deadlines for the host controller, in plain Python.

The controller never sleeps or spawns: it records what must happen when, and the framework
shim calls `due(now)` whenever `next_at()` has passed. So the unit tests run time forward
by hand, and one heap serves GARP schedules, probes, activations and periodic chores.
A key names each deadline: setting it again replaces the previous one, and cancelling
costs O(1) (stale heap entries are skipped when they surface).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable


class Timers:
    def __init__(self):
        self._heap: list[tuple[float, int, Hashable]] = []
        self._live: dict[Hashable, int] = {}  # key -> sequence of its live entry
        self._when: dict[Hashable, float] = {}  # key -> its deadline
        self._seq = itertools.count()

    def at(self, when: float, key: Hashable) -> None:
        """Fire `key` at `when` (replacing any earlier deadline with the same key)."""
        seq = next(self._seq)
        self._live[key] = seq
        self._when[key] = when
        heapq.heappush(self._heap, (when, seq, key))

    def cancel(self, key: Hashable) -> None:
        self._live.pop(key, None)
        self._when.pop(key, None)

    def when(self, key: Hashable) -> float | None:
        return self._when.get(key)

    def pending(self, key: Hashable) -> bool:
        return key in self._live

    def next_at(self) -> float | None:
        """When the earliest live deadline falls, or None."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[Hashable]:
        """The keys whose deadline has come, earliest first; they are removed."""
        fired = []
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                return fired
            _, seq, key = heapq.heappop(self._heap)
            del self._live[key]
            self._when.pop(key, None)
            fired.append(key)

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap and self._live.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)

    def __len__(self) -> int:
        return len(self._live)
