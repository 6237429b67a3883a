"""Stopping what a lab started, and only that: processes are recorded by pid and killed only
while their environment still carries the lab's id (a recycled pid is left alone)."""

from __future__ import annotations

import contextlib
import os

from ovsnat.lab.sh import LabError, kill_pid, pid_alive, wait_for


def kill_recorded(info: dict, lab_id: str) -> None:
    """Kill a recorded process and its session (it was started with start_new_session), but
    only while its environment still carries this lab's id: a recycled pid is left alone."""
    pid = info["pid"]
    if not pid_alive(pid) or f"OVSNAT_LAB_ID={lab_id}".encode() not in _environ(pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, 15)
    try:
        wait_for(lambda: not pid_alive(pid), 5, what=f"pid {pid} to exit")
    except LabError:
        kill_pid(pid, "")
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""
