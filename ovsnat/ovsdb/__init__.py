"""Everything ovsnat says to and hears from OVSDB (the only package that speaks it).

- `watcher`: the controller's view of one bridge's Interface rows (monitor_cond, update2
  differences), handed on as the plain batches of ovsnat.model.rows, and its small writes
  (the markers); `tables` keeps the rows the monitor describes (pure bookkeeping).
- `writer`: `ovsnat bind` / `unbind`: a VM's contract keys, written through the IDL.
- `lookup`: the metadata proxy's one-row reads (plain JSON-RPC, no IDL).

The names below are resolved on first use (PEP 562): the metadata proxy imports only
`lookup`, and importing the watcher would pull python-ovs and eventlet into it (about
34 MB of its 60 MB).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ovsnat.ovsdb.tables import kept_key
    from ovsnat.ovsdb.watcher import DATABASE, Watcher
    from ovsnat.ovsdb.writer import IfaceNotFound, fetch_schema, set_iface_external_ids

_HOMES = {
    "kept_key": "tables",
    "DATABASE": "watcher",
    "Watcher": "watcher",
    "IfaceNotFound": "writer",
    "fetch_schema": "writer",
    "set_iface_external_ids": "writer",
}

__all__ = [
    "DATABASE",
    "IfaceNotFound",
    "Watcher",
    "fetch_schema",
    "kept_key",
    "set_iface_external_ids",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
