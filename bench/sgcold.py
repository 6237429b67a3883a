"""Issue 25 item 7, cold program with security groups against the same ports without: one lab
host with N VM ports (patch ports, as bench.cold), the real controller started cold on it in
turn with the security keys of bench.sgconfig and without any (the ports unfiltered, as
before issue 25), `rounds` times each, alternating, in one run.

Each cold start is bench.cold's: the controller starts, reads OVSDB and builds the desired
state (its status file shows N VMs), then br-int is pointed at it; timed are the controller's
own `in sync` line (datapath connected -> barrier after the last flow_mod), set-controller ->
every flow visible to `ovs-ofctl dump-aggregate`, and process start -> state built (the
status file, rewritten once a second: +-1 s). The state building is also timed in this
process (the controller's code path: HostState with the bridge's groups, then each port),
CPU seconds, without the second's granularity. After each start the switch's flows are
dumped (their number checked against the compiler's), re-installed with `ovs-ofctl --bundle
add-flows` (timed: the switch's own cost for the same flows), then the Controller row is
removed, which flushes them, and the keys are changed for the next start.
"""

from __future__ import annotations

import json
import os
import statistics
import time

from bench import cold as bench_cold
from bench.common import Controller, Result, say, spread
from bench.sgconfig import bridge_keys, desired_state, port_keys
from ovsnat.compile.compiler import compile_state
from ovsnat.core.state import HostState
from ovsnat.lab import Lab, bulk
from ovsnat.lab.sh import run
from ovsnat.lab.topology import BRIDGE

PER_TXN = 200  # ports per ovsdb-client transaction (one argument: at most 128 KiB)


def transact(host, ops: list[dict]) -> None:
    if not ops:
        return
    run(
        [
            "ovsdb-client",
            "transact",
            f"unix:{host.ovs.db_sock}",
            json.dumps(["Open_vSwitch", *ops]),
        ],
        env=host.ovs.env,
        timeout=120,
    )


def set_map(table: str, name: str, drop: list[str], put: dict[str, str]) -> list[dict]:
    """Mutations of a row's external_ids: delete `drop` keys, then insert `put` (OVSDB's map
    insert keeps an existing key's value, so a changed key is deleted first)."""
    where = [["name", "==", name]]
    ops = []
    gone = sorted(set(drop) | set(put))
    if gone:
        ops.append(
            {
                "op": "mutate",
                "table": table,
                "where": where,
                "mutations": [["external_ids", "delete", ["set", gone]]],
            }
        )
    if put:
        pairs = [[k, v] for k, v in sorted(put.items())]
        ops.append(
            {
                "op": "mutate",
                "table": table,
                "where": where,
                "mutations": [["external_ids", "insert", ["map", pairs]]],
            }
        )
    return ops


def write_keys(host, n: int, keys: dict | None, profiles: int) -> None:
    """The bridge's group keys and every port's ovsnat-sg, or none of them (keys None)."""
    for lo in range(0, n, PER_TXN):
        ops = []
        for i in range(lo, min(n, lo + PER_TXN)):
            put = port_keys(i, profiles) if keys else {}
            ops += set_map("Interface", f"p{i}", ["ovsnat-sg"], put)
        transact(host, ops)
    rows = host.vsctl("--format=json", "--columns=external_ids", "list", "Bridge", BRIDGE)
    old = json.loads(rows)["data"][0][0][1]  # ["map", [[key, value], ...]]
    ours = [k for k, _ in old if k.startswith(("ovsnat-sg-", "ovsnat-sgm-"))]
    transact(host, set_map("Bridge", BRIDGE, ours, {}))
    chunk: dict[str, str] = {}
    for k, v in sorted((keys or {}).items()):  # each transaction well under 128 KiB
        if chunk and sum(len(x) + len(y) for x, y in chunk.items()) + len(v) > 64 * 1024:
            transact(host, set_map("Bridge", BRIDGE, [], chunk))
            chunk = {}
        chunk[k] = v
    if chunk:
        transact(host, set_map("Bridge", BRIDGE, [], chunk))


def build_cpu(n: int, profiles: int, rules: int, members: int, groups: bool) -> float:
    """CPU seconds to build the controller's desired state (compiled and packed), as
    ovsnat.core.controller builds it at start: the bridge's groups, then each port."""
    state = desired_state(n, profiles, rules, members, groups)
    t0 = time.process_time()
    host = HostState(state.config)
    host.set_security(state.security)
    for vm in state.vms:
        host.update(vm.name, vm)
    return time.process_time() - t0


