"""Issue 25 item 7, throughput with security groups on against off: two pairs of VMs on one
host (each a FIP VM and a PAT VM, as bench.datapath's), one pair in a default-like group, the
other without any security key (unfiltered, as before issue 25); each case runs through
both pairs back to back, in alternating order, and halfway through the pairs swap roles, so
neither a pair's own speed nor the shared machine's drift stays on one side. iperf3 to and
from the server namespace, and new TCP connections per second through PAT (each a new
connection in the port's security zone too).

The group is Neutron's default (egress open, ingress from the group's members) plus one
ingress rule for the inbound FIP traffic: TCP 5201-5202 (iperf3 and a control) from the
server's prefix. After each change of roles the datapath must show it before anything is
measured: TCP 8081 on the filtered FIP VM refused and 5202 accepted, 8081 on the other
accepted; each VM seen from the server by its FIP or the SNAT address.
"""

from __future__ import annotations

import json
import statistics
import time

from bench.common import Controller, Result, say, spread
from bench.datapath import CONN_MAX, CONN_PORT, IPERF_PORT, NETLOAD, iperf, spawn_ready
from ovsnat.lab import Lab
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import BRIDGE, SERVER_IP
from ovsnat.lab.traffic import start_server, tcp_connect

SNAT = "203.0.113.11"
PAIRS = {  # pair -> role -> (name, fixed IP, FIP)
    "a": {"fip": ("vmf", "10.0.0.11", "203.0.113.10"), "pat": ("vmp", "10.0.0.12", None)},
    "b": {"fip": ("vmf2", "10.0.0.13", "203.0.113.12"), "pat": ("vmp2", "10.0.0.14", None)},
}
CLOSED_PORT = 8081  # a server on each FIP VM that the group does not open
OPEN_PORT = IPERF_PORT + 1  # and one it opens (the positive control)
PEER_PORT = CONN_PORT - 1  # the server's, for the path checks
GROUP = (
    "d-in,in,4,any,-,g:default;d-out,out,4,any,-,-;"
    f"d-iperf,in,4,tcp,{IPERF_PORT}-{OPEN_PORT},p:198.51.100.0/24"
)
CASES = ("fip in", "fip out", "pat out")
LABELS = {"fip in": "FIP server->VM", "fip out": "FIP VM->server", "pat out": "PAT VM->server"}


def build(lab: Lab) -> dict:
    lab.add_host("hv1")
    ctl = Controller(lab, "hv1", SNAT, fip_activation="immediate")
    ctl.start()
    ctl.connect()
    ctl.wait_in_sync(60)
    vms = {}
    for pair, roles in PAIRS.items():
        for role, (name, ip, fip) in roles.items():
            mac = f"02:00:0a:00:00:{int(ip.rsplit('.', 1)[1]):02x}"
            keys = {"ovsnat-fixed-ip": ip, **({"ovsnat-fip": fip} if fip else {})}
            vms[(pair, role)] = lab.add_vm(name, "hv1", ip, mac, keys)
    return vms


def fip(pair: str) -> str:
    return PAIRS[pair]["fip"][2]


def opens(lab: Lab, pair: str, port: int) -> bool:
    return tcp_connect(lab, lab.srv_ns, fip(pair), port, timeout=0.5).ok


def filter_pair(lab: Lab, vms: dict, on: str, off: str) -> float:
    """Pair `on` in the group, pair `off` without security keys; the seconds until the
    datapath shows it."""
    h, t0 = lab.hosts["hv1"], time.monotonic()
    members = ",".join(ip for _, ip, _ in PAIRS[on].values())
    h.vsctl(
        *("--", "br-set-external-id", BRIDGE, "ovsnat-sg-default", GROUP),
        *("--", "br-set-external-id", BRIDGE, "ovsnat-sgm-default", members),
    )
    for role in ("fip", "pat"):
        h.vsctl("set", "Interface", vms[(on, role)].tap, "external_ids:ovsnat-sg=default")
        h.vsctl("remove", "Interface", vms[(off, role)].tap, "external_ids", "ovsnat-sg")
    wait_for(
        lambda: (
            not opens(lab, on, CLOSED_PORT)
            and opens(lab, on, OPEN_PORT)
            and opens(lab, off, CLOSED_PORT)
        ),
        15,
        interval=0.1,
        what=f"pair {on} filtered and pair {off} not, in the datapath",
    )
    for (pair, role), vm in vms.items():
        addr = fip(pair) if role == "fip" else SNAT
        wait_for(
            lambda vm=vm, addr=addr: (
                tcp_connect(lab, vm.ns, SERVER_IP, PEER_PORT, timeout=0.5).peer_ip == addr
            ),
            10,
            interval=0.1,
            what=f"{vm.name} seen as {addr} by the server",
        )
    return time.monotonic() - t0


