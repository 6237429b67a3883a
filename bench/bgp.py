"""bgp mode's control plane (issue 30 item 7, docs/bgp.md): how fast what ovsnat writes in
a host's kernel tables reaches the ToRs, with real FRR on the lab's routed fabric
(ovsnat/lab/bgpfabric.py: two hosts, two ToRs). Every time is read on ToR A's kernel through
an rtnetlink subscription (the route FRR installs there), which is finer than polling
`vtysh` (about 35 ms a call).

- **A FIP's route**, one at a time: written by RouteWriter into table 100 (ovsnat's way),
  against the baseline of the same /32 announced by a `vtysh` `network` statement (the way
  docs/bgp.md rejected), alternating, each withdrawn before the next.
- **1,000 FIPs at once**: one batch, against the baseline of one write per FIP (a
  controller that writes each as it goes live): ToR A's UPDATEs received from the host
  (`messageStats.updatesRecv`) and the time until its kernel holds all of them.
- **Migration**: the destination writes the FIP into table 101 (MOVED) while the source
  still announces it; the time until ToR A's route points at the destination, against a
  fresh announcement's time measured in the same run.
"""

from __future__ import annotations

import select
import statistics
import time

import netaddr

from bench.common import Result, percentile, say
from ovsnat.lab.bgpfabric import HOST_ASN, BgpFabric, link_address
from ovsnat.lab.sh import wait_for
from ovsnat.runtime import routes
from ovsnat.runtime import rtnetlink as rt

BULK_RANGE = "10.128.0.0/20"  # room for 1,000 /32s (routes only: no packet is sent)
MAIN = 254
ROUTER = ("configure terminal", f"router bgp {HOST_ASN + 1}")  # h1's


class Watch:
    """ToR A's kernel routes as they change: prefix -> its gateways (absent: none)."""

    def __init__(self, namespace: str):
        self.sock = routes.open_socket(namespace, rt.RTMGRP_IPV4_ROUTE)
        self.sock.setblocking(False)
        self.table: dict[str, tuple[str, ...]] = {}

    def close(self) -> None:
        self.sock.close()

    def until(self, done, timeout: float) -> float:
        """Reads changes until done(table) holds; returns the time it did (perf_counter)."""
        deadline = time.perf_counter() + timeout
        while not done(self.table):
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError("the ToR's kernel never showed it")
            if select.select([self.sock], [], [], left)[0]:
                self._read()
        return time.perf_counter()

    def _read(self) -> None:
        try:
            while True:
                for m in rt.parse(self.sock.recv(1 << 20)):
                    if isinstance(m.body, rt.Route) and m.body.table == MAIN:
                        key = str(m.body.prefix.ip)
                        if m.kind == rt.RTM_DELROUTE:
                            self.table.pop(key, None)
                        else:
                            self.table[key] = tuple(str(g) for g in m.body.gateways)
        except BlockingIOError:
            return


def announce(rounds: int) -> list[Result]:
    fabric = BgpFabric().up()
    try:
        # The baseline's own way: a network statement announces without a route in the RIB.
        fabric.nodes["h1"].command(*ROUTER, "no bgp network import-check")
        watch = Watch(fabric.names["ta"])
        ours, vtysh, moved = [], [], []
        for i in range(rounds):
            fip = f"203.0.113.{100 + i % 100}"
            ours.append(_one(fabric, watch, fip, "kernel"))
            vtysh.append(_one(fabric, watch, fip, "vtysh"))
            moved.append(_moved(fabric, watch, fip))
        watch.close()
    finally:
        fabric.down()
    info = {"n": rounds, "ours_ms": _ms(ours), "vtysh_ms": _ms(vtysh), "moved_ms": _ms(moved)}
    say(f"  a FIP's route on ToR A: {info}")
    name = f"bgp announce n={rounds}"
    return [
        Result(name, "p50 route written -> on ToR A (kernel table / vtysh network)",
               percentile(ours, 50), percentile(vtysh, 50), "s", "", info),
        Result(name, "worst route written -> on ToR A (kernel table / vtysh network)",
               max(ours), max(vtysh), "s"),
        Result(name, "p50 migration: MOVED written -> ToR A's route on the destination "
               "(/ a fresh announcement)", percentile(moved, 50), percentile(ours, 50), "s",
               "value <= 1"),
    ]  # fmt: skip


