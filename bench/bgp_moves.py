"""bgp mode end to end with ovsnat's controllers (issue 30 item 7, docs/bgp.md): two
hypervisors on routed uplinks, each with OVS, ryu-manager and FRR, two ToRs running FRR
(ovsnat.lab.routedhost). Times are read on ToR A's kernel through an rtnetlink subscription
(bench.bgp.Watch), against a baseline measured in the same run.

- **Migration**: a VM with a FIP moves between the hosts as Nova and libvirt move it (the
  destination HELD first, the source announcing until it is unplugged); from its first
  frame on the destination (QEMU's first RARP, timed by the sender) until ToR A's route
  points at the destination (MOVED over the source's LIVE). bgp_moved_hold is 2 s here and
  each round waits for it, so that every move is over a LIVE route, as a first
  migration's. Baseline: a fresh VM's FIP, from its port's creation until ToR A's route
  (no other host holds it, so it goes live at plug).
- **FRR restart** on a host: from the daemons' start until both ToRs hold the host's FIP
  and SNAT routes fresh (no longer stale from graceful restart). Baseline: until both
  sessions are Established, FRR's own part.
"""

from __future__ import annotations

import time

from bench.bgp import Watch, _ms
from bench.common import Result, percentile, say
from ovsnat.lab.bgpplan import link_address
from ovsnat.lab.routedhost import RoutedHost
from ovsnat.lab.sh import wait_for

MOVER, MOVER_FIP = 21, "203.0.113.20"
HOLD = 2  # bgp_moved_hold here: each round waits for it, so a move back is MOVED over LIVE


def moves(rounds: int) -> list[Result]:
    lab = RoutedHost(frr=True, hosts=2, options={"bgp_moved_hold": str(HOLD)}).up()
    try:
        watch = Watch(lab.ns["ta"])
        lab.add_vm(MOVER, fip=MOVER_FIP, host=1)
        watch.until(lambda t: t.get(MOVER_FIP) == (link_address(1, "ta"),), 30)
        fresh, moved, where = [], [], 1
        for i in range(rounds):
            fresh.append(_fresh(lab, watch, 100 + i, f"203.0.113.{100 + i}"))
            dest = 3 - where
            lab.prepare(MOVER, dest)
            wait_for(lambda d=dest: _state(lab, d) == "held", 10, what="the destination HELD")
            rarps = lab.switch_over(MOVER, where, dest)
            on = watch.until(lambda t, d=dest: t.get(MOVER_FIP) == (link_address(d, "ta"),), 10)
            moved.append(on - rarps.first())  # the guest sends nothing else: no traffic
            lab.unplug(MOVER, where)  # as Nova, once the guest runs on the destination
            wait_for(lambda w=where: MOVER_FIP not in _all_routes(lab, w), 10,
                     what="the source's withdrawal")  # fmt: skip
            wait_for(lambda d=dest: MOVER_FIP in lab.hv(d).announced(100), HOLD + 10,
                     what="the hold's end (LIVE)")  # fmt: skip
            where = dest
        watch.close()
    finally:
        lab.down()
    info = {"n": rounds, "moved_ms": _ms(moved), "fresh_ms": _ms(fresh)}
    say(f"  migrations and fresh FIPs on ToR A: {info}")
    name = f"bgp migration n={rounds}"
    return [
        Result(name, "p50 migration: VM's first frame -> ToR A's route on the destination "
               "(/ a fresh FIP: port created -> on ToR A)", percentile(moved, 50),
               percentile(fresh, 50), "s", "value <= 1", info),
        Result(name, "worst migration (/ worst fresh FIP)", max(moved), max(fresh), "s",
               "value <= 1"),
    ]  # fmt: skip


def frr_restarts(rounds: int) -> list[Result]:
    lab = RoutedHost(frr=True).up()
    try:
        lab.add_vm(11, fip="203.0.113.10")
        prefixes = ("203.0.113.10", lab.hv(1).snat)
        wait_for(lambda: _fresh_on_tors(lab, prefixes), 30, what="the routes on both ToRs")
        established, fresh = [], []
        for _ in range(rounds):
            lab.nodes["hv"].stop()
            wait_for(lambda: all(lab.established(t) == 0 for t in ("ta", "tb")), 30,
                     what="the ToRs seeing the host's FRR gone")  # fmt: skip
            start = time.monotonic()
            lab.start_host_frr(1)
            wait_for(lambda: all(lab.established(t) == 1 for t in ("ta", "tb")), 30,
                     what="both sessions", interval=0.02)  # fmt: skip
            established.append(time.monotonic() - start)
            wait_for(lambda: _fresh_on_tors(lab, prefixes), 30, what="fresh routes",
                     interval=0.02)  # fmt: skip
            fresh.append(time.monotonic() - start)
    finally:
        lab.down()
    info = {"n": rounds, "fresh_s": fresh, "established_s": established}
    say(f"  FRR restarts: {info}")
    name = f"bgp FRR restart n={rounds}"
    return [
        Result(name, "p50 FRR started -> routes fresh on both ToRs (/ both sessions "
               "Established)", percentile(fresh, 50), percentile(established, 50), "s",
               "", info),
        Result(name, "p50 routes fresh after Established", percentile(
            [f - e for f, e in zip(fresh, established, strict=True)], 50), None, "s",
               "value <= 2"),
    ]  # fmt: skip


def _fresh(lab: RoutedHost, watch: Watch, n: int, fip: str) -> float:
    lab.add_vm(n, fip=fip, host=1, plug=False)  # its namespace and device, no port yet
    start = time.monotonic()
    lab.plug(lab.hv(1), n)
    took = watch.until(lambda t: fip in t, 10) - start
    lab.unplug(n, 1)
    watch.until(lambda t: fip not in t, 10)
    return took


def _state(lab: RoutedHost, n: int) -> str | None:
    return lab.hv(n).status().get("waiting", {}).get(f"tap{MOVER}", {}).get("state")


def _all_routes(lab: RoutedHost, n: int) -> set[str]:
    return lab.hv(n).announced(100) | lab.hv(n).announced(101)


def _fresh_on_tors(lab: RoutedHost, prefixes) -> bool:
    for tor in ("ta", "tb"):
        for prefix in prefixes:
            best = lab.best(tor, prefix)
            if not best or best.get("stale") or best["nexthops"][0]["ip"] != link_address(1, tor):
                return False
    return True
