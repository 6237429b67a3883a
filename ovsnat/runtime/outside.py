"""The shim's writes outside the process that are not for the switch: the status file and
what it hands the OVSDB watcher. Each one works, or is reported (ovsnat.core.failures:
logged once, counted, in the status) and made again later.
"""

from __future__ import annotations

import json
import os


def ovsdb_written(watcher, failures, sent: bool, now: float) -> None:
    """A key write or a Controller touch was handed to the watcher (or not)."""
    if sent or watcher.connected():  # (a row it does not know yet: no failure)
        failures.ok("ovsdb_write")
        return
    failures.failed(
        "ovsdb_write",
        "OVSDB is not connected",
        "installed markers are written "
        "again after the reconnect; the Controller rows are touched again at the "
        "next connection",
        now,
    )


def write_status(path: str, state: dict, failures, now: float) -> None:
    error = write_file(path, state)
    if error is None:
        failures.ok("status_file")
    else:
        failures.failed(
            "status_file",
            error,
            "`ovsnat status` shows an old state; tried again every second",
            now,
        )


def write_file(path: str, state: dict) -> str | None:
    """Write the status atomically (readers never see half a file). Returns why it failed
    (None: written); write_status reports it, and the shim writes again a second later."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, path)
        return None
    except (OSError, ValueError, TypeError) as e:
        return f"{path}: {e}"
