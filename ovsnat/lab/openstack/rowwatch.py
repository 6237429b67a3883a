"""When os-vif's row appears in a hypervisor's OVSDB, as ovsdb-server announces it: the moment
the destination of a live migration plugged (Nova's pre_live_migration, the lab driver's
os-vif plug there), from which the lab measures the destination's `network-vif-plugged`.
"""

from __future__ import annotations

import os
import re
import subprocess
from datetime import datetime, timezone

from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import Lab


class RowWatch:
    """When an Interface row appears in a host's OVSDB, and when a key first appears in its
    external_ids, as ovsdb-server announces them to a monitor (`ovsdb-client --timestamp
    monitor`, caught up before the body runs): the moment os-vif's plug created the row,
    the moment the agent wrote the port's keys or the controller its markers. os-vif's own
    return does not say it: its transaction returns once ovs-vswitchd has applied the
    change, which can be a second later."""

    def __init__(self, lab: Lab, host: str, iface: str) -> None:
        self.ovs, self.iface = lab.hosts[host].ovs, iface
        self.path = os.path.join(lab.dir, f"rowwatch-{host}-{iface}.log")

    def __enter__(self) -> RowWatch:
        with open(self.path, "w") as out:
            self.proc = subprocess.Popen(
                [
                    "ovsdb-client",
                    "--timestamp",
                    "monitor",
                    f"unix:{self.ovs.db_sock}",
                    "Open_vSwitch",
                    "Interface",
                    "name,external_ids",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.ovs.env,
            )
        wait_for(lambda: " initial " in self._text(), 10, what="the OVSDB monitor")
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)
        os.unlink(self.path)

    def inserted_at(self, timeout: float = 10) -> float:
        """The wall clock time the row was inserted (ovsdb-server's update, in ms)."""
        return wait_for(self._inserted, timeout, what=f"{self.iface}'s row in the monitor")

    def inserted_or_none(self) -> float | None:
        """As inserted_at, without waiting: None if the row was never inserted."""
        return self._inserted()

    def key_at(self, key: str, timeout: float = 10) -> float:
        """The wall clock time `key` first appeared in the row's external_ids."""
        return wait_for(
            lambda: self._first(rf"[{{ ]{re.escape(key)}="),
            timeout,
            what=f"{key} on {self.iface}'s row in the monitor",
        )

    def _inserted(self) -> float | None:
        return self._first(None)

    def _first(self, key_pattern: str | None) -> float | None:
        """The first update that inserts the row (key_pattern None) or shows it, inserted or
        changed, with external_ids matching key_pattern."""
        stamp = None
        actions = "insert" if key_pattern is None else "(?:insert|new)"
        row = re.compile(rf"\s{actions}\s+\"?{re.escape(self.iface)}\"?(\s|$)")
        for line in self._text().splitlines():
            if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$", line):
                stamp = line  # ovsdb-client prints UTC
            elif (
                stamp and row.search(line) and (key_pattern is None or re.search(key_pattern, line))
            ):
                return (
                    datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f")
                    .replace(tzinfo=timezone.utc)
                    .timestamp()
                )
        return None

    def _text(self) -> str:
        with open(self.path) as f:
            return f.read()
