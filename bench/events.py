"""Event cost: VM ports added one at a time (one `ovs-vsctl --no-wait add-port` each, as
os-vif does not wait for ovs-vswitchd either; the next only once the previous VM's flows
are installed), timed from just before the ovs-vsctl command
to the controller's `programmed <port> ... at <time>` line, and to the moment an IDL client
of our own (the plain python-ovs IDL, in a thread of this process) saw the port with its
ofport: what any IDL-driven controller has to wait for.
"""

from __future__ import annotations

import re
import statistics
import threading
import time

import ovs.db.idl
import ovs.poller

from bench.common import Controller, Result, cpu_seconds, parse_programmed, percentile, say
from ovsnat import ovsdb
from ovsnat.lab import Lab, bulk
from ovsnat.lab.sh import LabError
from ovsnat.lab.topology import BRIDGE

IDLE_S = 10.0


class IdlClock:
    """When each interface reached a plain python-ovs IDL client with an ofport (unix time).
    Deliberately not ovsnat's own watcher: the baseline is the standard client."""

    def __init__(self, remote: str):
        self.seen: dict[str, float] = {}
        self.ready = threading.Event()
        self.error: Exception | None = None
        self.running = True
        helper = ovs.db.idl.SchemaHelper(schema_json=ovsdb.fetch_schema(remote))
        helper.register_columns("Interface", ["name", "ofport"])
        self.idl = ovs.db.idl.Idl(remote, helper, leader_only=False)
        self.idl.notify = self._notify  # called per changed row: O(change), not O(rows)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _notify(self, event, row, updates=None) -> None:
        if (
            row._table.name == "Interface"
            and event != ovs.db.idl.ROW_DELETE
            and row.ofport
            and row.ofport[0] > 0
        ):
            self.seen.setdefault(row.name, time.time())

    def _run(self) -> None:
        try:
            while self.running:
                self.idl.run()
                if self.idl.state == self.idl.IDL_S_MONITORING:
                    self.ready.set()
                poller = ovs.poller.Poller()
                self.idl.wait(poller)
                poller.timer_wait(1000)
                poller.block()
        except Exception as e:  # reported by start()/wait()
            self.error = e
            self.ready.set()

    def __enter__(self) -> IdlClock:
        self.thread.start()
        if not self.ready.wait(120) or self.error:
            raise LabError(f"IDL client did not sync: {self.error}")
        return self

    def __exit__(self, *exc) -> None:
        self.running = False  # the loop wakes at least once a second
        self.thread.join(5)
        self.idl.close()

    def wait(self, name: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while name not in self.seen:
            if self.error or time.monotonic() > deadline:
                raise LabError(f"IDL client never saw {name} with an ofport ({self.error})")
            time.sleep(0.001)
        return self.seen[name]


def additions(
    host,
    ctl: Controller,
    first: int,
    count: int,
    budget: float = 1e9,
    port_type: str = "dummy",
    timeout: float = 120,
    pace: float = 0.0,
) -> dict:
    """Add VMs first..first+count-1 (half FIP, half PAT) one by one on a controlled host,
    stopping early once `budget` seconds have passed (after at least 5). Returns
    per-addition seconds: to flows installed and to the IDL client. With `pace`, each
    addition starts `pace` seconds after the previous one did (or when it is done, if
    later): both sides of a comparison then spend the same time per addition, so the
    controller's per-second chores (status file, timers) weigh the same on each."""
    flows, idl, sent = [], [], []
    rescans = coverage(host, "ofproto_update_port")
    idle0 = cpu_seconds(ctl.pid)
    time.sleep(IDLE_S)  # the controller's CPU with nothing happening, per second
    idle_rate = (cpu_seconds(ctl.pid) - idle0) / IDLE_S
    cpu0, w0 = cpu_seconds(ctl.pid), time.monotonic()
    t_end = time.monotonic() + budget
    with IdlClock(f"unix:{host.ovs.db_sock}") as clock:
        for i in range(first, first + count):
            if len(flows) >= 5 and time.monotonic() > t_end:
                break
            spec = bulk.vm_spec(i)
            start = len(ctl.log.lines)
            t0 = time.time()
            host.vsctl(
                "--no-wait",
                "add-port",
                BRIDGE,
                spec.name,
                "--",
                "set",
                "Interface",
                spec.name,
                *bulk.iface_type(port_type),
                *[f'external_ids:{k}="{v}"' for k, v in spec.external_ids.items()],
            )
            _, _, message, done = ctl.log.wait(
                lambda m: (p := parse_programmed(m)) and spec.name in p.names and p,
                timeout,
                start,
                interval=0.001,
            )
            if done.failed:
                raise LabError(f"the controller failed to program {spec.name}: {message}")
            flows.append(done.at - t0)
            sent.append(done.sent - t0)
            idl.append(clock.wait(spec.name, timeout) - t0)
            time.sleep(max(0.0, t0 + pace - time.time()))
    cpu, wall = cpu_seconds(ctl.pid) - cpu0, time.monotonic() - w0
    rescans = coverage(host, "ofproto_update_port") - rescans
    return {
        "n_before": first,
        "count": len(flows),
        "flows_s": flows,
        "idl_s": idl,
        "sent_s": sent,
        "controller_cpu_s": cpu,
        "controller_idle_cpu_s": idle_rate * wall,
        "vswitchd_port_updates_per_addition": round(rescans / len(flows)),
    }


def coverage(host, counter: str) -> int:
    """An ovs-vswitchd coverage counter's total (0 while it never fired)."""
    m = re.search(rf"^{counter}\s.*total: (\d+)", host.appctl("coverage/show"), re.M)
    return int(m.group(1)) if m else 0


PACE_S, PACED = 3.0, 20  # the paced runs: one addition every 3 s, 20 of them


def base_run(n: int, count: int, port_type: str = "dummy", timeout: float = 300) -> dict:
    """The same additions on a host with only n VMs, then the paced ones (under "paced")."""
    with Lab() as lab:
        lab.up()
        host = lab.add_host("hv1", dummy=True)
        try:
            bulk.add_ports(
                host, [bulk.vm_spec(i) for i in range(n)], port_type=port_type, timeout=timeout
            )
            ctl = Controller(lab, "hv1", bulk.SNAT_IP, **bulk.scale_options())
            ctl.start()
            ctl.wait_ovsdb(n, timeout)
            ctl.connect()
            ctl.wait_in_sync(timeout)
            run = additions(host, ctl, first=n, count=count, port_type=port_type)
            run["paced"] = additions(
                host, ctl, first=n + count, count=PACED, port_type=port_type, pace=PACE_S
            )
            return run
        finally:
            bulk.stop_big_host(host)


def summary(run: dict) -> dict:
    f, i = run["flows_s"], run["idl_s"]
    own = [a - b for a, b in zip(f, i, strict=True)]
    # ovsnat alone: from the IDL client seeing the ofport to ovsnat writing the bundle (it
    # may be negative: ovsnat's own watcher can see the change before the IDL client does).
    ovsnat = [s - b for s, b in zip(run["sent_s"], i, strict=True)]
    switch = [a - s for a, s in zip(f, run["sent_s"], strict=True)]
    return {
        "n_before": run["n_before"],
        "count": run["count"],
        "vswitchd_port_updates_per_addition": run["vswitchd_port_updates_per_addition"],
        "controller_mean_s": statistics.mean(own),
        "ovsnat_mean_s": statistics.mean(ovsnat),
        "switch_bundle_mean_s": statistics.mean(switch),
        "controller_cpu_per_addition_s": run["controller_cpu_s"] / run["count"],
        "controller_net_cpu_per_addition_s": (
            run["controller_cpu_s"] - run["controller_idle_cpu_s"]
        )
        / run["count"],
        "flows_mean_s": statistics.mean(f),
        "flows_p50_s": percentile(f, 50),
        "flows_p99_s": percentile(f, 99),
        "idl_mean_s": statistics.mean(i),
        "idl_p50_s": percentile(i, 50),
        "idl_p99_s": percentile(i, 99),
    }


def results(small: dict, big: dict, port_type: str) -> list[Result]:
    s, b = summary(small), summary(big)
    ps, pb = summary(small["paced"]), summary(big["paced"])
    say(
        f"  additions: N={s['n_before']} mean {s['flows_mean_s'] * 1e3:.1f} ms, "
        f"N={b['n_before']} mean {b['flows_mean_s'] * 1e3:.1f} ms"
    )
    vs = f"N={b['n_before']} vs N={s['n_before']} {port_type}"
    out = [
        Result(
            f"event cost {vs}",
            f"mean per port addition until its flows are installed ({b['count']} vs "
            f"{s['count']} additions)",
            b["flows_mean_s"],
            s["flows_mean_s"],
            "s",
            "ratio <= 1.2",
            {"small": s, "big": b},
        ),
        Result(
            f"event cost {vs}",
            "controller's share: mean (flows installed - IDL client saw the ofport)",
            b["controller_mean_s"],
            s["controller_mean_s"],
            "s",
            "ratio <= 1.2",
        ),
        Result(
            f"event cost {vs}",
            "ovsnat's own time: mean (bundle written - IDL client saw the ofport)",
            b["ovsnat_mean_s"],
            s["ovsnat_mean_s"],
            "s",
            "",
        ),
        Result(
            f"event cost {vs}",
            "the switch's time: mean (barrier reply - bundle written)",
            b["switch_bundle_mean_s"],
            s["switch_bundle_mean_s"],
            "s",
            "",
        ),
        Result(
            f"event cost {vs}",
            "controller CPU (user+system) per port addition, everything it did meanwhile included",
            b["controller_cpu_per_addition_s"],
            s["controller_cpu_per_addition_s"],
            "s",
            "",
        ),
        Result(
            f"event cost {vs}",
            "controller CPU per port addition, less its idle CPU "
            f"rate (measured for {IDLE_S:g} s before) times the run's length",
            b["controller_net_cpu_per_addition_s"],
            s["controller_net_cpu_per_addition_s"],
            "s",
            "",
        ),
        Result(
            f"event cost {vs}",
            f"controller CPU per port addition, additions paced "
            f"every {PACE_S:g} s on both sides ({pb['count']} vs {ps['count']})",
            pb["controller_cpu_per_addition_s"],
            ps["controller_cpu_per_addition_s"],
            "s",
            "ratio <= 1.2",
            {"small": ps, "big": pb},
        ),
    ]
    for run in (s, b):
        for p in (50, 99):
            out.append(
                Result(
                    f"event latency N={run['n_before']} {port_type}",
                    f"p{p} OVSDB change -> flows installed / -> IDL client",
                    run[f"flows_p{p}_s"],
                    run[f"idl_p{p}_s"],
                    "s",
                    "ratio <= 2",
                )
            )
    return out
