"""Everything ovsnat says to and hears from OVSDB (the only package that speaks it).

- `watcher`: the controller's view of one bridge's Interface rows (monitor_cond, update2
  differences), handed on as the plain batches of ovsnat.model.rows, and its small writes
  (the markers); `tables` keeps the rows the monitor describes (pure bookkeeping).
- `writer`: `ovsnat bind` / `unbind`: a VM's contract keys, written through the IDL.
"""

from ovsnat.ovsdb.tables import kept_key
from ovsnat.ovsdb.watcher import DATABASE, Watcher
from ovsnat.ovsdb.writer import IfaceNotFound, fetch_schema, set_iface_external_ids

__all__ = [
    "DATABASE",
    "Watcher",
    "kept_key",
    "IfaceNotFound",
    "fetch_schema",
    "set_iface_external_ids",
]