def bulk(count: int) -> list[Result]:
    fabric = BgpFabric(external=BULK_RANGE).up()
    try:
        watch = Watch(fabric.names["ta"])
        fips = [str(ip) for ip in list(netaddr.IPNetwork(BULK_RANGE))[1 : count + 1]]
        batch = _bulk(fabric, watch, fips, batched=True)
        single = _bulk(fabric, watch, fips, batched=False)
        watch.close()
    finally:
        fabric.down()
    say(f"  {count} FIPs: one batch {batch}, one write each {single}")
    name = f"bgp {count} FIPs at once"
    return [
        Result(name, "UPDATEs on ToR A (one batch / one write per FIP)",
               batch["updates"], single["updates"], "msgs", "value <= 10",
               {"batch": batch, "single": single}),
        Result(name, "all on ToR A's kernel after (one batch / one write per FIP)",
               batch["seconds"], single["seconds"], "s"),
    ]  # fmt: skip


def _one(fabric: BgpFabric, watch: Watch, fip: str, how: str) -> float:
    t0 = time.perf_counter()
    if how == "kernel":
        fabric.write("h1", add=[(fip, 100)])
    else:
        fabric.nodes["h1"].command(*ROUTER, "address-family ipv4 unicast", f"network {fip}/32")
    took = watch.until(lambda table: fip in table, 10) - t0
    if how == "kernel":
        fabric.write("h1", delete=[(fip, 100)])
    else:
        fabric.nodes["h1"].command(*ROUTER, "address-family ipv4 unicast", f"no network {fip}/32")
    watch.until(lambda table: fip not in table, 10)
    return took


def _moved(fabric: BgpFabric, watch: Watch, fip: str) -> float:
    source, dest = link_address(1, "ta", "host"), link_address(2, "ta", "host")
    fabric.write("h1", add=[(fip, 100)])
    watch.until(lambda table: table.get(fip) == (source,), 10)
    t0 = time.perf_counter()
    fabric.write("h2", add=[(fip, 101)])
    took = watch.until(lambda table: table.get(fip) == (dest,), 10) - t0
    fabric.write("h1", delete=[(fip, 100)])
    fabric.write("h2", delete=[(fip, 101)])
    watch.until(lambda table: fip not in table, 10)
    return took


def _bulk(fabric: BgpFabric, watch: Watch, fips: list[str], batched: bool) -> dict:
    peer = link_address(1, "ta", "host")
    before = _updates(fabric, peer)
    t0 = time.perf_counter()
    if batched:
        fabric.write("h1", add=[(ip, 100) for ip in fips])
    else:
        for ip in fips:
            fabric.write("h1", add=[(ip, 100)])
    done = watch.until(lambda table: all(ip in table for ip in fips), 60)
    wait_for(lambda: _updates(fabric, peer) > before, 10, what="ToR A's counters")
    time.sleep(1.0)  # the counter settles: nothing more is on its way
    updates = _updates(fabric, peer) - before
    fabric.write("h1", delete=[(ip, 100) for ip in fips])
    watch.until(lambda table: not any(ip in table for ip in fips), 60)
    return {"updates": updates, "seconds": done - t0}


def _updates(fabric: BgpFabric, peer: str) -> int:
    answer = fabric.nodes["ta"].show(f"show bgp neighbors {peer} json")
    return answer[peer]["messageStats"]["updatesRecv"]


def _ms(values: list[float]) -> dict:
    return {
        "p50": percentile(values, 50) * 1e3,
        "worst": max(values) * 1e3,
        "best": min(values) * 1e3,
        "mean": statistics.mean(values) * 1e3,
    }
