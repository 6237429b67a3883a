"""Real traffic between lab namespaces: ping, TCP/UDP clients and servers, captures.

Thin wrappers over iputils ping, tcpdump and ovsnat.lab.peer so tests, the demo and the
benchmarks speak in scenarios ("vm1 reaches the server and it sees 203.0.113.10").
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ovsnat.lab.sh import LabError, run, wait_for


@dataclass
class PingResult:
    sent: int
    received: int
    output: str

    @property
    def lost(self) -> int:
        return self.sent - self.received


def ping(
    ns: str,
    dst: str,
    count: int = 3,
    interval: float = 0.2,
    wait: float = 1.0,
    size: int | None = None,
    ttl: int | None = None,
    df: bool = False,
) -> PingResult:
    argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(wait)]
    if size is not None:
        argv += ["-s", str(size)]
    if ttl is not None:
        argv += ["-t", str(ttl)]
    if df:
        argv += ["-M", "do"]
    proc = run(argv + [dst], ns=ns, check=False, timeout=count * (interval + wait) + 10)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", proc.stdout)
    if not m:
        raise LabError(f"cannot parse ping output: {proc.stdout}{proc.stderr}")
    return PingResult(int(m.group(1)), int(m.group(2)), proc.stdout + proc.stderr)


def http_get(ns: str, url: str, timeout: float = 5, source: str = "") -> tuple[int, str]:
    """curl inside `ns` (from `source` when given): (HTTP status, body); status 0 when no
    answer came."""
    argv = ["curl", "-s", "-m", str(timeout), "-o", "-", "-w", "\n%{http_code}", url]
    if source:
        argv[1:1] = ["--interface", source]
    out = run(argv, ns=ns, check=False, timeout=timeout + 5).stdout
    body, _, code = out.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


def _peer(ns: str, python: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return run([python, "-m", "ovsnat.lab.peer", *args], ns=ns, check=False, timeout=timeout)


@dataclass
class Reply:
    ok: bool
    peer_ip: str | None
    peer_port: int | None
    line: str


def _parse_reply(proc: subprocess.CompletedProcess) -> Reply:
    out = proc.stdout.strip().splitlines()
    line = out[0] if out else proc.stderr.strip()
    m = re.match(r"PEER (\S+):(\d+)", line)
    if proc.returncode != 0 or not m:
        return Reply(False, None, None, line)
    return Reply(True, m.group(1), int(m.group(2)), "\n".join(out))


def tcp_connect(
    lab, ns: str, host: str, port: int, timeout: float = 2.0, hold: float = 0, src_port: int = 0
) -> Reply:
    """Connect from ns to host:port; the reply says which source address the server saw."""
    args = ["tcp-client", host, str(port), "--timeout", str(timeout), "--hold", str(hold)]
    if src_port:
        args += ["--src-port", str(src_port)]
    return _parse_reply(_peer(ns, lab.python()[0], *args, timeout=timeout + hold + 20))


def udp_request(
    lab, ns: str, host: str, port: int, size: int = 32, timeout: float = 1.0, src_port: int = 0
) -> Reply:
    args = ["udp-client", host, str(port), "--size", str(size), "--timeout", str(timeout)]
    if src_port:
        args += ["--src-port", str(src_port)]
    return _parse_reply(_peer(ns, lab.python()[0], *args, timeout=4 * timeout + 20))


def start_server(lab, name: str, ns: str, proto: str, port: int) -> None:
    """Start a tcp/udp PEER server in ns (recorded by the lab, stopped at teardown)."""
    lab.spawn(
        name, lab.python("-m", "ovsnat.lab.peer", f"{proto}-server", "--port", str(port)), ns=ns
    )
    log = lab.procs[name]["log"]
    wait_for(lambda: "READY" in Path(log).read_text(), 10, what=f"server {name} in {ns}")


def send_frames(lab, ns: str, frames: list[bytes], iface: str = "eth0", count: int = 1) -> None:
    """Inject raw Ethernet frames (built with scapy by the caller) from inside ns."""
    _peer(
        ns,
        lab.python()[0],
        "send",
        "--iface",
        iface,
        "--count",
        str(count),
        *[f.hex() for f in frames],
    )


@contextlib.contextmanager
def capture(lab, name: str, ns: str, iface: str, bpf: str = "", direction: str = "inout"):
    """tcpdump on iface inside ns while the block runs; yields the pcap path, which holds
    every captured packet once the block exits (read it with scapy.rdpcap). direction "in":
    only what arrives on iface (on the external segment's side of a host's uplink: what
    that host sends)."""
    path = os.path.join(lab.dir, f"{name}.pcap")
    argv = ["tcpdump", "-U", "-n", "-i", iface, "-w", path, "--immediate-mode", "-Q", direction]
    argv += bpf.split() if bpf else []
    lab.spawn(name, argv, ns=ns)
    wait_for(
        lambda: "listening on" in Path(lab.procs[name]["log"]).read_text(),
        10,
        what=f"tcpdump on {ns}/{iface}",
    )
    try:
        yield path
    finally:
        time.sleep(0.2)  # let the last packets reach the file
        lab.stop_proc(name)


def captured(pcap: str, predicate=None) -> list:
    """The packets of a pcap (that satisfy predicate), readable while tcpdump still writes
    it: a file with no header yet or a half-written last record reads as what is complete."""
    from scapy.all import rdpcap  # scapy is slow to import; only captures need it

    try:
        packets = rdpcap(pcap)
    except Exception:  # empty file, or the header not written yet
        return []
    return [p for p in packets if predicate is None or predicate(p)]


def wait_captured(
    pcap: str, predicate, timeout: float = 5.0, what: str = "the packet in the capture"
) -> list:
    """Wait until the capture holds a packet satisfying predicate (a test's positive
    control) and return the matching packets. Use it inside the `capture` block: once the
    control, sent last, is in the file, so is everything sent before it."""
    return wait_for(lambda: captured(pcap, predicate), timeout, interval=0.05, what=what)


def tcp_established(ns: str, dst: str, port: int) -> int:
    """How many TCP sessions from ns to dst:port are established (read with ss), e.g. to
    wait until a background session is up before the test disturbs it."""
    out = run(
        ["ss", "-Htn", "state", "established", "dst", f"{dst}:{port}"], ns=ns, check=False
    ).stdout
    return sum(1 for line in out.splitlines() if line.strip())


class Background:
    """A traffic process running while the test does something else (restart, migrate)."""

    def __init__(self, argv: list[str], ns: str):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def result(self, timeout: float = 60) -> str:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


def background_ping(ns: str, dst: str, interval: float = 0.01, duration: float = 5.0):
    """`ping -i interval -w duration`; .result() gives a PingResult with loss and the
    longest gap between consecutive replies (from the icmp_seq numbers)."""
    count = max(1, int(duration / interval))
    # -c, not just -w: a deadline would count the reply still in flight as lost.
    bg = Background(
        [
            "ping",
            "-n",
            "-i",
            str(interval),
            "-c",
            str(count),
            "-w",
            str(int(duration) + 5),
            "-W",
            "1",
            dst,
        ],
        ns,
    )
    bg.interval = interval
    return bg


def ping_gap(output: str, interval: float) -> float:
    """Longest outage in seconds: the largest jump in icmp_seq of received replies."""
    seqs = [int(s) for s in re.findall(r"icmp_seq=(\d+)", output)]
    if not seqs:
        return float("inf")
    jumps = [b - a for a, b in zip(seqs, seqs[1:], strict=False)] or [1]
    return (max(jumps) - 1) * interval


def parse_ping(output: str) -> PingResult:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    if not m:
        raise LabError(f"cannot parse ping output: {output[-500:]}")
    return PingResult(int(m.group(1)), int(m.group(2)), output)


def background_tcp(
    lab, ns: str, host: str, port: int, hold: float, src_port: int = 0
) -> Background:
    """A TCP session that echoes every 10 ms for `hold` seconds; .result() ends with
    HELD n echoes, BROKEN ... or MIXED ... (an echo that was not this client's)."""
    return Background(
        [
            lab.python()[0],
            "-m",
            "ovsnat.lab.peer",
            "tcp-client",
            host,
            str(port),
            "--timeout",
            "3",
            "--hold",
            str(hold),
            "--src-port",
            str(src_port),
        ],
        ns,
    )
