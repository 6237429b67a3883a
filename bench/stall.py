"""Stall: can the controller's own work hold up its event loop? Its longest stall and its
longest event handler run while a PAT VM's sessions are handed off (docs/handoff.md) with
10,000 connections in the conntrack of the host it left, against the same controller,
conntrack and VMs in an equal window before the VM moved.

    hv1   ovsnat's controller with `vms` PAT VMs (patch ports, bulk) plus two real VMs:
          `gen` opens 10,000 UDP flows through PAT (10,000 conntrack entries in the PAT
          zone), `vmh` holds a TCP session and moves to hv2
    hv2   ovsnat's controller, fabric, handoff_vlan 4000

The numbers come from the controller itself (ovsnat.runtime.loopmeter.LoopMeter, its status file):
`loop_stalls` (a green thread ran without yielding, every other one waited) and
`slow_handlers` (one event handler's run, wall time), each over 5 ms with its time. While
the departure lasts, hv1 reads its conntrack every 2 s to see whether the VM's sessions
are over; with metrics on it also reads the PAT zone's usage every 5 s.
"""

from __future__ import annotations

import time

from bench.common import Result, say
from ovsnat.lab import Lab, bulk, scenario
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import Background, start_server, tcp_connect, tcp_established
from ovsnat.runtime.loopmeter import KEPT_MS

SNAT = {"hv1": "203.0.113.11", "hv2": "203.0.113.21"}
ENTRIES, WINDOW, METRICS = 10_000, 15.0, 9103
OPTIONS = {
    "internal_cidr": "10.0.0.0/16",
    "fabric_port": "fabric",
    "handoff_vlan": 4000,
    "handoff_grace": 600,
    "snat_port_max": 49999,
    "metrics_port": METRICS,
    "audit_interval": 0,
}  # the audit's cost has its own benchmark (bench audit)
FLOOD = """
import socket, sys
first, n, dst = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for port in range(first, first + n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.sendto(b"x", (dst, 9))
    s.close()
"""


def stall(vms: int = 10_000) -> list[Result]:
    with Lab() as lab:
        lab.up()
        hv1 = lab.add_host("hv1", fabric=True)
        lab.add_host("hv2", fabric=True)
        try:
            return _run(lab, hv1, vms)
        finally:
            if vms:
                bulk.stop_big_host(hv1)


def _run(lab, hv1, vms: int) -> list[Result]:
    if vms:
        took = bulk.add_ports(
            hv1, [bulk.vm_spec(i, fip=False) for i in range(vms)], port_type="patch"
        )
        say(f"  {vms} PAT VMs (patch ports) on hv1 in {took:.1f} s")
    for host, snat in SNAT.items():
        scenario.start_controller(lab, host, snat, **OPTIONS)
    for host in SNAT:
        scenario.wait_in_sync(lab, host, timeout=300)
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    gen = lab.add_vm("gen", "hv1", "10.0.0.6", "02:00:0a:00:00:06", {"ovsnat-fixed-ip": "10.0.0.6"})
    vmh = lab.add_vm("vmh", "hv1", "10.0.0.5", "02:00:0a:00:00:05", {"ovsnat-fixed-ip": "10.0.0.5"})
    for vm in (gen, vmh):
        wait_for(
            lambda: tcp_connect(lab, vm.ns, SERVER_IP, 8080, timeout=0.5).ok,
            30,
            what=f"{vm.name} to reach the server",
        )
    entries = flood(lab, gen, hv1)
    say(f"  hv1's conntrack holds {entries} entries")
    idle = window(lab, "idle")
    session = Background(
        lab.python()
        + [  # as background_tcp, patient: the move
            "-m",
            "ovsnat.lab.peer",
            "tcp-client",
            SERVER_IP,
            "8080",
            "--timeout",
            "30",
            "--hold",
            str(WINDOW + 20),
        ],
        vmh.ns,
    )  # itself takes seconds at 10,000 ports
    wait_for(lambda: tcp_established(vmh.ns, SERVER_IP, 8080), 5, what="the session")
    flood(lab, gen, hv1)  # refreshed: UDP entries live 60 s
    t_move = time.time()
    lab.move_vm(vmh, "hv2")
    say(f"  vmh moved to hv2 in {time.time() - t_move:.1f} s")
    wait_for(
        lambda: vmh.tap in scenario.status(lab, "hv1").get("handoffs", {}),
        10,
        what="hv1's status to show the departure",
    )
    handed = window(lab, "handoff", start=t_move)
    left = scenario.status(lab, "hv1").get("handoffs", {}).get(vmh.tap, {})
    out = session.result()
    label = f"stall N={vms} PAT handoff, {entries} conntrack entries"
    raw = {
        "vms": vms,
        "entries": entries,
        "idle": idle,
        "handoff": handed,
        "departure_at_end": left,
        "session": out.splitlines()[-1:] if out else [],
    }
    if "HELD" not in out or left.get("role") != "left":
        raise RuntimeError(f"the handoff did not last the window: {left}, session: {out}")
    return [
        Result(
            label,
            "longest loop stall (ms): during the handoff / before it",
            handed["max_stall_ms"],
            idle["max_stall_ms"],
            "ms",
            "value <= 50",
            raw,
        ),
        Result(
            label,
            "longest event handler run (ms): during the handoff / before it",
            handed["max_handler_ms"],
            idle["max_handler_ms"],
            "ms",
            "value <= 50",
        ),
    ]


def flood(lab, vm, host) -> int:
    """ENTRIES UDP flows from `vm` through PAT (each a conntrack entry for 60 s); returns
    how many entries hv1's conntrack holds in all. The datapath drops some of a burst
    (its veth's receive queue): sent again until all are there (a datagram of a flow
    conntrack holds already only refreshes it)."""

    def holds() -> int:
        return host.appctl("dpctl/dump-conntrack").count("\n")

    for _ in range(10):
        run(lab.python() + ["-c", FLOOD, "30000", str(ENTRIES), SERVER_IP], ns=vm.ns, timeout=120)
        time.sleep(0.5)
        if holds() >= ENTRIES:
            return holds()
    raise RuntimeError(f"hv1's conntrack holds {holds()} entries, not {ENTRIES}")


def window(lab, name: str, start: float | None = None) -> dict:
    """WINDOW seconds of the controller's own measurements on hv1 (from `start`)."""
    t0 = start or time.time()
    time.sleep(max(0.0, t0 + WINDOW - time.time()))
    t1 = time.time()
    time.sleep(1.5)  # the status file is rewritten every 1 s
    st = scenario.status(lab, "hv1")
    stalls = [s for s in st.get("loop_stalls", []) if t0 <= s[0] <= t1]
    handlers = [h for h in st.get("slow_handlers", []) if t0 <= h[0] <= t1]
    # Under KEPT_MS nothing is listed: the window's worst is below it (and below the
    # status's own worst of the last 30-60 s).
    result = {
        "seconds": round(t1 - t0, 1),
        "max_stall_ms": max(
            [s[1] for s in stalls], default=min(KEPT_MS, st.get("loop_max_stall_ms", KEPT_MS))
        ),
        "max_handler_ms": max(
            [h[1] for h in handlers], default=min(KEPT_MS, st.get("handler_max_ms", KEPT_MS))
        ),
        "stalls": stalls,
        "handlers": handlers,
    }
    say(
        f"  {name}: longest stall {result['max_stall_ms']} ms, longest handler "
        f"{result['max_handler_ms']} ms ({len(stalls)} stalls and {len(handlers)} handler "
        f"runs over {KEPT_MS:.0f} ms: {sorted({h[2] for h in handlers})})"
    )
    return result
