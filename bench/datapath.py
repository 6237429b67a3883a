"""Datapath: throughput through ovsnat's static NAT (FIP) and PAT, and new TCP connections per
second through PAT, each against a baseline host in the same lab, as interleaved A/B runs.

    hv1  ovsnat's controller; vmf (FIP 203.0.113.10) and vmp (PAT via 203.0.113.11)
    hv2  plain forwarding, ovs-ofctl flows in_port=VM -> uplink and back; vml 10.0.0.50
    hv3  a minimal conntrack pipeline: ct(commit,zone=1) both ways; vmc 10.0.0.60

vml and vmc reach the server through the outside router, which gets 10.0.0.254/24 on the
external segment for them (as tests/test_lab.py does). Every path crosses the same
namespaces: VM, one host's userspace datapath, the external bridge, the router, the server.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from bench.common import Controller, Result, say, spread
from ovsnat.lab import Lab
from ovsnat.lab.sh import LabError, run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import start_server, tcp_connect

FIP, SNAT = "203.0.113.10", "203.0.113.11"
ROUTER_ON_VM_NET = "10.0.0.254"
IPERF_PORT, CONN_PORT, PEER_PORT = 5201, 9000, 8080
CONN_MAX = 8000
NETLOAD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netload.py")


def build(lab: Lab) -> dict:
    """The three hosts and their VMs; returns the VMs by role."""
    lab.add_host("hv1")
    ctl = Controller(lab, "hv1", SNAT, fip_activation="immediate")
    ctl.start()
    ctl.connect()
    ctl.wait_in_sync(60)
    vmf = lab.add_vm(
        "vmf",
        "hv1",
        "10.0.0.11",
        "02:00:0a:00:00:0b",
        {"ovsnat-fixed-ip": "10.0.0.11", "ovsnat-fip": FIP},
    )
    vmp = lab.add_vm(
        "vmp", "hv1", "10.0.0.12", "02:00:0a:00:00:0c", {"ovsnat-fixed-ip": "10.0.0.12"}
    )
    run(["ip", "-n", lab.out_ns, "addr", "add", f"{ROUTER_ON_VM_NET}/24", "dev", "eth0"])
    vml = baseline_vm(lab, "hv2", "vml", "10.0.0.50", "02:00:0a:00:00:32", ct=False)
    vmc = baseline_vm(lab, "hv3", "vmc", "10.0.0.60", "02:00:0a:00:00:3c", ct=True)
    return {"fip": vmf, "pat": vmp, "plain": vml, "ct": vmc}


def baseline_vm(lab: Lab, host: str, name: str, ip: str, mac: str, ct: bool):
    h = lab.add_host(host)
    vm = lab.add_vm(name, host, ip, mac, boot=False)
    run(["ip", "-n", vm.ns, "route", "replace", "default", "via", ROUTER_ON_VM_NET])
    up, port = h.ofport("uplink"), h.ofport(vm.tap)
    flows = [
        f"priority=5,in_port={up},actions=output:{port}",
        f"priority=5,in_port={port},actions=output:{up}",
    ]
    if ct:
        flows += [
            f"priority=10,ip,in_port={up},actions=ct(commit,zone=1),output:{port}",
            f"priority=10,ip,in_port={port},actions=ct(commit,zone=1),output:{up}",
        ]
    h.install_flows("\n".join(flows) + "\n")
    return vm


def check_paths(lab: Lab, vms: dict) -> None:
    """Each VM reaches the server, seen from the address its path should give it."""
    start_server(lab, "peer", lab.srv_ns, "tcp", PEER_PORT)
    want = {"fip": FIP, "pat": SNAT, "plain": vms["plain"].ip, "ct": vms["ct"].ip}
    for role, addr in want.items():
        ok = wait_for(
            lambda: (
                tcp_connect(lab, vms[role].ns, SERVER_IP, PEER_PORT, timeout=0.5).peer_ip == addr
            ),
            10,
            interval=0.1,
            what=f"{role} VM seen as {addr} by the server",
        )
        assert ok


def iperf(ns: str, dst: str, seconds: float) -> float:
    """Gbit/s received by an iperf3 server at dst from a client in ns."""
    proc = run(
        ["iperf3", "-c", dst, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"],
        ns=ns,
        timeout=seconds + 30,
    )
    return json.loads(proc.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


def connects(lab: Lab, ns: str, port: int, seconds: float) -> float:
    """New TCP connections per second from ns to the server (connect, close, repeat). At
    most CONN_MAX per run: each holds one of the 10,000 PAT ports until conntrack expires
    it."""
    proc = run(
        [lab.python()[0], NETLOAD, "connect", SERVER_IP, str(port), str(seconds), str(CONN_MAX)],
        ns=ns,
        timeout=seconds + 30,
    )
    out = json.loads(proc.stdout)
    if out["errors"]:
        raise LabError(f"{out['errors']} failed connects from {ns}")
    return out["connects"] / out["seconds"]


def spawn_ready(lab: Lab, name: str, argv: list[str], ns: str, ready: str) -> None:
    lab.spawn(name, argv, ns=ns)
    wait_for(lambda: ready in Path(lab.procs[name]["log"]).read_text(), 10, what=f"{name} ready")


def datapath(rounds: int = 5, seconds: float = 3.0, conn_seconds: float = 2.0) -> list[Result]:
    with Lab() as lab:
        lab.up()
        vms = build(lab)
        check_paths(lab, vms)
        for where, ns in (("srv", lab.srv_ns), ("vmf", vms["fip"].ns), ("vml", vms["plain"].ns)):
            spawn_ready(
                lab,
                f"iperf-{where}",
                ["iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush"],
                ns,
                "listening",
            )
        # A fresh server port each round: after the conntrack flush, PAT reuses its source
        # ports, and the server still holds those 4-tuples in TIME_WAIT.
        spawn_ready(
            lab,
            "accept",
            [lab.python()[0], NETLOAD, "accept", *[str(CONN_PORT + r) for r in range(rounds)]],
            lab.srv_ns,
            "READY",
        )
        srv, plain_ip = lab.srv_ns, vms["plain"].ip
        cases = {  # name -> (client ns, destination)
            "plain in": (srv, plain_ip),
            "fip in": (srv, FIP),
            "plain out": (vms["plain"].ns, SERVER_IP),
            "fip out": (vms["fip"].ns, SERVER_IP),
            "pat out": (vms["pat"].ns, SERVER_IP),
        }
        gbps = {name: [] for name in cases}
        cps = {"pat": [], "ct": []}
        hv1, hv3 = lab.hosts["hv1"], lab.hosts["hv3"]
        for r in range(rounds):
            order = list(cases) if r % 2 == 0 else list(reversed(cases))
            for name in order:
                gbps[name].append(iperf(*cases[name], seconds))
            for kind in ("pat", "ct") if r % 2 == 0 else ("ct", "pat"):
                hv1.appctl("dpctl/flush-conntrack", "zone=65000")
                hv3.appctl("dpctl/flush-conntrack", "zone=1")
                time.sleep(0.2)
                cps[kind].append(connects(lab, vms[kind].ns, CONN_PORT + r, conn_seconds))
            say(
                f"  datapath round {r + 1}/{rounds}: "
                + ", ".join(f"{n} {v[-1]:.2f}" for n, v in gbps.items())
                + " Gbit/s; "
                f"conn/s PAT {cps['pat'][-1]:.0f}, ct {cps['ct'][-1]:.0f}"
            )
    return results(gbps, cps, rounds, seconds, conn_seconds)


def results(gbps: dict, cps: dict, rounds: int, seconds: float, conn_seconds: float):
    med = {
        k: statistics.median(v)
        for k, v in {**gbps, **{f"cps {k}": v for k, v in cps.items()}}.items()
    }

    def row(bench, metric, a, b, unit, target):
        runs = {**gbps, "cps pat": cps["pat"], "cps ct": cps["ct"]}
        return Result(
            bench,
            metric,
            med[a],
            med[b],
            unit,
            target,
            {
                "value": spread(runs[a]),
                "baseline": spread(runs[b]),
                "rounds": rounds,
                "seconds_each": seconds if unit != "conn/s" else conn_seconds,
            },
        )

    def paired(bench, a, b, target):
        """The median of per-round ratios: each round ran a and b back to back, so slow
        drift of the shared machine's load cancels out of each ratio."""
        ratios = [x / y for x, y in zip(gbps[a], gbps[b], strict=True)]
        return Result(
            bench,
            f"median of {len(ratios)} per-round ratios {a} / {b}",
            statistics.median(ratios),
            1.0,
            "x",
            target,
            {"ratios": spread(ratios)},
        )

    return [
        row(
            "datapath FIP server->VM",
            "iperf3 Gbit/s, FIP / plain L2",
            "fip in",
            "plain in",
            "Gbit/s",
            "ratio >= 0.95",
        ),
        paired("datapath FIP server->VM", "fip in", "plain in", "ratio >= 0.95"),
        row(
            "datapath FIP VM->server",
            "iperf3 Gbit/s, FIP / plain L2",
            "fip out",
            "plain out",
            "Gbit/s",
            "ratio >= 0.95",
        ),
        paired("datapath FIP VM->server", "fip out", "plain out", "ratio >= 0.95"),
        row(
            "datapath PAT VM->server",
            "iperf3 Gbit/s, PAT / plain L2",
            "pat out",
            "plain out",
            "Gbit/s",
            "ratio >= 0.8",
        ),
        paired("datapath PAT VM->server", "pat out", "plain out", "ratio >= 0.8"),
        row(
            "datapath PAT new conns",
            "TCP connects/s, PAT / ct(commit) pipeline",
            "cps pat",
            "cps ct",
            "conn/s",
            "",
        ),
    ]
