"""What Nova's own logs say, read by the lab's tests and demo: the external events Nova's
API accepted from Neutron (when, for which port and server), and what nova-compute reports
of a build or a live migration.

Nova's API logs each event it accepts from Neutron's notifier before handing it to the
compute that waits for it (nova/api/openstack/compute/server_external_events.py, INFO):

    2026-12-04 10:00:00.123 4242 INFO nova.api.openstack.compute.server_external_events
    [...] Creating event network-vif-plugged:PORT for instance SERVER on HOST

Its time (local, milliseconds) is when Nova received the event; HOST is the instance's host
in Nova's database at that moment (during a live migration, the source: the compute that
waits). Events Nova refuses (unknown instance, no host yet) are logged at debug only and
are not counted here.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import datetime

from ovsnat.lab.openstack import config as cfg
from ovsnat.lab.sh import wait_for

VIF_PLUGGED = "network-vif-plugged"
_STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) "
_EVENT = re.compile(
    _STAMP + r".*Creating event ([\w-]+):(\S+) for instance ([\w-]+) on (\S+)", re.M
)


@dataclass(frozen=True)
class Event:
    """One external event accepted by Nova's API."""

    at: float  # wall clock (time.time() scale), to the millisecond
    name: str
    tag: str  # the port's id for network-vif-* events
    server: str
    host: str


def stamp(text: str) -> float:
    """A Nova log line's time (local) as time.time() would have said it."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def log_path(paths: cfg.Paths, name: str) -> str:
    """A service's log file: `nova-api`, `nova-compute-hv1`, ..."""
    return os.path.join(paths.log, f"{name}.log")


def events(paths: cfg.Paths, since: float = 0.0) -> list[Event]:
    """Every event Nova's API accepted at or after `since` (time.time()), in order. A log
    line's time is truncated to the millisecond: `since` is compared a millisecond early."""
    found = (
        Event(stamp(m[0]), m[1], m[2], m[3], m[4])
        for m in _EVENT.findall(_read(log_path(paths, "nova-api")))
    )
    return [e for e in found if e.at >= since - 0.001]


def first_event(paths: cfg.Paths, name: str, tag: str, since: float) -> Event | None:
    """The first `name` event for port `tag` Nova's API accepted since `since`."""
    return next((e for e in events(paths, since) if e.name == name and e.tag == tag), None)


def wait_notifier_idle(paths: cfg.Paths, timeout: float = 30.0) -> None:
    """Until Neutron's Nova notifier is idle: it sends an event at once unless it sent one
    within send_events_interval (2 s, Neutron's default); then the event waits for that
    batch, up to 2 s more whatever the backend. A measurement started while the previous
    step's events are still batched would measure Neutron's batching, not ovsnat's path.
    Idle: nothing received for the interval and 1 s more (events queued meanwhile go out
    when the interval ends, and the notifier sleeps another interval after them)."""

    def idle() -> bool:
        last = max((e.at for e in events(paths)), default=0.0)
        return time.time() - last > cfg.SEND_EVENTS_INTERVAL + 1.0

    wait_for(idle, timeout, interval=0.05, what="Neutron's Nova notifier idle")


def compute_seconds(paths: cfg.Paths, host: str, pattern: str, server: str) -> float | None:
    """A number nova-compute logged for a server: `pattern` with one group, e.g.
    r"Took ([\\d.]+) seconds to build" (the last such line of that server)."""
    found = re.findall(
        rf"\[instance: {server}\] {pattern}", _read(log_path(paths, f"nova-compute-{host}"))
    )
    return float(found[-1]) if found else None
