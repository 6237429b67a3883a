"""Issue 25 item 7, throughput with security groups on against off: bench.datapath's FIP and
PAT VMs on one host (vmf 10.0.0.11 with FIP 203.0.113.10, vmp 10.0.0.12 behind PAT via
203.0.113.11), iperf3 to and from the server namespace, in rounds that run the same cases
with the VMs in a default-like group and without any security key, back to back, in
alternating order; plus new TCP connections per second through PAT (each one is a new
connection in the port's security zone too).

The group is Neutron's default (egress open, ingress from the group's members) plus one
ingress rule for the inbound FIP traffic: TCP 5201-5202 (iperf3 and a control) from the
server's prefix. "Off"
removes the port keys and the bridge keys, which leaves the ports unfiltered as before issue
25. Each switch waits until the datapath shows it: with the group on, TCP 8081 on vmf through
its FIP is refused and TCP 5202 accepted; with it off, 8081 is accepted again.
"""

from __future__ import annotations

import statistics
import time

from bench.common import Controller, Result, say, spread
from bench.datapath import CONN_PORT, IPERF_PORT, NETLOAD, connects, iperf, spawn_ready
from ovsnat.lab import Lab
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import BRIDGE, SERVER_IP
from ovsnat.lab.traffic import start_server, tcp_connect

FIP, SNAT = "203.0.113.10", "203.0.113.11"
CLOSED_PORT = 8081  # a server on vmf that the group does not open
OPEN_PORT = IPERF_PORT + 1  # and one it opens (the positive control of the switch)
GROUP = (
    "d-in,in,4,any,-,g:default;d-out,out,4,any,-,-;"
    f"d-iperf,in,4,tcp,{IPERF_PORT}-{OPEN_PORT},p:198.51.100.0/24"
)
LABELS = {"fip in": "FIP server->VM", "fip out": "FIP VM->server", "pat out": "PAT VM->server"}
MEMBERS = "10.0.0.11,10.0.0.12"


def build(lab: Lab) -> dict:
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
    return {"fip": vmf, "pat": vmp}


def opens(lab: Lab, port: int) -> bool:
    return tcp_connect(lab, lab.srv_ns, FIP, port, timeout=0.5).ok


def switch(lab: Lab, vms: dict, on: bool) -> float:
    """Security groups on or off for both VMs; returns the seconds until the datapath shows
    it (the wait is bounded)."""
    h = lab.hosts["hv1"]
    t0 = time.monotonic()
    if on:
        h.vsctl(
            "--",
            "br-set-external-id",
            BRIDGE,
            "ovsnat-sg-default",
            GROUP,
            "--",
            "br-set-external-id",
            BRIDGE,
            "ovsnat-sgm-default",
            MEMBERS,
        )
        for vm in vms.values():
            h.vsctl("set", "Interface", vm.tap, "external_ids:ovsnat-sg=default")
    else:
        for vm in vms.values():
            h.vsctl("remove", "Interface", vm.tap, "external_ids", "ovsnat-sg")
        h.vsctl(
            "--",
            "br-set-external-id",
            BRIDGE,
            "ovsnat-sg-default",
            "--",
            "br-set-external-id",
            BRIDGE,
            "ovsnat-sgm-default",
        )
    wait_for(
        lambda: opens(lab, CLOSED_PORT) is not on and opens(lab, OPEN_PORT),
        15,
        interval=0.1,
        what=f"security groups {'on' if on else 'off'} in the datapath",
    )
    for role, addr in (("fip", FIP), ("pat", SNAT)):
        wait_for(
            lambda r=role, a=addr: (
                tcp_connect(lab, vms[r].ns, SERVER_IP, CONN_PORT - 1, timeout=0.5).peer_ip == a
            ),
            10,
            interval=0.1,
            what=f"{role} VM seen as {addr} by the server",
        )
    return time.monotonic() - t0


def sgdatapath(rounds: int = 5, seconds: float = 3.0, conn_seconds: float = 2.0) -> list[Result]:
    with Lab() as lab:
        lab.up()
        vms = build(lab)
        start_server(lab, "peer", lab.srv_ns, "tcp", CONN_PORT - 1)
        start_server(lab, "closed", vms["fip"].ns, "tcp", CLOSED_PORT)
        start_server(lab, "open", vms["fip"].ns, "tcp", OPEN_PORT)
        for where, ns in (("srv", lab.srv_ns), ("vmf", vms["fip"].ns)):
            spawn_ready(
                lab,
                f"iperf-{where}",
                ["iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush"],
                ns,
                "listening",
            )
        spawn_ready(  # a fresh server port per connect run (see bench.datapath)
            lab,
            "accept",
            [lab.python()[0], NETLOAD, "accept", *[str(CONN_PORT + r) for r in range(2 * rounds)]],
            lab.srv_ns,
            "READY",
        )
        cases = {
            "fip in": (lab.srv_ns, FIP),
            "fip out": (vms["fip"].ns, SERVER_IP),
            "pat out": (vms["pat"].ns, SERVER_IP),
        }
        gbps = {(c, on): [] for c in cases for on in (True, False)}
        cps = {True: [], False: []}
        switched = []
        hv1, port = lab.hosts["hv1"], CONN_PORT
        for r in range(rounds):
            for on in (True, False) if r % 2 == 0 else (False, True):
                switched.append(switch(lab, vms, on))
                for name in cases if r % 2 == 0 else reversed(cases):
                    gbps[(name, on)].append(iperf(*cases[name], seconds))
                hv1.appctl("dpctl/flush-conntrack")
                time.sleep(0.2)
                cps[on].append(connects(lab, vms["pat"].ns, port, conn_seconds))
                port += 1
                say(
                    f"  sg datapath round {r + 1}/{rounds} groups {'on ' if on else 'off'}: "
                    + ", ".join(f"{c} {gbps[(c, on)][-1]:.2f}" for c in cases)
                    + f" Gbit/s; PAT conn/s {cps[on][-1]:.0f}"
                )
    return results(gbps, cps, list(cases), rounds, seconds, conn_seconds, switched)


def results(gbps, cps, cases, rounds, seconds, conn_seconds, switched) -> list[Result]:
    out = []
    for case in cases:
        on, off = gbps[(case, True)], gbps[(case, False)]
        ratios = [a / b for a, b in zip(on, off, strict=True)]
        bench = f"sg datapath {LABELS[case]}"
        out.append(
            Result(
                bench,
                "iperf3 Gbit/s, groups on / off, medians",
                statistics.median(on),
                statistics.median(off),
                "Gbit/s",
                "ratio >= 0.8",
                {"value": spread(on), "baseline": spread(off), "rounds": rounds, "s": seconds},
            )
        )
        out.append(
            Result(
                bench,
                f"median of {rounds} per-round ratios on / off",
                statistics.median(ratios),
                1.0,
                "x",
                "ratio >= 0.8",
                {"ratios": spread(ratios)},
            )
        )
    ratios = [a / b for a, b in zip(cps[True], cps[False], strict=True)]
    out.append(
        Result(
            "sg datapath PAT new conns",
            "TCP connects/s through PAT, groups on / off, medians",
            statistics.median(cps[True]),
            statistics.median(cps[False]),
            "conn/s",
            "",
            {
                "value": spread(cps[True]),
                "baseline": spread(cps[False]),
                "per_round_ratios": spread(ratios),
                "s": conn_seconds,
                "switch_s": spread(switched),
            },
        )
    )
    return out
