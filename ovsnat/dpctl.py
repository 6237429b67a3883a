"""ovs-vswitchd's conntrack through `ovs-appctl dpctl/*`: OpenFlow has no view of conntrack's
entries or of its zone limits, so the shim asks the daemon. Blocking subprocess calls, made
from the shim's event loop only (the framework's green threads make them cooperative); a
daemon that does not answer within 5 s gives None, and the caller carries on without."""

from __future__ import annotations

import subprocess

BATCH = 1000              # zone limits per ct-set-limits call (one call for 10,000 is too long)


def appctl(*args: str) -> str | None:
    """ovs-vswitchd's answer (the daemon found through OVS_RUNDIR, as ovs-appctl does)."""
    try:
        return subprocess.run(["ovs-appctl", *args], capture_output=True, text=True,
                              timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None


def dump_conntrack(zone: int | None = None) -> str | None:
    return appctl("dpctl/dump-conntrack", *([f"zone={zone}"] if zone is not None else []))


def apply_zone_limits(limits) -> None:
    """connlimit.ZoneLimits: set, then delete; a freed zone is flushed too, so the next VM
    on that ofport starts from zero."""
    for i in range(0, len(limits.set), BATCH):
        appctl("dpctl/ct-set-limits", *[f"zone={z},limit={n}"
                                        for z, n in limits.set[i:i + BATCH]])
    for z in limits.delete:
        appctl("dpctl/ct-del-limits", f"zone={z}")
        appctl("dpctl/flush-conntrack", f"zone={z}")
