"""bgp mode's kernel side (docs/bgp.md, build plan slice 2), against a real kernel in a
namespace: ovsnat's blackhole /32s written over rtnetlink in one batch and read back as
`ip route` shows them, deletes that are level-triggered, and the routes and neighbours
that zebra and the kernel report (the echoes, the default's two next hops, the ToRs'
MACs), as dumps and as a subscription. No FRR here: `ip` plays zebra's part."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time

import netaddr
import pytest

from ovsnat.runtime import routes
from ovsnat.runtime import rtnetlink as rt

pytestmark = pytest.mark.lab

LIVE, MOVED = 100, 101


def ip(ns: str, *args: str) -> str:
    return subprocess.run(
        ["ip", "-n", ns, *args], check=True, capture_output=True, text=True, timeout=30
    ).stdout


@pytest.fixture
def ns():
    """A namespace with two /31 links (a veth pair: this kernel has no dummy devices)."""
    name = f"ovsnat-{secrets.token_hex(3)}-rt"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        ip(name, "link", "add", "bgp0", "type", "veth", "peer", "name", "bgp1")
        ip(name, "addr", "add", "10.254.1.1/31", "dev", "bgp0")
        ip(name, "addr", "add", "10.254.1.2/31", "dev", "bgp1")
        for dev in ("lo", "bgp0", "bgp1"):
            ip(name, "link", "set", dev, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


def table(ns: str, number: int) -> set[str]:
    shown = json.loads(ip(ns, "-j", "route", "show", "table", str(number), "proto", "250"))
    assert all(r["type"] == "blackhole" for r in shown), shown
    return {r["dst"] for r in shown}


def fips(n: int, start: int = 0) -> list[netaddr.IPNetwork]:
    base = int(netaddr.IPAddress("203.0.113.0"))
    return [netaddr.IPNetwork(f"{netaddr.IPAddress(base + i)}/32") for i in range(start, n)]


def test_a_thousand_routes_go_in_one_apply_and_read_back_as_ip_shows_them(ns):
    with routes.Kernel(routes.open_socket(ns)) as kernel:
        many = [netaddr.IPNetwork(f"10.{i // 250}.{i % 250}.1/32") for i in range(1000)]
        assert kernel.apply([(p, LIVE) for p in many] + [(fips(1)[0], MOVED)], []) == []
        assert table(ns, LIVE) == {str(p.ip) for p in many}
        assert table(ns, MOVED) == {"203.0.113.0"}
        # A route of another protocol in the same table is not ovsnat's.
        ip(ns, "route", "add", "blackhole", "198.51.100.7/32", "table", str(LIVE))
        mine = routes.ours(kernel.routes(), (LIVE, MOVED))
        assert mine == {(p, LIVE) for p in many} | {(fips(1)[0], MOVED)}
        # Adding again replaces in place: no error, no duplicate.
        assert kernel.apply([(many[0], LIVE)], []) == []
        assert len(table(ns, LIVE)) == 1000


def test_deletes_are_level_triggered_and_a_refusal_names_its_route(ns):
    with routes.Kernel(routes.open_socket(ns)) as kernel:
        first = fips(3)
        assert kernel.apply([(p, LIVE) for p in first], []) == []
        # Moving a route between tables: added to the new one, deleted from the old one.
        assert kernel.apply([(first[0], MOVED)], [(first[0], LIVE)]) == []
        assert table(ns, LIVE) == {"203.0.113.1", "203.0.113.2"}
        assert table(ns, MOVED) == {"203.0.113.0"}
        # Deleting what is already gone is done, not failed.
        assert kernel.apply([], [(first[0], LIVE), (first[1], LIVE)]) == []
        assert table(ns, LIVE) == {"203.0.113.2"}
        # A refusal names each route it hit: the same batch from a process without
        # CAP_NET_ADMIN (the kernel's EPERM), nothing written.
        probe = (
            "from ovsnat.runtime import routes; import netaddr; "
            "k = routes.Kernel(routes.open_socket()); "
            "print([str(f) for f in k.apply([(netaddr.IPNetwork('203.0.113.9/32'), 100)], "
            "[(netaddr.IPNetwork('203.0.113.2/32'), 100)])])"
        )
        done = subprocess.run(
            ["ip", "netns", "exec", ns, "setpriv", "--bounding-set", "-net_admin",
             "--inh-caps", "-net_admin", sys.executable, "-c", probe],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == (
            "['203.0.113.9/32 table 100: EPERM', '203.0.113.2/32 table 100: EPERM']"
        )
        assert table(ns, LIVE) == {"203.0.113.2"}


def test_zebras_routes_and_the_tors_macs_are_read_from_the_dumps(ns):
    with routes.Kernel(routes.open_socket(ns)) as kernel:
        ip(ns, "route", "add", "default", "proto", "bgp", "metric", "20",
           "nexthop", "via", "10.254.1.0", "nexthop", "via", "10.254.1.3")  # fmt: skip
        ip(ns, "route", "add", "203.0.113.50/32", "via", "10.254.1.0", "proto", "bgp")
        ip(ns, "neigh", "replace", "10.254.1.0", "lladdr", "02:aa:00:00:00:01", "dev", "bgp0",
           "nud", "reachable")  # fmt: skip
        by_prefix = {str(r.prefix): r for r in kernel.routes() if r.table == 254}
        default, echo = by_prefix["0.0.0.0/0"], by_prefix["203.0.113.50/32"]
        assert [str(g) for g in default.gateways] == ["10.254.1.0", "10.254.1.3"]
        assert default.protocol == echo.protocol == 186  # RTPROT_BGP, as zebra installs them
        assert [str(g) for g in echo.gateways] == ["10.254.1.0"]
        tor = {str(n.ip): n for n in kernel.neighbors()}["10.254.1.0"]
        assert tor.usable and str(tor.mac) == "02-AA-00-00-00-01"


def test_a_subscription_sees_routes_and_neighbours_come_and_go(ns, request):
    watch = routes.open_socket(ns, rt.RTMGRP_IPV4_ROUTE | rt.RTMGRP_NEIGH)
    request.addfinalizer(watch.close)
    ip(ns, "route", "add", "203.0.113.60/32", "via", "10.254.1.3", "proto", "bgp")
    ip(ns, "neigh", "replace", "10.254.1.3", "lladdr", "02:bb:00:00:00:02", "dev", "bgp1",
       "nud", "reachable")  # fmt: skip
    ip(ns, "route", "del", "203.0.113.60/32")
    seen: list[rt.Message] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(seen) < 3:
        seen += [m for m in rt.parse(watch.recv(1 << 16)) if m.body is not None]
    kinds = [(m.kind, type(m.body).__name__) for m in seen[:3]]
    assert kinds == [
        (rt.RTM_NEWROUTE, "Route"),
        (rt.RTM_NEWNEIGH, "Neighbor"),
        (rt.RTM_DELROUTE, "Route"),
    ], seen
    assert str(seen[0].body.prefix) == "203.0.113.60/32"
    assert str(seen[1].body.mac) == "02-BB-00-00-00-02"


def test_the_writer_answers_each_effect_with_what_the_kernel_refused(ns, caplog):
    from ovsnat.core.effects import Routes
    from ovsnat.runtime.route_writer import RouteWriter

    answers = []
    writer = RouteWriter(answers.append, namespace=ns)
    effect = Routes(tuple((p, LIVE) for p in fips(3)), ())
    done = writer.apply(effect)
    assert (done.routes, done.failed, done.error) == (effect, (), "")
    assert table(ns, LIVE) == {"203.0.113.0", "203.0.113.1", "203.0.113.2"}
    # No socket at all (the namespace is gone): every route failed, one log line, and the
    # next write opens a socket again.
    gone = RouteWriter(answers.append, namespace=f"{ns}-gone")
    failed = gone.apply(effect)
    assert failed.failed == effect.add and failed.error.startswith("FileNotFoundError")
    assert "writing 3 routes" in caplog.text
    gone.namespace = ns
    assert gone.apply(Routes((), effect.add[:1])).failed == ()
    assert table(ns, LIVE) == {"203.0.113.1", "203.0.113.2"}


def test_the_next_hop_watch_follows_the_default_routes_hops_and_their_macs(ns):
    """What the select group follows (ovsnat.runtime.next_hops), from a real kernel: the
    default's next hops (as zebra installs them: one per ToR whose session is up) with
    their MACs, each change posted once; and the other hosts' /32s (echoes) as BGP routes."""
    import queue
    import threading

    from ovsnat.core.effects import EchoesSeen, OwnRoutes
    from ovsnat.model.bgp import parse_bgp
    from ovsnat.runtime.next_hops import NextHopWatch

    links = {"bgp_uplinks": "up0,up1", "bgp_kernel_ports": "bgp0,bgp1",
             "bgp_links": "10.254.1.1/31,10.254.1.2/31"}  # fmt: skip
    bgp = parse_bgp(
        {"external_mode": "bgp", "bgp_asn": "4200100001", **links},
        netaddr.IPNetwork("203.0.113.0/24"),
    )
    posted: queue.Queue = queue.Queue()
    own: list = []
    echoes: list = []
    watch = NextHopWatch(bgp, posted.put, namespace=ns)
    thread = threading.Thread(target=watch.watch, daemon=True)
    thread.start()

    def hops_become(expected: tuple) -> None:
        deadline, last = time.monotonic() + 5, None
        while time.monotonic() < deadline:
            try:
                item = posted.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(item, (OwnRoutes, EchoesSeen)):
                (own if isinstance(item, OwnRoutes) else echoes).append(item)
                continue
            last = tuple((a, str(m)) for a, m in item.hops)
            if last == expected:
                return
        raise AssertionError(f"hops {last}, wanted {expected}")

    a, b = ("10.254.1.0", "02-AA-00-00-00-01"), ("10.254.1.3", "02-BB-00-00-00-02")
    try:
        hops_become(())  # the first dump: no default route yet
        assert own == [OwnRoutes(frozenset())]  # and none of ovsnat's routes either
        for addr, mac, dev in ((a[0], a[1], "bgp0"), (b[0], b[1], "bgp1")):
            ip(ns, "neigh", "replace", addr, "lladdr", mac.replace("-", ":"), "dev", dev,
               "nud", "reachable")  # fmt: skip
        ip(ns, "route", "add", "default", "proto", "bgp", "nexthop", "via", a[0], "dev",
           "bgp0", "nexthop", "via", b[0], "dev", "bgp1")  # fmt: skip
        hops_become((a, b))
        ip(ns, "route", "replace", "default", "proto", "bgp", "via", b[0], "dev", "bgp1")
        hops_become((b,))  # ToR A's session went down: zebra keeps B only
        assert echoes == [EchoesSeen(frozenset())]  # none so far, said once
        for fip, proto in (("203.0.113.50", "bgp"), ("203.0.113.51", "250")):
            ip(ns, "route", "add", f"{fip}/32", "proto", proto, "via", b[0], "dev", "bgp1")
        item = posted.get(timeout=5)
        while not isinstance(item, EchoesSeen):
            item = posted.get(timeout=5)
        assert item == EchoesSeen(frozenset({"203.0.113.50"}))  # BGP's only, not ovsnat's
        ip(ns, "neigh", "del", b[0], "dev", "bgp1")
        hops_become(())  # no MAC for B: no ToR to send to
    finally:
        watch.stop()
        thread.join(5)
    assert not thread.is_alive()
