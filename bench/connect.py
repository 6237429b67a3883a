"""A cold program as a user sees it: from `ovs-vsctl set-controller` to ovsnat's flows being
visible on the switch (`ovs-ofctl dump-aggregate`), and whose time each part is.

The stamps come from both sides: ovs-vswitchd's log (`rconn` says when it began connecting
to the controller and when the connection was up, i.e. both HELLOs exchanged), the
controller's log (the datapath connected: its features reply handled; the sync planned; in
sync: the barrier after the last flow_mod) and the poll of the flow count from outside.
"""

from __future__ import annotations

import calendar
import re
import time

from bench.common import ofctl, vswitchd_log
from ovsnat.lab.topology import BRIDGE

STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z\|\d+\|(\w+)\|\w+\|(.*)$")
FLOWS = re.compile(r"flow_count=(\d+)")


def vswitchd_lines(host, offset: int) -> list[tuple[float, str, str]]:
    """(unix time, module, message) of ovs-vswitchd's log past byte `offset`."""
    with open(vswitchd_log(host), "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    out = []
    for line in text.splitlines():
        m = STAMP.match(line)
        if m:
            t = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
            out.append((t + float(m.group(2) or 0), m.group(3), m.group(4)))
    return out


def flow_count(host) -> int:
    m = FLOWS.search(ofctl(host, "dump-aggregate", BRIDGE).stdout)
    return int(m.group(1)) if m else 0


def until_visible(host, log, timeout: float, interval: float = 0.05) -> tuple[float, int]:
    """Poll until the switch holds as many flows as the controller's sync adds (its log says
    how many: `sync: N to add`); returns (when, N)."""
    deadline = time.monotonic() + timeout
    planned = None
    while time.monotonic() < deadline:
        if planned is None:
            log.poll()
            hit = log.find(r"sync: (\d+) to add")
            planned = int(hit[3].group(1)) if hit else None
        if planned is not None and flow_count(host) >= planned:
            return time.time(), planned
        time.sleep(interval)
    raise TimeoutError(f"flows not visible within {timeout:.0f} s")


def phases(host, offset: int, t_set: float, t_visible: float, sync: dict) -> dict:
    """Seconds of each part, from set-controller to the flows visible."""
    lines = vswitchd_lines(host, offset)

    def first(pattern: str):
        return next((t for t, _, msg in lines if re.search(pattern, msg)), None)

    connecting = first(rf"{BRIDGE}<->tcp:\S+: connecting")
    connected = first(rf"{BRIDGE}<->tcp:\S+: connected")
    stamps = [
        ("set-controller -> vswitchd connecting", connecting),
        ("-> vswitchd connected (HELLOs exchanged)", connected),
        ("-> controller handled the features reply", sync["t_connected"]),
        ("-> sync planned", sync["t_planned"]),
        ("-> in sync (barrier after the last flow_mod)", sync["t_done"]),
        ("-> visible to ovs-ofctl", t_visible),
    ]
    out, last = {}, t_set
    for name, t in stamps:
        if t is not None and last is not None:
            out[name] = round(t - last, 3)
            last = t
    out["reconfigure"] = [
        msg for _, module, msg in lines if module == "timeval" and "poll interval" in msg
    ][:3]
    return out
