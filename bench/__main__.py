"""`make bench` (`python -m bench [options]`): ovsnat's benchmarks, each result a ratio against
a baseline measured in the same run, plus the raw numbers. Prints a table and writes
bench/results.json. Needs root, like the lab.

    python -m bench                          the full suite (about 30 minutes on 2 cores)
    python -m bench --quick                  small sizes, short runs (about 3 minutes)
    python -m bench --only cold,restart      some benchmarks: cold restart events memory audit
                                             datapath handoff connlimit stall
    python -m bench --sizes 1000,10000       cold program sizes; the largest also serves
                                             restart, events (its big side) and memory
    python -m bench --port-types patch       scale hosts with patch ports only (faster)
    python -m bench --only stall --stall-vms 1000   the loop's stalls under a handoff
    python -m bench --only sgflows,sgcold,sgdatapath   security groups (issue 25)
    python -m bench --only metadata          the metadata proxy (issue 29): latency against
                                             Nova's metadata API on the OpenStack lab, memory
                                             at 1,000 VMs against 10 (about 3 minutes)
    python -m bench --only bgp               bgp mode's control plane with real FRR (issue
                                             30): a route to the ToR, 1,000 FIPs at once,
                                             a migration's next hop (about 2 minutes)
    python -m bench --only bgpmoves          bgp mode with ovsnat's controllers (issue 30):
                                             live migrations' next hop against fresh FIPs,
                                             FRR restarts on a host (about 3 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time

from bench import (
    bgp,
    bgp_moves,
    cold,
    connlimit,
    datapath,
    events,
    handoff,
    memory,
    metadata,
    metadata_memory,
    sgcold,
    sgdatapath,
    sgflows,
    stall,
)
from bench.common import Result, say

ALL = (
    "cold",
    "restart",
    "events",
    "memory",
    "audit",
    "datapath",
    "handoff",
    "connlimit",
    "stall",
    "sgflows",
    "sgcold",
    "sgdatapath",
    "metadata",
    "bgp",
    "bgpmoves",
)
HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="sizes 200,1000; 100 additions; 2 datapath rounds of 1.5 s",
    )
    p.add_argument("--only", default=",".join(ALL), help="comma-separated: " + " ".join(ALL))
    p.add_argument("--sizes", help="VMs per cold program run (default 1000,5000,10000)")
    p.add_argument("--additions", type=int, help="port additions per event run (1000)")
    p.add_argument(
        "--event-base",
        type=int,
        default=100,
        help="VMs already present on the small side of the event benchmark",
    )
    p.add_argument(
        "--event-budget",
        type=float,
        help="seconds for the additions on the big side (180): with N ports, "
        "ovs-vswitchd itself takes O(N) per port added",
    )
    p.add_argument(
        "--port-types",
        default="dummy,patch",
        help="VM ports of the scale hosts, each type a full set of scale runs: "
        "dummy (type=dummy on a dummy-enabled ovs-vswitchd) and/or patch "
        "(peerless patch ports: no datapath port, so ovs-vswitchd's main loop "
        "does not poll them)",
    )
    p.add_argument(
        "--networks",
        type=int,
        default=0,
        help="deal the VMs of the cold/restart runs over this many VLAN networks "
        "with the same CIDR (0: all in the default network)",
    )
    p.add_argument(
        "--stall-vms",
        type=int,
        help="PAT VMs on the host a VM leaves in the stall benchmark (10000)",
    )
    p.add_argument("--rounds", type=int, help="datapath A/B rounds (5), also sgdatapath's")
    p.add_argument("--sg-ports", type=int, default=1000, help="VMs of the sgcold host (1000)")
    p.add_argument(
        "--sg-profiles",
        default="1,100",
        help="sgcold: distinct group triples the VMs are dealt over, one run each (1,100)",
    )
    p.add_argument("--sg-rounds", type=int, help="sgcold: starts with and without groups (3)")
    p.add_argument("--seconds", type=float, help="seconds per iperf3 run (3)")
    p.add_argument("--conn-seconds", type=float, help="seconds per connect loop (2)")
    p.add_argument(
        "--metadata-requests",
        type=int,
        help="metadata: requests through the proxy, and as many straight to Nova (300)",
    )
    p.add_argument(
        "--metadata-vms",
        type=int,
        default=1000,
        help="metadata: VM ports of the proxy's big host, on a tenth as many networks (1000)",
    )
    p.add_argument("--metadata-rounds", type=int, help="metadata: memory rounds per host (2)")
    p.add_argument("--bgp-rounds", type=int, help="bgp: routes announced one at a time (100)")
    p.add_argument("--bgp-fips", type=int, help="bgp: FIPs plugged at once (1000)")
    p.add_argument("--bgp-moves", type=int, help="bgpmoves: migrations and fresh FIPs (30)")
    p.add_argument("--frr-restarts", type=int, help="bgpmoves: FRR restarts on a host (5)")
    p.add_argument("--out", default=os.path.join(HERE, "results.json"))
    a = p.parse_args(argv)
    quick = a.quick
    a.sizes = [int(s) for s in (a.sizes or ("200,1000" if quick else "1000,5000,10000")).split(",")]
    a.additions = a.additions or (100 if quick else 1000)
    a.event_budget = a.event_budget or (30 if quick else 180)
    a.rounds = a.rounds or (2 if quick else 5)
    a.stall_vms = a.stall_vms if a.stall_vms is not None else (1000 if quick else 10000)
    a.seconds = a.seconds or (1.5 if quick else 3.0)
    a.conn_seconds = a.conn_seconds or (1.0 if quick else 2.0)
    a.sg_rounds = a.sg_rounds or (1 if quick else 3)
    a.metadata_requests = a.metadata_requests or (50 if quick else 300)
    a.metadata_rounds = a.metadata_rounds or (1 if quick else 2)
    a.bgp_rounds = a.bgp_rounds or (20 if quick else 100)
    a.bgp_fips = a.bgp_fips or (200 if quick else 1000)
    a.bgp_moves = a.bgp_moves or (5 if quick else 30)
    a.frr_restarts = a.frr_restarts or (2 if quick else 5)
    a.sg_profiles = [int(x) for x in a.sg_profiles.split(",") if x.strip()]
    a.only = [b.strip() for b in a.only.split(",") if b.strip()]
    a.port_types = [t.strip() for t in a.port_types.split(",") if t.strip()]
    if set(a.port_types) - {"dummy", "patch"}:
        p.error("--port-types: dummy and/or patch")
    unknown = set(a.only) - set(ALL)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    return a


def machine() -> dict:
    def out(*argv):
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, cwd=os.path.dirname(HERE)
            ).stdout.strip()
        except OSError:
            return ""

    with open("/proc/meminfo") as f:
        mem_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return {
        "nproc": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ovs": out("ovs-vswitchd", "--version").splitlines()[0],
        "commit": out("git", "rev-parse", "--short", "HEAD")
        + ("+dirty" if out("git", "status", "--porcelain", "--untracked-files=no") else ""),
    }


def fmt(x, unit: str) -> str:
    if x is None:
        return "-"
    if unit == "s":
        return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.3f} s"
    if unit in ("MB", "Gbit/s", "x", "%"):
        return f"{x:.2f} {unit}"
    return f"{x:.0f} {unit}"


def table(results: list[Result]) -> str:
    rows = [("benchmark", "metric", "ovsnat", "baseline", "ratio", "target", "")]
    for r in results:
        value, base = fmt(r.value, r.unit), fmt(r.baseline, r.unit)
        if "min" in r.raw.get("value", {}):  # interleaved runs: show the spread
            v, b = r.raw["value"], r.raw["baseline"]
            value += f" [{v['min']:.2f}-{v['max']:.2f}]"
            base += f" [{b['min']:.2f}-{b['max']:.2f}]"
        if "min" in r.raw.get("ratios", {}):  # per-round ratios: their spread
            value += f" [{r.raw['ratios']['min']:.2f}-{r.raw['ratios']['max']:.2f}]"
        rows.append(
            (
                r.bench,
                r.metric,
                value,
                base,
                "-" if r.ratio is None else f"{r.ratio:.2f}",
                r.target or "-",
                {True: "ok", False: "MISS", None: ""}[r.met],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def main(argv=None) -> int:
    a = parse_args(argv)
    # SIGTERM (a timeout, CI) unwinds like Ctrl-C, so every lab is torn down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        sys.exit("bench: needs root (network namespaces, Open vSwitch): run `make bench`")
    t_start = time.monotonic()
    results: list[Result] = []
    raw: dict = {
        "args": {k: v for k, v in vars(a).items() if k != "out"},
        "seconds": {},
        "loadavg_at_start": os.getloadavg(),
    }
    big, idle = max(a.sizes), None
    with_big = {"restart", "events", "memory", "audit"} & set(a.only)

    def timed(name, fn, *args, **kw):
        say(f"== {name}")
        t0 = time.monotonic()
        value = fn(*args, **kw)
        raw["seconds"][name] = round(time.monotonic() - t0, 1)
        return value

    for port_type in a.port_types:
        for n in sorted(a.sizes):
            if "cold" not in a.only and not (n == big and with_big):
                continue
            at_big = n == big
            res, data = timed(
                f"scale N={n} {port_type}",
                cold.scale,
                n,
                restart=at_big and "restart" in a.only,
                memory=at_big and "memory" in a.only,
                audit=at_big and "audit" in a.only,
                additions=a.additions if at_big and "events" in a.only else 0,
                budget=a.event_budget,
                port_type=port_type,
                networks=a.networks,
            )
            results += res
            raw[f"scale N={n} {port_type}"] = {k: v for k, v in data.items() if k != "additions"}
            if at_big and "events" in a.only:
                small = timed(
                    f"events N={a.event_base} {port_type}",
                    events.base_run,
                    a.event_base,
                    a.additions,
                    port_type,
                )
                raw[f"events {port_type}"] = {
                    "small": events.summary(small),
                    "big": events.summary(data["additions"]),
                    "samples": {"small": small, "big": data["additions"]},
                }
                results += events.results(small, data["additions"], port_type)
            if at_big and "memory" in a.only:
                idle = idle or timed("memory idle", memory.idle_rss_kb)
                results += memory.results(n, data["rss_kb"], idle, port_type)
    if "datapath" in a.only:
        results += timed("datapath", datapath.datapath, a.rounds, a.seconds, a.conn_seconds)
    if "handoff" in a.only:
        results += timed("handoff", handoff.handoff, 2 if a.quick else 3)
    if "connlimit" in a.only:
        results += timed("connlimit", connlimit.connlimit, 2 if a.quick else 3)

    if "stall" in a.only:
        results += timed("stall", stall.stall, a.stall_vms)
    if "sgflows" in a.only:
        results += timed("sgflows", sgflows.sgflows)
    if "sgcold" in a.only:
        for profiles in a.sg_profiles:
            results += timed(
                f"sgcold profiles={profiles}",
                sgcold.sgcold,
                a.sg_ports,
                a.sg_rounds,
                profiles,
                members=a.sg_ports + 1000,
            )
    if "sgdatapath" in a.only:
        results += timed("sgdatapath", sgdatapath.sgdatapath, a.rounds, a.seconds, a.conn_seconds)
    if "metadata" in a.only:
        res, raw["metadata memory"] = timed(
            "metadata memory",
            metadata_memory.memory,
            a.metadata_vms,
            max(1, a.metadata_vms // 10),
            a.metadata_rounds,
        )
        results += res
        res, raw["metadata latency"] = timed(
            "metadata latency", metadata.latency, a.metadata_requests
        )
        results += res
    if "bgp" in a.only:
        results += timed("bgp announce", bgp.announce, a.bgp_rounds)
        results += timed("bgp bulk", bgp.bulk, a.bgp_fips)
    if "bgpmoves" in a.only:
        results += timed("bgp migration", bgp_moves.moves, a.bgp_moves)
        results += timed("bgp FRR restart", bgp_moves.frr_restarts, a.frr_restarts)

    total = time.monotonic() - t_start
    raw["loadavg_at_end"] = os.getloadavg()
    say("\n" + table(results))
    say(
        f"\n{len(results)} results in {total:.0f} s; "
        f"{sum(r.met is False for r in results)} miss their target"
    )
    doc = {
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "total_seconds": round(total, 1),
        "results": [r.as_dict() for r in results],
        "raw": raw,
    }
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    say(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
