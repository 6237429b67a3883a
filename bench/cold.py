"""Cold program at N VMs against `ovs-ofctl --bundle add-flows` of the same flows; on the same
lab, restart with nothing changed, the controller's memory and (from bench.events) port
additions with N VMs present.

One lab per N: attaching 10,000 dummy ports costs ovs-vswitchd minutes (see ovsnat.lab.bulk),
so the measurements that need N VMs on a host share the host the cold program built.
"""

from __future__ import annotations

import os
import re
import time

from bench import audit as bench_audit
from bench import connect, events
from bench.common import (
    Controller,
    Result,
    cpu_seconds,
    ofctl,
    parse_programmed,
    proc_status,
    say,
    vswitchd_log,
)
from ovsnat.lab import Lab, bulk, scenario
from ovsnat.lab.sh import LabError, run, wait_for
from ovsnat.lab.topology import BRIDGE

# ovs-vswitchd reports a controller connection's flow_mods 10 s after the first one:
# "br-int<->tcp:127.0.0.1:6653: 612 flow_mods 10 s ago (612 adds)" or "... in the last 3 s".
REPORT = re.compile(r"<->tcp:127\.0\.0\.1:\d+: (\d+) flow_mods (?:in the last|\d+ s ago)")
REPORT_DELAY = 11.0


def scale(
    n: int,
    restart: bool = False,
    memory: bool = False,
    additions: int = 0,
    budget: float = 1e9,
    port_type: str = "dummy",
    networks: int = 0,
    timeout: float = 1800,
    audit: bool = False,
) -> tuple[list[Result], dict]:
    """Returns the results and the raw measurements (events.additions data under
    "additions" when asked for: at most `additions`, for about `budget` seconds)."""
    results, raw = [], {"n": n}
    with Lab() as lab:
        lab.up()
        host = lab.add_host("hv1", dummy=True)
        try:
            specs = [bulk.vm_spec(i, networks=networks) for i in range(n)]
            raw["setup_ports_s"] = bulk.add_ports(host, specs, port_type=port_type, timeout=timeout)
            say(f"  N={n}: {n} {port_type} ports attached in {raw['setup_ports_s']:.1f} s")
            ctl = Controller(lab, "hv1", bulk.SNAT_IP, **bulk.scale_options())
            cold = raw["cold"] = cold_program(ctl, host, n, timeout)
            flows_file = os.path.join(host.rundir, "ovsnat-flows.txt")
            dumped = dump_flows(host, flows_file)
            ctl.fast_reconnect()  # for the restart below; before the baseline's timing
            ctl.stop()  # the process only: the Controller row stays (scenario docs)
            base = raw["ofctl"] = ofctl_program(host, flows_file, dumped)
            say(
                f"  N={n}: ovsnat {cold['seconds']:.3f} s, ovs-ofctl {base['seconds']:.3f} s "
                f"for {len(dumped)} flows (OVSDB read and state built in "
                f"{cold['ovsdb_ready_s']:.1f} s before the connection)"
            )
            label = f"N={n} {port_type}" + (f" over {networks} networks" if networks else "")
            results.append(
                Result(
                    f"cold program {label}",
                    "connect -> barrier after last flow_mod",
                    cold["seconds"],
                    base["seconds"],
                    "s",
                    "ratio <= 1.5",
                    {
                        "flows": len(dumped),
                        **{
                            k: cold[k]
                            for k in (
                                "flow_mods",
                                "bundles",
                                "controller_cpu_s",
                                "vswitchd_cpu_s",
                                "phases_s",
                                "external_s",
                                "ovsdb_ready_s",
                            )
                        },
                        "ofctl_vswitchd_cpu_s": base["vswitchd_cpu_s"],
                        "ports_setup_s": raw["setup_ports_s"],
                    },
                )
            )
            results.append(
                Result(
                    f"cold program {label}",
                    "set-controller -> flows visible (as a user sees it)",
                    cold["visible_s"],
                    base["seconds"],
                    "s",
                    "ratio <= 1.5",
                    {"phases_s": cold["connect_phases_s"], "loop_stalls": cold["loop_stalls"]},
                )
            )
            if not (restart or memory or additions or audit):
                return results, raw
            sleep_until(cold["t_connected"] + REPORT_DELAY)
            cold["vswitchd_reported_flow_mods"] = vswitchd_reports(host, 0)
            tools = raw["tools_read"] = tools_read(host)
            again = raw["restart"] = restart_nothing_changed(ctl, host, timeout)
            say(
                f"  N={n}: restart in sync {again['seconds']:.1f} s after the process "
                f"started ({again['phases_s']}), {again['flow_mods']} flow_mods"
            )
            if restart:
                results.append(
                    Result(
                        f"restart {label}",
                        "flow_mods sent after restart, nothing changed",
                        again["flow_mods"],
                        None,
                        "flow_mods",
                        "value <= 0",
                        {
                            k: again[k]
                            for k in (
                                "nothing_sent",
                                "programmed_lines",
                                "vswitchd_reported_flow_mods",
                            )
                        }
                        | {
                            "cold_flow_mods_reported_by_vswitchd": cold[
                                "vswitchd_reported_flow_mods"
                            ]
                        },
                    )
                )
                results.append(
                    Result(
                        f"restart {label}",
                        "restart (connect -> in sync) / cold program",
                        again["controller_seconds"],
                        cold["seconds"],
                        "s",
                        "ratio <= 0.5",
                    )
                )
                results.append(
                    Result(
                        f"restart {label}",
                        "restart (process start -> in sync) / cold program",
                        again["seconds"],
                        cold["seconds"],
                        "s",
                        "",
                        {"phases_s": again["phases_s"]},
                    )
                )
                results.append(
                    Result(
                        f"restart {label}",
                        "restart (process start -> in sync) / standard "
                        "tools reading the same state",
                        again["seconds"],
                        tools["seconds"],
                        "s",
                        "ratio <= 3",
                        {"phases_s": again["phases_s"], "tools": tools},
                    )
                )
            raw["rss_kb"] = {"cold": cold["rss_kb"], "restart": again["rss_kb"]}
            if additions:  # on the restarted controller, still running
                raw["additions"] = events.additions(
                    host, ctl, first=n, count=additions, budget=budget, port_type=port_type
                )
                raw["additions"]["paced"] = events.additions(
                    host,
                    ctl,
                    first=n + raw["additions"]["count"],
                    count=events.PACED,
                    budget=min(budget, events.PACE_S * events.PACED),
                    port_type=port_type,
                    pace=events.PACE_S,
                )
                raw["rss_kb"]["after_additions"] = proc_status(ctl.pid)
            if audit:  # last: it restarts the controller twice
                result, raw["audit"] = bench_audit.measure(ctl, host, n, label, timeout)
                results.append(result)
        finally:
            bulk.stop_big_host(host)
    return results, raw


