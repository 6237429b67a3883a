"""The Interface rows of one bridge as OVSDB hands them to the controller, in batches.

The OVSDB watcher (ovsnat.ovsdb.watcher) makes them; the host controller
(ovsnat.core.controller) takes them. Two kinds of batch:
- `Snapshot`: every VM interface of the bridge. Sent on the first sync and after every
  reconnect, because a new monitor re-sends all rows without delete events: the receiver
  must treat anything missing from a snapshot as gone (level-triggered).
- `Changes`: the interfaces touched since the last batch (O(changes), not O(rows)).

Plain values: the core reads them without importing anything that speaks OVSDB.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class IfaceRow:
    name: str
    ofport: int | None
    external_ids: dict  # only the keys ovsnat reads (watcher.kept_key)
    link_state: str | None = None  # "down": the device is gone (e.g. the VM left)


@dataclass
class Snapshot:
    rows: dict[str, IfaceRow]
    bridge_ids: dict = field(default_factory=dict)  # the bridge's ovsnat-* external_ids
    datapath_id: str = ""  # the bridge's (empty: none yet)


@dataclass
class Changes:
    rows: dict[str, IfaceRow] = field(default_factory=dict)  # created or updated
    removed: set[str] = field(default_factory=set)  # gone from the bridge
    bridge_ids: dict | None = None  # when they changed
    datapath_id: str | None = None  # when it changed
