"""Handoff: the throughput of a PAT session carried over a live migration (docs/handoff.md)
against a normal PAT session, on the same hosts in the same run.

    hv1, hv2  ovsnat's controller, fabric, handoff_vlan 4000; one PAT VM that moves between
              them every round

Each round: a normal session (iperf3 from the VM, through the NAT of the host it is on),
then a handed-off one: iperf3 starts, the VM moves to the other host after 1.5 s, and only
the seconds from 1 s after the move count (iperf3's per-second intervals). The ratio is the
median of the per-round ratios, so slow drift of the machine's load cancels out.
"""

from __future__ import annotations

import json
import statistics
import subprocess

from bench.common import Result, say, spread
from ovsnat.lab import Lab, scenario
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import ping

IPERF_PORT, MOVE_AT = 5201, 1.5
SNAT = {"hv1": "203.0.113.11", "hv2": "203.0.113.21"}


def _iperf(ns: str, seconds: float, move=None) -> list[float]:
    """Gbit/s of each one-second interval of an iperf3 run from ns; `move()` is called
    MOVE_AT seconds into it."""
    argv = [
        "ip",
        "netns",
        "exec",
        ns,
        "iperf3",
        "-c",
        SERVER_IP,
        "-p",
        str(IPERF_PORT),
        "-t",
        str(seconds),
        "-i",
        "1",
        "-J",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    if move is not None:
        try:
            proc.wait(MOVE_AT)
        except subprocess.TimeoutExpired:
            move()
    out, _ = proc.communicate(timeout=seconds + 30)
    data = json.loads(out)
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    return [i["sum"]["bits_per_second"] / 1e9 for i in data["intervals"]]


def handoff(rounds: int = 3, seconds: float = 6.0) -> list[Result]:
    with Lab() as lab:
        lab.up()
        for host in SNAT:
            lab.add_host(host, fabric=True)
        for host, snat in SNAT.items():
            scenario.start_controller(
                lab, host, snat, fabric_port="fabric", handoff_vlan=4000, handoff_grace=600
            )
        vm = lab.add_vm(
            "vmh", "hv1", "10.0.0.70", "02:00:0a:00:00:46", {"ovsnat-fixed-ip": "10.0.0.70"}
        )
        lab.spawn("iperf-srv", ["iperf3", "-s", "-p", str(IPERF_PORT)], ns=lab.srv_ns)
        wait_for(
            lambda: ping(vm.ns, SERVER_IP, count=1, wait=0.3).received,
            15,
            what="the VM to reach the server",
        )
        normal, handed = [], []
        for r in range(rounds):
            normal.append(statistics.mean(_iperf(vm.ns, seconds)))
            other = "hv2" if vm.host == "hv1" else "hv1"
            intervals = _iperf(vm.ns, seconds, move=lambda: lab.move_vm(vm, other))
            after = intervals[int(MOVE_AT) + 2 :]  # from 1 s after the move on
            handed.append(statistics.mean(after))
            say(
                f"  handoff round {r + 1}/{rounds}: normal PAT {normal[-1]:.2f} Gbit/s, "
                f"handed off {handed[-1]:.2f} Gbit/s"
            )
    ratios = [h / n for h, n in zip(handed, normal, strict=True)]
    return [
        Result(
            "handoff PAT session",
            "iperf3 Gbit/s, handed-off / normal PAT",
            statistics.median(handed),
            statistics.median(normal),
            "Gbit/s",
            "",
            {
                "value": spread(handed),
                "baseline": spread(normal),
                "ratios": spread(ratios),
                "rounds": rounds,
                "seconds_each": seconds,
            },
        )
    ]
