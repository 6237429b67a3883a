"""`ovsnat lab up --bgp`'s fabric when a link fails (issue 30 items 4 and 5): two hosts, two
ToRs and an outside router, all FRR (ovsnat.lab.routedlab). Traffic runs through the
failure, both ways, and the longest gap is measured from the replies' sequence numbers.

- A ToR's link to a host lost: the host's bucket for it is skipped by the switch
  (watch_port) and the ToR withdraws the host's routes from the outside router (BFD).
- A ToR's link to the outside router lost: the outside router goes through the other
  ToR, and the ToR that lost it withdraws the default from the hosts.

Each test first finds the link the traffic takes (the ToRs' counters), cuts it once the
pings are seen on it, brings it back, and waits for every session before it ends.
"""

from __future__ import annotations

import json
import time

import pytest

from ovsnat.lab import routedlab
from ovsnat.lab.bgpplan import link_address
from ovsnat.lab.cli import build_default
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import SERVER_IP, Lab
from ovsnat.lab.traffic import background_ping, parse_ping, ping, ping_gap

pytestmark = pytest.mark.lab

FIP = "203.0.113.10"  # vm1's, on hv1


@pytest.fixture(scope="module")
def lab():
    lab = Lab()
    try:
        build_default(lab, 2, bgp=True)
        yield lab
    finally:
        lab.down()


def all_sessions_up(lab: Lab) -> None:
    for tor in routedlab.TOR_ASNS:
        wait_for(lambda t=tor: routedlab.Routers(lab).established(t) == 3, 30,
                 what=f"{tor}'s three sessions")  # fmt: skip
    wait_for(lambda: ping(lab.srv_ns, FIP, count=1, wait=1).received, 20, what="the FIP")


def link(lab: Lab, role: str, dev: str, state: str) -> None:
    run(["ip", "-n", lab.ns_name(role), "link", "set", dev, state])


def received(lab: Lab, role: str, dev: str) -> int:
    """Packets the router's device has received."""
    shown = run(["ip", "-n", lab.ns_name(role), "-s", "-j", "link", "show", dev]).stdout
    return int(json.loads(shown)[0]["stats64"]["rx"]["packets"])


def carrier(lab: Lab, ns: str, dst: str, dev: str) -> tuple[str, int]:
    """The ToR whose `dev` receives a burst of pings from ns to dst, and how many of them
    it got: the link the test must cut for the traffic to feel it (the select group's
    hash, or the outside router's, chose one)."""
    before = {tor: received(lab, tor, dev) for tor in routedlab.TOR_ASNS}
    assert ping(ns, dst, count=100, interval=0.01, wait=1).received > 90
    counts = {tor: received(lab, tor, dev) - before[tor] for tor in routedlab.TOR_ASNS}
    tor = max(counts, key=counts.get)
    return tor, counts[tor]


def gap_across(lab: Lab, ns: str, dst: str, tor: str, dev: str) -> tuple[float, int]:
    """Ping dst from ns every 10 ms for 6 s; once the pings are seen going through the
    ToR's `dev`, cut that link, and mend it 3 s later. Returns (the longest gap between
    two replies in seconds, the replies received)."""
    before = received(lab, tor, dev)
    bg = background_ping(ns, dst, interval=0.01, duration=6.0)
    wait_for(lambda: received(lab, tor, dev) > before + 50, 3, what=f"the pings through {tor}")
    link(lab, tor, dev, "down")
    time.sleep(3.0)
    link(lab, tor, dev, "up")
    out = bg.result(timeout=30)
    return ping_gap(out, 0.01), parse_ping(out).received


def test_a_tor_losing_its_link_to_a_host_moves_that_hosts_traffic_within_a_second(lab):
    all_sessions_up(lab)
    vm2 = lab.vms["vm2"]  # PAT on hv1: out through the group, back through a ToR
    for tor in routedlab.TOR_ASNS:
        routers = routedlab.Routers(lab)
        wait_for(lambda t=tor: routers.best_via(t, "203.0.113.11") == [link_address(1, t)],
                 20, what=f"{tor}'s path to hv1's SNAT address")  # fmt: skip
    tor, burst = carrier(lab, vm2.ns, SERVER_IP, "hv1")  # the bucket the flow hashes to
    assert burst >= 90, burst
    gap, got = gap_across(lab, vm2.ns, SERVER_IP, tor, "hv1")
    print(f"{tor}'s link to hv1 lost: longest gap {gap:.2f} s, {got} replies")
    assert got > 300, got  # the control: the traffic ran
    assert gap < 1.0, gap
    all_sessions_up(lab)


def test_a_tor_losing_its_uplink_moves_inbound_and_outbound_traffic_to_the_other(lab):
    all_sessions_up(lab)
    tor, burst = carrier(lab, lab.srv_ns, FIP, "out")  # the ToR the outside router chose
    assert burst >= 90, burst
    gap, got = gap_across(lab, lab.srv_ns, FIP, tor, "out")
    print(f"{tor}'s link to the outside router lost: longest gap {gap:.2f} s, {got} replies")
    assert got > 300, got
    assert gap < 2.0, gap
    all_sessions_up(lab)
