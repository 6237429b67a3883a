"""bgp mode's control plane with real FRR, before any datapath (docs/bgp.md, slices 1-3):
two hypervisors, each peering with two ToRs over /31 links, each host's FRR configured by
`ovsnat bgp render` and fed by ovsnat's own kernel writes (RouteWriter). Read from the
ToRs' JSON: each host announces exactly its SNAT address and live FIPs, with the LIVE
community; a migration's MOVED route wins at once, and the host it left stops announcing
without doing anything; a host never passes one ToR's routes to the other; the default
route arrives over both links and the other host's /32s are seen (the echoes)."""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import signal
import subprocess
import time

import pytest

from ovsnat.compile.frr_conf import render
from ovsnat.lab import frr, sh
from ovsnat.lab.bgpfabric import TORS, BgpFabric, host_settings
from ovsnat.lab.frr import FrrNode, make_rundir
from ovsnat.lab.sh import wait_for
from ovsnat.runtime import routes

pytestmark = pytest.mark.lab

SNAT = {"h1": "203.0.113.11", "h2": "203.0.113.12"}
FIP = "203.0.113.61"


@pytest.fixture(scope="module")
def fabric():
    fabric = BgpFabric().up()
    try:
        yield fabric
    finally:
        fabric.down()


def all_sessions_up(fabric: BgpFabric) -> None:
    """Every ToR's session with every host Established: a test that disturbed one (a frozen
    ToR) leaves the fabric whole, and the next starts from it."""
    for tor in TORS:
        wait_for(lambda t=tor: fabric.established(t) == fabric.hosts, 40,
                 what=f"{tor}'s sessions with every host")  # fmt: skip


def session_state(fabric: BgpFabric, node: str, peer: str) -> str:
    return fabric.nodes[node].show(f"show bgp neighbors {peer} json")[peer]["bgpState"]


def received(fabric: BgpFabric, node: str, peer: str) -> set[str]:
    return set(fabric.received(node, peer))


def test_each_host_announces_exactly_what_it_holds_with_its_state(fabric):
    fabric.write("h1", add=[(SNAT["h1"], 100), (FIP, 100), ("10.9.9.9", 100)])
    fabric.write("h2", add=[(SNAT["h2"], 100)])
    for tor, (_asn, offset) in TORS.items():
        h1, h2 = f"10.254.1.{offset + 1}", f"10.254.2.{offset + 1}"
        wait_for(lambda t=tor, a=h1: len(received(fabric, t, a)) == 2, 10, what=f"{tor} from h1")
        # Exactly the SNAT address and the live FIP: 10.9.9.9 (outside bgp_announce) is
        # not exported, and nothing h1 learned from the other ToR comes back (not transit).
        assert received(fabric, tor, h1) == {f"{SNAT['h1']}/32", f"{FIP}/32"}
        wait_for(lambda t=tor, a=h2: received(fabric, t, a) == {f"{SNAT['h2']}/32"}, 10,
                 what=f"{tor} from h2")  # fmt: skip
        path = fabric.best(tor, FIP)
        assert path["nexthops"][0]["ip"] == h1 and path["community"]["list"] == ["64999:100"]
        assert len(fabric.paths(tor, FIP)) == 1  # h2 passes on nothing of h1's


def test_the_default_route_comes_over_both_links_and_the_echoes_are_seen(fabric):
    names = fabric.names
    fabric.write("h1", add=[(FIP, 100)])
    with routes.Kernel(routes.open_socket(names["h2"])) as kernel:

        def main_table() -> dict[str, routes.rt.Route]:
            return {str(r.prefix): r for r in kernel.routes() if r.table == 254}

        def gateways() -> set[str]:
            default = main_table().get("0.0.0.0/0")
            return {str(g) for g in default.gateways} if default else set()

        # Both ToRs have their own ASN: both next hops only with multipath-relax.
        wait_for(lambda: gateways() == {"10.254.2.0", "10.254.2.2"}, 10, what="ECMP default")
        wait_for(lambda: f"{FIP}/32" in main_table(), 10, what="h1's FIP seen on h2")
        table = main_table()
        echo = table[f"{FIP}/32"]
        assert echo.protocol == 186 and echo.kind == routes.rt.RTN_UNICAST  # zebra's BGP route


def test_a_moved_route_wins_at_once_and_the_host_it_left_stops_by_itself(fabric):
    fabric.write("h1", add=[(FIP, 100)])
    wait_for(lambda: fabric.best("ta", FIP) is not None, 10, what="h1's FIP on ta")
    t0 = time.monotonic()
    fabric.write("h2", add=[(FIP, 101)])  # the migration's destination: MOVED
    for tor, (_asn, offset) in TORS.items():
        h2 = f"10.254.2.{offset + 1}"
        wait_for(
            lambda t=tor, a=h2: (fabric.best(t, FIP) or {}).get("nexthops", [{}])[0].get("ip") == a,
            5,
            what=f"{tor}'s best path for the FIP moved to h2",
        )
    moved = time.monotonic() - t0
    # h1 still has its route in its table, but prefers the MOVED echo (local preference
    # 150 over its own path at weight 0) and withdraws: only h2's path is left.
    wait_for(lambda: len(fabric.paths("ta", FIP)) == 1, 5, what="h1's path withdrawn")
    assert fabric.best("ta", FIP)["community"]["list"] == ["64999:200"]
    assert fabric.best("ta", FIP)["locPrf"] == 200
    # h1 lets go; after the hold h2 turns LIVE: added before deleted, the best path stays.
    fabric.write("h1", delete=[(FIP, 100)])
    fabric.write("h2", add=[(FIP, 100)], delete=[(FIP, 101)])
    wait_for(
        lambda: (fabric.best("ta", FIP) or {}).get("community", {}).get("list") == ["64999:100"],
        5,
        what="h2's route LIVE on ta",
    )
    assert fabric.best("ta", FIP)["nexthops"][0]["ip"] == "10.254.2.1"
    print(f"\nMOVED route written -> both ToRs' best path on the destination: {moved:.3f} s")


