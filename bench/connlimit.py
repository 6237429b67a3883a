"""Connection limits: what counting each PAT VM's connections (conn_limit) costs, as
throughput and new connections per second against the same PAT without a limit, on two
hosts of one lab, in interleaved rounds.

    hv1  ovsnat, no limit;               vmu (PAT)
    hv2  ovsnat, conn_limit 100000;      vml (PAT), the same addresses on another host
"""

from __future__ import annotations

import statistics

from bench.common import Result, say, spread
from bench.datapath import CONN_PORT, IPERF_PORT, NETLOAD, connects, iperf, spawn_ready
from ovsnat.lab import Lab, scenario
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import ping

SNAT = {"hv1": "203.0.113.11", "hv2": "203.0.113.21"}


def connlimit(rounds: int = 3, seconds: float = 3.0, conn_seconds: float = 2.0) -> list[Result]:
    with Lab() as lab:
        lab.up()
        vms = {}
        for host, limit in (("hv1", 0), ("hv2", 100000)):
            lab.add_host(host)
            scenario.start_controller(lab, host, SNAT[host], conn_limit=limit)
            vms[host] = lab.add_vm(
                f"vm{host[-1]}",
                host,
                "10.0.0.12",
                "02:00:0a:00:00:0c",
                {"ovsnat-fixed-ip": "10.0.0.12"},
            )
        for vm in vms.values():
            wait_for(
                lambda: ping(vm.ns, SERVER_IP, count=1, wait=0.3).received,
                15,
                what=f"{vm.name} to reach the server",
            )
        spawn_ready(
            lab,
            "iperf-srv",
            ["iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush"],
            lab.srv_ns,
            "listening",
        )
        spawn_ready(
            lab,
            "accept",
            [lab.python()[0], NETLOAD, "accept", *[str(CONN_PORT + r) for r in range(2 * rounds)]],
            lab.srv_ns,
            "READY",
        )
        gbps, cps = {"hv1": [], "hv2": []}, {"hv1": [], "hv2": []}
        for r in range(rounds):
            order = ("hv1", "hv2") if r % 2 == 0 else ("hv2", "hv1")
            for i, host in enumerate(order):
                gbps[host].append(iperf(vms[host].ns, SERVER_IP, seconds))
                cps[host].append(connects(lab, vms[host].ns, CONN_PORT + 2 * r + i, conn_seconds))
            say(
                f"  connlimit round {r + 1}/{rounds}: PAT {gbps['hv1'][-1]:.2f} Gbit/s, "
                f"{cps['hv1'][-1]:.0f} conn/s; limited {gbps['hv2'][-1]:.2f} Gbit/s, "
                f"{cps['hv2'][-1]:.0f} conn/s"
            )
    ratio = [a / b for a, b in zip(gbps["hv2"], gbps["hv1"], strict=True)]
    cratio = [a / b for a, b in zip(cps["hv2"], cps["hv1"], strict=True)]
    return [
        Result(
            "conn_limit PAT throughput",
            "iperf3 Gbit/s, limited / unlimited PAT",
            statistics.median(gbps["hv2"]),
            statistics.median(gbps["hv1"]),
            "Gbit/s",
            "",
            {"ratios": spread(ratio), "rounds": rounds},
        ),
        Result(
            "conn_limit PAT new conns",
            "TCP connects/s, limited / unlimited PAT",
            statistics.median(cps["hv2"]),
            statistics.median(cps["hv1"]),
            "conn/s",
            "",
            {"ratios": spread(cratio), "rounds": rounds},
        ),
    ]
