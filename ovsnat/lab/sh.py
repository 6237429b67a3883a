"""Running commands, in the caller's namespace or inside a lab namespace.

Every command of the lab goes through `run` so failures carry the command and its stderr.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence


class LabError(RuntimeError):
    """A lab operation failed; the message names the command and what it printed."""


def run(
    argv: Sequence[str],
    ns: str | None = None,
    check: bool = True,
    timeout: float = 60,
    env: dict | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run argv (inside netns `ns` when given) and return the completed process."""
    full = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    merged = dict(os.environ, **env) if env else None
    try:
        proc = subprocess.run(
            full, capture_output=True, text=True, timeout=timeout, env=merged, input=input
        )
    except subprocess.TimeoutExpired as e:
        raise LabError(f"timed out after {timeout}s: {' '.join(full)}") from e
    if check and proc.returncode != 0:
        raise LabError(
            f"command failed ({proc.returncode}): {' '.join(full)}\n"
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def pid_alive(pid: int) -> bool:
    """True while pid runs and is not a zombie (pidfiles and kill(0) alone lie about zombies)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def pid_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


def kill_pid(pid: int, must_contain: str, timeout: float = 5.0) -> None:
    """Stop a process we started: SIGTERM, then SIGKILL. Only if its command line still holds
    `must_contain` (our rundir or lab id), so a recycled pid is never touched."""
    if not pid_alive(pid) or must_contain not in pid_cmdline(pid):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.02)


def wait_for(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll predicate until it returns a truthy value; raise LabError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
