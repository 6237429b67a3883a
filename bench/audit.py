"""The audit's cost at N VMs (issue 17): controller CPU per audit, as a share of one core at
the default period (60 s), measured on the N-VM host bench.cold built.

The same controller runs twice on the same switch, each for the same window: once with an
audit every AUDIT_S seconds, once with audits off. CPU per audit is the difference of the
two CPU times over the number of audits in the window (the status file counts them), so
the controller's background work (timers, echoes, the status file) cancels out; the share
is that over the default period. ovs-vswitchd's CPU per audit (it builds the dump) is
reported beside it.
"""

from __future__ import annotations

import time

from bench.common import Controller, Result, cpu_seconds, say
from ovsnat.lab.sh import wait_for
from ovsnat.model.options import BY_NAME

AUDIT_S = 2  # seconds between audits while measuring
WINDOW_S = 20.0
DEFAULT_S = BY_NAME["audit_interval"].default


def run_with(ctl: Controller, host, interval: int, timeout: float) -> dict:
    """Restart the controller with audit_interval=interval; CPU and audits over WINDOW_S
    once it is in sync (and its first audit, if any, is done)."""
    ctl.stop()
    ctl.set_options(audit_interval=interval)
    ctl.start()
    ctl.wait_in_sync(timeout)
    audits = lambda: ((ctl.status() or {}).get("stats") or {}).get("audits", 0)  # noqa: E731
    if interval:
        first = audits()
        wait_for(lambda: audits() > first, interval * 5 + 30, interval=0.1, what="the first audit")
    vswitchd = host.ovs.pid("ovs-vswitchd")
    n0, cpu0, vcpu0 = audits(), cpu_seconds(ctl.pid), cpu_seconds(vswitchd)
    time.sleep(WINDOW_S)
    time.sleep(1.2)  # the status file is rewritten every second
    return {
        "audits": audits() - n0,
        "cpu_s": cpu_seconds(ctl.pid) - cpu0,
        "vswitchd_cpu_s": cpu_seconds(vswitchd) - vcpu0,
        "window_s": WINDOW_S,
    }


def measure(ctl: Controller, host, n: int, label: str, timeout: float) -> tuple[Result, dict]:
    on = run_with(ctl, host, AUDIT_S, timeout)
    off = run_with(ctl, host, 0, timeout)
    ctl.set_options(audit_interval=DEFAULT_S)
    if not on["audits"]:
        raise RuntimeError(f"no audit in {WINDOW_S} s with audit_interval={AUDIT_S}")
    per_audit = max(0.0, on["cpu_s"] - off["cpu_s"]) / on["audits"]
    share = 100 * per_audit / DEFAULT_S
    raw = {
        "on": on,
        "off": off,
        "cpu_per_audit_s": round(per_audit, 4),
        "vswitchd_cpu_per_audit_s": round(
            max(0.0, on["vswitchd_cpu_s"] - off["vswitchd_cpu_s"]) / on["audits"], 4
        ),
    }
    say(
        f"  N={n}: audit {per_audit * 1e3:.0f} ms of controller CPU each ({on['audits']} in "
        f"{WINDOW_S:.0f} s), {share:.2f} % of a core every {DEFAULT_S} s"
    )
    return Result(
        f"audit {label}",
        f"controller CPU per audit / default period ({DEFAULT_S} s), % of one core",
        share,
        None,
        "%",
        "value <= 1",
        raw,
    ), raw
