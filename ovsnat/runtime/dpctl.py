"""ovs-vswitchd's control socket, as `ovs-appctl` uses it: OpenFlow has no view of
conntrack's entries or of its zone limits, so the shim asks the daemon.

Where that socket is comes from `[ovsnat] vswitchd_ctl`, or is found as ovs-appctl finds
it: $OVS_RUNDIR (default /var/run/openvswitch), its ovs-vswitchd.pid, the socket
ovs-vswitchd.<pid>.ctl beside it. Found again at every call, so a restarted ovs-vswitchd
(another pid) is followed. Every call says whether it worked and, if not, why: a missing
pidfile, a socket that is not there, no answer in time, the daemon's own error.

The calls speak ovs-appctl's protocol (one JSON-RPC request on the unix socket) instead of
running ovs-appctl: starting a process blocks its parent until the child has run exec,
which on a busy 2-core host stalled the whole controller for 100 ms and more. On a socket
of the framework's (green under ryu-manager) the wait is cooperative, and the answer is
decoded once, by the C decoder. Made only in the shim's green threads (ovsnat.runtime.calls),
never in an event handler; the CLI makes them as plain blocking calls.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass

DEFAULT_RUNDIR = "/var/run/openvswitch"
DAEMON = "ovs-vswitchd"
BATCH = 1000  # zone limits per ct-set-limits call (one call for 10,000 is too long)
RECV_BYTES = 1 << 18


@dataclass(frozen=True)
class Answer:
    ok: bool
    out: str = ""
    error: str = ""


class Target:
    """ovs-vswitchd's control socket: `option` is a socket, a pidfile (.pid) or a rundir;
    empty: as ovs-appctl finds it."""

    def __init__(self, option: str = "", env=None):
        self.option = option.strip()
        self.env = os.environ if env is None else env

    def describe(self) -> str:
        if self.option:
            return f"vswitchd_ctl = {self.option}"
        rundir = self.env.get("OVS_RUNDIR")
        return f"$OVS_RUNDIR = {rundir}" if rundir else f"{DEFAULT_RUNDIR} (OVS_RUNDIR is not set)"

    def resolve(self) -> tuple[str | None, str]:
        """(the socket's path, "") or (None, why it cannot be found)."""
        option = self.option
        if option and not option.endswith(".pid") and not os.path.isdir(option):
            return (
                (option, "")
                if os.path.exists(option)
                else (None, f"{option} does not exist (vswitchd_ctl)")
            )
        if option.endswith(".pid"):
            pidfile = option
        else:
            rundir = option or self.env.get("OVS_RUNDIR") or DEFAULT_RUNDIR
            pidfile = os.path.join(rundir, f"{DAEMON}.pid")
        try:
            with open(pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError) as e:
            return (
                None,
                f"no pid in {pidfile} ({_reason(e)}): is ovs-vswitchd running "
                f"with that rundir? (looked there through {self.describe()})",
            )
        path = os.path.join(os.path.dirname(pidfile), f"{DAEMON}.{pid}.ctl")
        if not os.path.exists(path):
            return None, f"{path} does not exist (ovs-vswitchd pid {pid} from {pidfile} is gone?)"
        return path, ""


def appctl(target: Target, command: str, *args: str, timeout: float = 5.0) -> Answer:
    """What `ovs-appctl -t <socket> command args...` would print; ok only when the daemon
    says the command worked (its error text otherwise)."""
    path, error = target.resolve()
    if path is None:
        return Answer(False, error=error)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        sock.connect(path)
        sock.sendall(json.dumps({"method": command, "params": list(args), "id": 0}).encode())
        reply = _receive(sock, deadline)
    except TimeoutError:
        return Answer(False, error=f"{command}: no answer from {path} within {timeout:.0f} s")
    except EOFError:
        return Answer(False, error=f"{command}: {path} closed the connection without an answer")
    except OSError as e:
        return Answer(False, error=f"{command} on {path}: {_reason(e)}")
    finally:
        sock.close()
    if (
        not isinstance(reply, dict)
        or reply.get("error") is not None
        or not isinstance(reply.get("result"), str)
    ):
        why = str(
            reply.get("error")
            if isinstance(reply, dict) and reply.get("error")
            else f"not an answer: {str(reply)[:200]}"
        ).strip()
        return Answer(False, error=f"{command} on {path}: {why}")
    return Answer(True, reply["result"])


def _receive(sock, deadline: float):
    """The one JSON object the daemon answers. Decoded (C decoder) only when what arrived
    ends like one, so a 2 MB answer costs one decode; between reads the green thread
    yields (time.sleep is the hub's under the framework), even when the bytes are there
    already and the socket would not make it wait."""
    buf = bytearray()
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError
        data = sock.recv(RECV_BYTES)
        if not data:
            raise EOFError
        buf += data
        if buf.rstrip().endswith(b"}"):
            try:
                return json.loads(buf)
            except ValueError:
                pass  # a "}" inside the answer: read on
        time.sleep(0)


def probe(target: Target, bridge: str) -> Answer:
    """The socket answers, and its ovs-vswitchd runs `bridge` (not another host's)."""
    answer = appctl(target, "ofproto/list")
    if answer.ok and bridge not in answer.out.split():
        return Answer(
            False,
            answer.out,
            f"the ovs-vswitchd at {target.resolve()[0]} has no "
            f"bridge {bridge} (it has: "
            f"{', '.join(answer.out.split()) or 'none'})",
        )
    return answer


def set_zone_limits(target: Target, limits) -> tuple[tuple[int, ...], str]:
    """ZoneLimits (ovsnat.core.effects): set, then delete; a freed zone is flushed too, so
    the next VM on that ofport starts from zero. Returns the zones whose change failed, and
    why."""
    failed, error = [], ""
    for i in range(0, len(limits.set), BATCH):
        batch = limits.set[i : i + BATCH]
        answer = appctl(target, "dpctl/ct-set-limits", *[f"zone={z},limit={n}" for z, n in batch])
        if not answer.ok:
            failed += [z for z, _ in batch]
            error = answer.error
    for z in limits.delete:
        for answer in (
            appctl(target, "dpctl/ct-del-limits", f"zone={z}"),
            appctl(target, "dpctl/flush-conntrack", f"zone={z}"),
        ):
            if not answer.ok:
                failed.append(z)
                error = answer.error
                break
    return tuple(failed), error


def flush_conntrack(target: Target, flushes) -> tuple[int, str]:
    """Each (zone, partial ct-tuple) flushed; how many failed, and the last error."""
    failed, error = 0, ""
    for zone, match in flushes:
        answer = appctl(
            target, "dpctl/flush-conntrack", f"zone={zone}", *([match] if match else [])
        )
        if not answer.ok:
            failed, error = failed + 1, answer.error
    return failed, error


def _reason(e: Exception) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)