def one_start(ctl: Controller, host, n: int, expected: int, timeout: float) -> dict:
    t0 = time.time()
    if os.path.exists(ctl.status_file):  # the last start's: it shows N VMs already
        os.unlink(ctl.status_file)
    c = bench_cold.cold_program(ctl, host, n, timeout)
    path = os.path.join(host.rundir, "ovsnat-flows.txt")
    dumped = bench_cold.dump_flows(host, path)
    ctl.stop()
    if len(dumped) != expected or c["failed_bundles"]:
        raise RuntimeError(
            f"switch holds {len(dumped)} flows, compiler says {expected}; "
            f"{c['failed_bundles']} bundles failed"
        )
    base = bench_cold.ofctl_program(host, path, dumped)
    host.vsctl("del-controller", BRIDGE)  # the last Controller row: the switch flushes its flows
    return {
        "flows": len(dumped),
        "connect_to_sync_s": c["seconds"],
        "set_controller_to_visible_s": c["visible_s"],
        "start_to_state_built_s": c["ovsdb_ready_s"],
        "start_to_visible_s": round(c["ovsdb_ready_s"] + c["visible_s"], 3),
        "ofctl_bundle_s": round(base["seconds"], 3),
        "controller_cpu_s": c["controller_cpu_s"],
        "flow_mods": c["flow_mods"],
        "phases_s": c["phases_s"],
        "connect_phases_s": c["connect_phases_s"],
        "loop_stalls": c["loop_stalls"],
        "wall_s": round(time.time() - t0, 1),
    }


def sgcold(
    n: int = 1000,
    rounds: int = 3,
    profiles: int = 1,
    rules: int = 20,
    members: int = 2000,
    timeout: float = 600,
) -> list[Result]:
    keys = bridge_keys(profiles, rules, members, n)
    expected = {
        True: len(compile_state(desired_state(n, profiles, rules, members))),
        False: len(compile_state(desired_state(n, groups=False))),
    }
    runs: dict[bool, list[dict]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    with Lab() as lab:
        lab.up()
        host = lab.add_host("hv1", dummy=True)
        try:
            specs = [bulk.vm_spec(i) for i in range(n)]
            setup = bulk.add_ports(host, specs, port_type="patch", timeout=timeout)
            say(f"  sg cold: {n} patch ports attached in {setup:.1f} s")
            ctl = Controller(lab, "hv1", bulk.SNAT_IP, **bulk.scale_options())
            for r in range(rounds):
                for groups in (True, False) if r % 2 == 0 else (False, True):
                    write_keys(host, n, keys if groups else None, profiles)
                    one = one_start(ctl, host, n, expected[groups], timeout)
                    runs[groups].append(one)
                    cpu[groups].append(build_cpu(n, profiles, rules, members, groups))
                    say(
                        f"  sg cold round {r + 1}/{rounds} {'with' if groups else 'without'} "
                        f"groups: {one['flows']} flows, connect -> in sync "
                        f"{one['connect_to_sync_s']:.3f} s (ovs-ofctl "
                        f"{one['ofctl_bundle_s']:.3f} s), start -> visible "
                        f"{one['start_to_visible_s']:.2f} s, state built in {cpu[groups][-1]:.2f} "
                        "s CPU"
                    )
        finally:
            bulk.stop_big_host(host)
    return results(n, profiles, rules, members, runs, cpu)


def results(n, profiles, rules, members, runs, cpu) -> list[Result]:
    label = (
        f"sg cold program N={n} patch, 3 groups x {rules} rules, {members} members, "
        f"{profiles} profile{'s' if profiles > 1 else ''}"
    )
    flows = {k: v[0]["flows"] for k, v in runs.items()}
    out = []
    for key, metric in (
        ("connect_to_sync_s", "connect -> barrier after last flow_mod, with / without groups"),
        ("set_controller_to_visible_s", "set-controller -> flows visible, with / without"),
        ("start_to_visible_s", "process start -> flows visible (+-1 s), with / without"),
        ("ofctl_bundle_s", "ovs-ofctl --bundle add-flows of the same flows, with / without"),
    ):
        a, b = [r[key] for r in runs[True]], [r[key] for r in runs[False]]
        out.append(
            Result(
                label,
                metric,
                statistics.median(a),
                statistics.median(b),
                "s",
                "",
                {"value": spread(a), "baseline": spread(b), "flows": flows},
            )
        )
    out.append(
        Result(
            label,
            "desired state built (compile + pack, in-process CPU), with / without",
            statistics.median(cpu[True]),
            statistics.median(cpu[False]),
            "s",
            "",
            {"value": spread(cpu[True]), "baseline": spread(cpu[False])},
        )
    )
    per_flow = {k: [r["connect_to_sync_s"] / r["flows"] * 1e6 for r in v] for k, v in runs.items()}
    out.append(
        Result(
            label,
            "connect -> in sync per flow installed (us), with / without",
            statistics.median(per_flow[True]),
            statistics.median(per_flow[False]),
            "us",
            "",
            {"value": spread(per_flow[True]), "baseline": spread(per_flow[False])},
        )
    )
    ratios = [
        a["connect_to_sync_s"] / a["ofctl_bundle_s"] for a in runs[True] if a["ofctl_bundle_s"] > 0
    ]
    out.append(
        Result(
            label,
            "with groups: connect -> in sync / ovs-ofctl --bundle (same flows), median",
            statistics.median(ratios),
            1.0,
            "x",
            "ratio <= 1.5",
            {"ratios": spread(ratios), "runs": runs},
        )
    )
    return out
