"""What every benchmark shares: results, the controller on a lab host, its log, process stats.

The controller runs exactly as `scenario.start_controller` runs it (same argv, namespace and
config file), plus a logging config that stamps every log line with its time, so phases can
be timed from the log. It is started without touching the bridge's Controller row; `connect`
then points br-int at it, which is how a benchmark starts the clock after the controller has
read OVSDB.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import time
from dataclasses import dataclass, field

from ovsnat.lab import Lab, scenario
from ovsnat.lab.sh import LabError, run, wait_for
from ovsnat.lab.topology import BRIDGE

LOGGING_INI = """\
[loggers]
keys=root
[handlers]
keys=stderr
[formatters]
keys=stamped
[logger_root]
level=INFO
handlers=stderr
[handler_stderr]
class=StreamHandler
args=(sys.stderr,)
formatter=stamped
[formatter_stamped]
format=%(created).6f %(message)s
"""


# --- results ---------------------------------------------------------------------------------
@dataclass
class Result:
    bench: str  # e.g. "cold program N=10000"
    metric: str  # what the value is
    value: float
    baseline: float | None  # measured in the same run
    unit: str
    target: str = ""  # "ratio <= 1.5", or "value <= 150" (in `unit`)
    raw: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline

    @property
    def met(self) -> bool | None:
        if not self.target:
            return None
        on, op, limit = self.target.split()
        x = self.ratio if on == "ratio" else self.value
        if x is None:
            return None
        return x <= float(limit) if op == "<=" else x >= float(limit)

    def as_dict(self) -> dict:
        return {
            "bench": self.bench,
            "metric": self.metric,
            "value": self.value,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "unit": self.unit,
            "target": self.target,
            "met": self.met,
            "raw": self.raw,
        }


def say(text: str = "") -> None:
    print(text, flush=True)


def spread(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


# --- the controller's log ----------------------------------------------------------------------
LINE = re.compile(r"^(\d+\.\d+) (.*)$")
PROGRAMMED = re.compile(
    r"ovsnat: programmed (?P<names>.+?) \((?P<n>\d+) flow_mods\) at "
    r"(?P<at>\d+(?:\.\d+)?), sent at (?P<sent>\d+(?:\.\d+)?)"
    r"(?P<failed> FAILED: .*)?$"
)


@dataclass
class Programmed:
    """One `ovsnat: programmed <names> (<n> flow_mods) at <unix time>, sent at <unix time>`
    line: `at` is the barrier reply, `sent` when ovsnat wrote the bundle."""

    names: list[str]
    flow_mods: int
    at: float
    failed: bool
    sent: float = 0.0


def parse_programmed(message: str) -> Programmed | None:
    m = PROGRAMMED.search(message)
    if not m:
        return None
    names = [
        n.strip()
        for n in m.group("names").split(",")
        if n.strip() and not n.strip().startswith("...")
    ]
    return Programmed(
        names,
        int(m.group("n")),
        float(m.group("at")),
        bool(m.group("failed")),
        float(m.group("sent")),
    )


class LogTail:
    """Follows a growing log file from a byte offset; lines are (log time, message). The log
    time is the controller's own stamp (LOGGING_INI), or when this reader saw the line."""

    def __init__(self, path: str, offset: int | None = None):
        self.path = path
        self.pos = (
            os.path.getsize(path) if offset is None and os.path.exists(path) else (offset or 0)
        )
        self.partial = b""
        self.lines: list[tuple[float, str]] = []

    def poll(self) -> list[tuple[float, str]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        chunks = (self.partial + data).split(b"\n")
        self.partial = chunks.pop()
        new = []
        for raw in chunks:
            text = raw.decode(errors="replace")
            m = LINE.match(text)
            new.append((float(m.group(1)), m.group(2)) if m else (time.time(), text))
        self.lines += new
        return new

    def find(self, pattern: str, start: int = 0):
        """(index, time, message, match) of the first line at or after `start` matching."""
        for i in range(start, len(self.lines)):
            m = re.search(pattern, self.lines[i][1])
            if m:
                return i, self.lines[i][0], self.lines[i][1], m
        return None

    def wait(self, pattern, timeout: float, start: int = 0, interval: float = 0.005):
        """Poll until a line at or after `start` matches: `pattern` is a regex, or a
        function of the message returning something truthy. Returns (index, time,
        message, match)."""
        test = pattern if callable(pattern) else (lambda text: re.search(pattern, text))
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            for i in range(start, len(self.lines)):
                m = test(self.lines[i][1])
                if m:
                    return i, self.lines[i][0], self.lines[i][1], m
            start = max(start, len(self.lines))
            if time.monotonic() > deadline:
                tail = "\n".join(m for _, m in self.lines[-15:])
                raise LabError(
                    f"timed out after {timeout:.0f} s waiting for {pattern} in "
                    f"{self.path}; last lines:\n{tail}"
                )
            time.sleep(interval)


# --- processes -----------------------------------------------------------------------------
def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM in kB from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the controller on a lab host -------------------------------------------------------------
class Controller:
    """ovsnat's controller (ryu-manager ovsnat.app) on one lab host."""

    def __init__(self, lab: Lab, host: str, snat_ip: str, **options):
        self.lab, self.host = lab, host
        self.snat_ip, self.options = snat_ip, options
        self.h = lab.hosts[host]
        self.name = f"ctl-{host}"
        self.conf = scenario.write_config(lab, host, snat_ip, **options)
        self.log_ini = os.path.join(self.h.rundir, "bench-logging.ini")
        with open(self.log_ini, "w") as f:
            f.write(LOGGING_INI)
        self.log: LogTail | None = None
        self.status_file = os.path.join(self.h.rundir, "ovsnat-status.json")

    def set_options(self, **options) -> None:
        """Rewrite the config file with these [ovsnat] options too (for the next start)."""
        self.options.update(options)
        self.conf = scenario.write_config(self.lab, self.host, self.snat_ip, **self.options)

    @property
    def pid(self) -> int:
        return self.lab.procs[self.name]["pid"]

    def start(self) -> LogTail:
        """Start the process (its log is followed from here on); the bridge is not touched."""
        argv = scenario.controller_argv(self.conf) + ["--log-config-file", self.log_ini]
        self.lab.spawn(
            self.name, argv, ns=self.h.ns, env={**self.h.ovs.env, **scenario.CONTROLLER_ENV}
        )
        self.log = LogTail(self.lab.procs[self.name]["log"])
        return self.log

    def stop(self) -> None:
        scenario.stop_controller(self.lab, self.host)

    def connect(self) -> None:
        """Point br-int at the controller (if it is not already)."""
        if not self.h.vsctl("get-controller", BRIDGE).strip():
            # --no-wait: with thousands of ports, ovs-vswitchd's reconfiguration can outlast
            # ovs-vsctl's timeout; the controller times the sync from the connection anyway.
            self.h.vsctl(
                "--no-wait",
                "set-controller",
                BRIDGE,
                f"tcp:127.0.0.1:{scenario.OF_PORT}",
                "--",
                "set",
                "controller",
                BRIDGE,
                "inactivity_probe=5000",
            )

    def fast_reconnect(self, timeout: float = 600) -> None:
        """Make ovs-vswitchd retry the controller every second. OVS 3.1 applies max_backoff
        only in a reconfiguration made while the controller is connected: this change of
        the Controller row is one (the controller also makes one once in sync). Waits until
        ovs-vswitchd has applied it, which can take it many seconds with thousands of
        ports."""
        run(
            [
                "ovs-vsctl",
                f"--db=unix:{self.h.ovs.db_sock}",
                f"--timeout={int(timeout)}",
                "set",
                "controller",
                BRIDGE,
                "max_backoff=1000",
            ],
            env=self.h.ovs.env,
            timeout=timeout + 10,
        )

    def status(self) -> dict | None:
        try:
            with open(self.status_file) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def wait_ovsdb(self, vms: int, timeout: float) -> float:
        """Wait until the controller has read OVSDB and built the desired state of `vms`
        VMs (its status file says so; it is written within a second of the snapshot)."""
        t0 = time.monotonic()
        self.log.wait(r"OVSDB snapshot", timeout)
        wait_for(
            lambda: (self.status() or {}).get("vms") == vms,
            max(1.0, timeout - (time.monotonic() - t0)),
            interval=0.05,
            what=f"controller status to show {vms} VMs",
        )
        return time.monotonic() - t0

    def wait_in_sync(self, timeout: float, start: int = 0) -> dict:
        """After a (re)connect: wait for the end of the full sync. Returns what the log says:
        seconds (the controller's own `in sync` timing, else connect -> `nothing sent` from
        the log stamps), whether anything was sent, and the phase stamps."""
        hit = self.log.wait(
            r"in sync [\d.]+ s after|flows in sync \(\d+\), nothing sent", timeout, start
        )
        connected = self.log.find(r"datapath \S+ connected", start)
        holds = self.log.find(r"switch holds \d+ ovsnat flows", start)
        plan = self.log.find(r"sync: \d+ to add", start)
        m = re.search(r"in sync ([\d.]+) s after", hit[2])
        seconds = float(m.group(1)) if m else hit[1] - connected[1]
        return {
            "seconds": seconds,
            "nothing_sent": "nothing sent" in hit[2],
            "t_connected": connected[1] if connected else None,
            "t_dumped": holds[1] if holds else None,
            "t_planned": plan[1] if plan else None,
            "t_done": hit[1],
            "index": hit[0],
        }


def vswitchd_log(host) -> str:
    return os.path.join(host.rundir, "ovs-vswitchd.log")


def ofctl(host, *args: str, timeout: float = 300):
    return run(["ovs-ofctl", "-O", "OpenFlow13", *args], env=host.ovs.env, timeout=timeout)
