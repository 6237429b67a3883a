"""When did an address become reachable, or stop being? A pinger that runs all along and
keeps the kernel's receive timestamp of every reply (`ping -D`), so a test measures from the
event that matters (Neutron's answer to an API call, a plug) to the first or last reply,
instead of polling with fresh processes whose own start-up time would blur the result. Its
output is read as it comes (a pipe left unread fills up after about 1,000 replies and stops
the ping), so it also serves for long "nothing lost" windows.

Probes go every 20 ms by default: the resolution of every measurement made with it.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time

from ovsnat.lab.sh import LabError

REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ([\d.]+): icmp_seq=(\d+)")


class Pinger:
    """`ping -D` from namespace `ns` to `dst` until stopped (use as a context manager)."""

    def __init__(self, ns: str, dst: str, interval: float = 0.02, wait: float = 1.0):
        self.dst, self.interval = dst, interval
        self.replies: list[float] = []  # wall-clock receive times, in order
        self.seqs: list[int] = []  # their icmp_seq
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "ping",
                "-D",
                "-n",
                "-i",
                str(interval),
                "-W",
                str(wait),
                dst,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            m = REPLY.match(line)
            if m and m.group(2) == self.dst:
                with self._lock:
                    self.replies.append(float(m.group(1)))
                    self.seqs.append(int(m.group(3)))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)

    def __enter__(self) -> Pinger:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- questions ---------------------------------------------------------------------
    def since(self, t: float) -> list[float]:
        with self._lock:
            return [r for r in self.replies if r >= t]

    def last(self) -> float | None:
        with self._lock:
            return self.replies[-1] if self.replies else None

    def first_reply_after(self, t: float, timeout: float) -> float:
        """Seconds from `t` (wall clock) to the first reply received after it; raises
        LabError when none came within `timeout` of t."""
        deadline = t + timeout
        while True:
            got = self.since(t)
            if got:
                return got[0] - t
            if time.time() > deadline:
                raise LabError(f"no reply from {self.dst} within {timeout} s")
            time.sleep(self.interval)

    def silent_after(self, t: float, quiet: float, timeout: float) -> float:
        """Seconds from `t` to the last reply (0 when none came after t), once `quiet`
        seconds have passed with no reply; raises LabError if replies still come `timeout`
        seconds after t."""
        while True:
            now = time.time()
            last = self.last()
            if now - max(t, last or t) >= quiet:
                return max(0.0, (last or t) - t)
            if now - t > timeout + quiet:
                raise LabError(f"{self.dst} still answers {timeout} s after it should stop")
            time.sleep(self.interval)

    def lost(self) -> int:
        """Probes lost between the first and the last reply (by icmp_seq: a probe still in
        flight when the pinger stops is not counted as lost)."""
        with self._lock:
            seqs = set(self.seqs)
        return max(seqs) - min(seqs) + 1 - len(seqs) if seqs else 0

    def gap(self) -> float:
        """The longest silence between two consecutive replies, in seconds."""
        with self._lock:
            times = list(self.replies)
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=float("inf"))