def connects(lab: Lab, ns: str, port: int, seconds: float) -> dict:
    """bench.datapath's connect loop, its failed connects kept as data (a busy machine can
    make one miss its 1 s timeout; whether that happens on one side only is the point)."""
    proc = run(
        [lab.python()[0], NETLOAD, "connect", SERVER_IP, str(port), str(seconds), str(CONN_MAX)],
        ns=ns,
        timeout=seconds + 30,
    )
    out = json.loads(proc.stdout)
    return {"rate": out["connects"] / out["seconds"], "errors": out["errors"]}


def servers(lab: Lab, vms: dict, rounds: int) -> None:
    start_server(lab, "peer", lab.srv_ns, "tcp", PEER_PORT)
    spawn_ready(
        lab,
        "iperf-srv",
        ["iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush"],
        lab.srv_ns,
        "listening",
    )
    for pair in PAIRS:
        ns = vms[(pair, "fip")].ns
        start_server(lab, f"closed-{pair}", ns, "tcp", CLOSED_PORT)
        start_server(lab, f"open-{pair}", ns, "tcp", OPEN_PORT)
        spawn_ready(
            lab,
            f"iperf-{pair}",
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


def sgdatapath(rounds: int = 6, seconds: float = 3.0, conn_seconds: float = 2.0) -> list[Result]:
    gbps = {(c, on): [] for c in CASES for on in (True, False)}
    cps = {True: [], False: []}
    switched = []
    with Lab() as lab:
        lab.up()
        vms = build(lab)
        servers(lab, vms, rounds)
        hv1, port = lab.hosts["hv1"], CONN_PORT
        for r in range(rounds):
            if r in (0, rounds // 2):
                on, off = ("a", "b") if r == 0 else ("b", "a")
                switched.append(filter_pair(lab, vms, on, off))
                say(f"  sg datapath: pair {on} filtered, {off} not ({switched[-1]:.1f} s)")
            pairs = {True: on, False: off}
            for i, case in enumerate(CASES):
                for filtered in (True, False) if (r + i) % 2 == 0 else (False, True):
                    vm = vms[(pairs[filtered], case.split()[0])]
                    client, dst = (
                        (lab.srv_ns, fip(pairs[filtered]))
                        if case == "fip in"
                        else (vm.ns, SERVER_IP)
                    )
                    gbps[(case, filtered)].append(iperf(client, dst, seconds))
            for filtered in (True, False) if r % 2 == 0 else (False, True):
                hv1.appctl("dpctl/flush-conntrack")
                time.sleep(0.2)
                cps[filtered].append(
                    connects(lab, vms[(pairs[filtered], "pat")].ns, port, conn_seconds)
                )
                port += 1
            last = {k: v[-1] for k, v in gbps.items()}
            say(
                f"  sg datapath round {r + 1}/{rounds} on/off: "
                + ", ".join(f"{c} {last[(c, True)]:.2f}/{last[(c, False)]:.2f}" for c in CASES)
                + f" Gbit/s; PAT conn/s {cps[True][-1]['rate']:.0f}/{cps[False][-1]['rate']:.0f}"
            )
    return results(gbps, cps, rounds, seconds, conn_seconds, switched)


def results(gbps, cps, rounds, seconds, conn_seconds, switched) -> list[Result]:
    out = []
    for case in CASES:
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
                {"ratios": spread(ratios), "samples": {"on": on, "off": off}},
            )
        )
    rate = {k: [c["rate"] for c in v] for k, v in cps.items()}
    ratios = [a / b for a, b in zip(rate[True], rate[False], strict=True)]
    out.append(
        Result(
            "sg datapath PAT new conns",
            "TCP connects/s through PAT, groups on / off, medians",
            statistics.median(rate[True]),
            statistics.median(rate[False]),
            "conn/s",
            "",
            {
                "value": spread(rate[True]),
                "baseline": spread(rate[False]),
                "per_round_ratios": spread(ratios),
                "failed_connects": {
                    "on": [c["errors"] for c in cps[True]],
                    "off": [c["errors"] for c in cps[False]],
                },
                "s": conn_seconds,
                "switch_s": switched,
            },
        )
    )
    return out