def cold_program(ctl: Controller, host, n: int, timeout: float) -> dict:
    """Controller up and synced to OVSDB first, then the connection; timed by the
    controller's own `in sync` line (datapath connect -> barrier after the last flow_mod)."""
    log = ctl.start()
    ready = ctl.wait_ovsdb(n, timeout)
    vswitchd = host.ovs.pid("ovs-vswitchd")
    offset = os.path.getsize(vswitchd_log(host))
    cpu0, vcpu0, t0 = cpu_seconds(ctl.pid), cpu_seconds(vswitchd), time.time()
    ctl.connect()
    t_visible, _ = connect.until_visible(host, log, timeout, interval=0.1)
    sync = ctl.wait_in_sync(timeout)
    cpu1, vcpu1 = cpu_seconds(ctl.pid), cpu_seconds(vswitchd)
    log.poll()
    sent = [p for _, m in log.lines for p in [parse_programmed(m)] if p]
    time.sleep(1.0)  # let allocations settle
    return {
        "seconds": sync["seconds"],
        "external_s": round(sync["t_done"] - t0, 3),
        "t_connected": sync["t_connected"],
        "ovsdb_ready_s": round(ready, 3),
        "flow_mods": sum(p.flow_mods for p in sent),
        "bundles": len(sent),
        "failed_bundles": sum(p.failed for p in sent),
        "controller_cpu_s": round(cpu1 - cpu0, 3),
        "vswitchd_cpu_s": round(vcpu1 - vcpu0, 3),
        "phases_s": phases(sync),
        "rss_kb": proc_status(ctl.pid),
        "visible_s": round(t_visible - t0, 3),
        "connect_phases_s": connect.phases(host, offset, t0, t_visible, sync),
        "loop_stalls": [
            s
            for s in _status_after(ctl, t_visible).get("loop_stalls", [])
            if t0 <= s[0] <= t_visible
        ],
    }


def _status_after(ctl: Controller, t: float) -> dict:
    """The controller's status as written after `t` (it is rewritten every second)."""
    try:
        return wait_for(
            lambda: (lambda st: st if st.get("time", 0) > t else None)(ctl.status() or {}),
            5,
            interval=0.1,
            what="a fresh status file",
        )
    except LabError:
        return {}  # a controller without a status file (an older one)


def phases(sync: dict) -> dict:
    """Seconds between the log stamps: connect -> dump read -> diff planned -> done."""
    stamps = [
        ("dump", sync["t_dumped"]),
        ("plan", sync["t_planned"]),
        ("send+apply", sync["t_done"]),
    ]
    out, last = {}, sync["t_connected"]
    for name, t in stamps:
        if t is not None and last is not None:
            out[name] = round(t - last, 3)
            last = t
    return out