def test_frr_left_in_a_deleted_namespace_is_stopped_and_a_live_labs_is_not():
    lab = secrets.token_hex(3)
    base = make_rundir(lab)
    names = [f"ovsnat-{lab}-x{i}" for i in range(2)]
    nodes = [FrrNode(ns, os.path.join(base, ns[-2:])) for ns in names]
    try:
        for node in nodes:
            subprocess.run(["ip", "netns", "add", node.ns], check=True, timeout=30)
            node.start()
        pids = [[node._pid(d) for d in ("zebra", "bfdd", "bgpd")] for node in nodes]
        subprocess.run(["ip", "netns", "del", names[0]], check=True, timeout=30)
        stopped = frr.stop_orphans()
        assert {str(p) for p in pids[0]} <= set(stopped), (pids, stopped)
        assert not any(sh.pid_alive(p) for p in pids[0])
        assert all(sh.pid_alive(p) for p in pids[1])  # its namespace is still there
    finally:
        for node in nodes:
            node.stop()
            subprocess.run(["ip", "netns", "del", node.ns], capture_output=True, timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def fresh_on(fabric: BgpFabric, node: str, peer: str, prefixes: set[str]) -> bool:
    """Every prefix received from `peer`, none of them stale."""
    answer = fabric.received(node, peer)
    return set(answer) >= prefixes and not any(
        path.get("stale") for prefix in prefixes for path in answer.get(prefix, [])
    )


def test_an_frr_restart_on_a_host_keeps_its_routes_on_the_tors_and_refreshes_them(fabric):
    nodes = fabric.nodes
    many = {f"203.0.113.{n}" for n in range(100, 200)}
    fabric.write("h1", add=[(ip, 100) for ip in many])
    wanted = {f"{ip}/32" for ip in many}
    wait_for(lambda: fresh_on(fabric, "ta", "10.254.1.1", wanted), 10, what="100 routes on ta")
    nodes["h1"].stop()
    # Graceful restart, the ToR a helper: the paths stay (stale) while h1's FRR is away,
    # so traffic keeps its way in.
    wait_for(
        lambda: all(p.get("stale") for p in fabric.paths("ta", "203.0.113.150")),
        10,
        what="h1's paths stale on ta",
    )
    assert received(fabric, "ta", "10.254.1.1") >= wanted
    started = time.monotonic()
    nodes["h1"].start()  # zebra imports the tables again: nothing written by ovsnat
    nodes["h1"].configure(render(host_settings(1), "h1"))
    wait_for(lambda: fabric.established("ta") == 2, 10, what="h1 back on ta")
    up = time.monotonic()
    wait_for(lambda: fresh_on(fabric, "ta", "10.254.1.1", wanted), 2, what="fresh in 2 s")
    fresh = time.monotonic()
    print(f"\nFRR restart: start -> Established {up - started:.2f} s, -> fresh {fresh - up:.2f} s")
    fabric.write("h1", delete=[(ip, 100) for ip in many])


def test_a_frozen_tor_leaves_the_default_route_within_a_second_by_bfd(fabric):
    names, nodes = fabric.names, fabric.nodes
    with routes.Kernel(routes.open_socket(names["h1"])) as kernel:

        def gateways() -> set[str]:
            default = next(
                (r for r in kernel.routes() if r.table == 254 and r.prefix.prefixlen == 0), None
            )
            return {str(g) for g in default.gateways} if default else set()

        both = {"10.254.1.0", "10.254.1.2"}
        wait_for(lambda: gateways() == both, 10, what="both ToRs in h1's default")
        frozen = [nodes["ta"]._pid(d) for d in ("bgpd", "bfdd")]
        try:
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            t0 = time.monotonic()
            wait_for(lambda: gateways() == {"10.254.1.2"}, 1.0, what="ta gone from the default")
            print(f"\nfrozen ToR out of h1's default route after {time.monotonic() - t0:.2f} s")
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        wait_for(lambda: gateways() == both, 30, what="ta back in h1's default")
    all_sessions_up(fabric)


def test_a_host_past_its_cap_sends_at_most_the_cap_and_the_session_stays_up(fabric):
    all_sessions_up(fabric)
    nodes = fabric.nodes
    capped = dataclasses.replace(host_settings(1), max_routes=50)  # maximum-prefix-out
    nodes["h1"].configure(render(capped, "h1"))
    many = [f"203.0.113.{n}" for n in range(100, 160)]
    try:
        fabric.write("h1", add=[(ip, 100) for ip in many])
        count = lambda: len(received(fabric, "ta", "10.254.1.1"))  # noqa: E731
        wait_for(lambda: count() == 50, 10, what="50 of h1's 60 routes on ta")
        time.sleep(0.5)  # nothing more follows, and the session is up
        assert count() == 50 and session_state(fabric, "ta", "10.254.1.1") == "Established"
    finally:
        fabric.write("h1", delete=[(ip, 100) for ip in many])
        nodes["h1"].configure(render(host_settings(1), "h1"))