def dump_flows(host, path: str) -> list[str]:
    """Exactly the flows on the switch, as ovs-ofctl prints them (header line stripped)."""
    out = ofctl(host, "dump-flows", BRIDGE, "--no-stats").stdout
    lines = [
        line
        for line in out.splitlines()
        if line.strip() and not line.startswith(("OFPST_FLOW", "NXST_FLOW"))
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines


def ofctl_program(host, path: str, expected: list[str]) -> dict:
    """The baseline: delete every flow, then time `ovs-ofctl --bundle add-flows` of the
    file (meters first: the flows refer to them). Checks the switch ends up identical."""
    scenario.install_meters(host)
    ofctl(host, "del-flows", BRIDGE)
    vswitchd = host.ovs.pid("ovs-vswitchd")
    vcpu0, t0 = cpu_seconds(vswitchd), time.monotonic()
    ofctl(host, "--bundle", "add-flows", BRIDGE, path)
    took, vcpu1 = time.monotonic() - t0, cpu_seconds(vswitchd)
    after = ofctl(host, "dump-flows", BRIDGE, "--no-stats").stdout
    after = [
        line
        for line in after.splitlines()
        if line.strip() and not line.startswith(("OFPST_FLOW", "NXST_FLOW"))
    ]
    if sorted(after) != sorted(expected):
        raise RuntimeError(f"ovs-ofctl reinstall differs: {len(after)} flows vs {len(expected)}")
    return {"seconds": took, "flows": len(expected), "vswitchd_cpu_s": round(vcpu1 - vcpu0, 3)}


def tools_read(host, rounds: int = 3) -> dict:
    """The baseline of a restart: the time the standard tools take to read what a
    restarted controller must read, `ovsdb-client dump` of the Interface table and
    `ovs-ofctl dump-flows` of the bridge (the best of `rounds`, each tool timed alone)."""
    env = host.ovs.env
    ovsdb, flows = [], []
    for _ in range(rounds):
        t0 = time.monotonic()
        run(
            ["ovsdb-client", "dump", f"unix:{host.ovs.db_sock}", "Open_vSwitch", "Interface"],
            env=env,
            timeout=300,
        )
        t1 = time.monotonic()
        ofctl(host, "dump-flows", BRIDGE)
        t2 = time.monotonic()
        ovsdb.append(t1 - t0)
        flows.append(t2 - t1)
    return {
        "seconds": round(min(ovsdb) + min(flows), 3),
        "ovsdb_client_dump_s": ovsdb,
        "ofctl_dump_flows_s": flows,
    }


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def vswitchd_reports(host, offset: int) -> int:
    """flow_mods ovs-vswitchd itself reported from controller connections (its log lines
    `<->tcp:...: N flow_mods in the last ...`) past byte `offset` of its log."""
    with open(vswitchd_log(host), "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return sum(int(m.group(1)) for m in REPORT.finditer(text))


def restart_nothing_changed(ctl: Controller, host, timeout: float) -> dict:
    """Start the stopped controller again (the bridge reconnects by itself: its Controller
    row stayed) with the switch holding exactly its flows. Timed from the process start
    (the host has no working controller until then) to the end of the sync; the
    controller keeps running. Waits until ovs-vswitchd would have reported the flow_mods
    of this connection, if there were any."""
    offset = os.path.getsize(vswitchd_log(host))
    if os.path.exists(ctl.status_file):
        os.unlink(ctl.status_file)
    t_start = time.time()
    log = ctl.start()
    sync = ctl.wait_in_sync(timeout)
    snapshot = log.find(r"OVSDB snapshot")
    time.sleep(1.5)  # the status file is rewritten on the next 1 s tick if dirty
    status = ctl.status() or {}
    log.poll()
    programmed = [p for _, m in log.lines for p in [parse_programmed(m)] if p]
    rss = proc_status(ctl.pid)
    sleep_until(sync["t_connected"] + REPORT_DELAY)
    t_snap = snapshot[1] if snapshot else None
    return {
        "seconds": round(sync["t_done"] - t_start, 3),
        "controller_seconds": sync["seconds"],
        "nothing_sent": sync["nothing_sent"],
        "flow_mods": status.get("stats", {}).get("flow_mods"),
        "programmed_lines": len(programmed),
        "phases_s": {
            "start -> OVSDB snapshot": round(t_snap - t_start, 3),
            "snapshot -> connect handled": round(sync["t_connected"] - t_snap, 3),
            **phases(sync),
        }
        if t_snap
        else phases(sync),
        "vswitchd_reported_flow_mods": vswitchd_reports(host, offset),
        "rss_kb": rss,
    }
