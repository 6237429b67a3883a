"""Which ToRs the select group uses (ovsnat.runtime.next_hops), from the kernel's own view:
the accepted routes' next hops that are link peers, with a usable MAC. Pure; the same
watch against a real kernel is in tests/test_routes_lab.py."""

from __future__ import annotations

import netaddr

from ovsnat.core.effects import EchoesSeen, NextHops
from ovsnat.model.bgp import parse_bgp
from ovsnat.runtime import rtnetlink as rt
from ovsnat.runtime.next_hops import MAIN_TABLE, KernelView, NextHopWatch, echoes, next_hops

BGP = parse_bgp(
    {
        "external_mode": "bgp",
        "bgp_asn": "4200100001",
        "bgp_uplinks": "up0,up1",
        "bgp_kernel_ports": "bgp0,bgp1",
        "bgp_links": "10.254.1.1/31,10.254.1.3/31",
    },
    netaddr.IPNetwork("203.0.113.0/24"),
)
A, B = netaddr.IPAddress("10.254.1.0"), netaddr.IPAddress("10.254.1.2")
MAC_A, MAC_B = netaddr.EUI("02:aa:00:00:00:01"), netaddr.EUI("02:bb:00:00:00:02")
DEFAULT = netaddr.IPNetwork("0.0.0.0/0")


def route(prefix=DEFAULT, *gateways, table=MAIN_TABLE, kind=rt.RTM_NEWROUTE) -> rt.Message:
    return rt.Message(kind, 0, 0, rt.Route(prefix, table, 186, rt.RTN_UNICAST, gateways))


def neigh(ip, mac, state=rt.NUD_REACHABLE, kind=rt.RTM_NEWNEIGH, ifindex=5) -> rt.Message:
    return rt.Message(kind, 0, 0, rt.Neighbor(ip, mac, ifindex, state))


def view(*messages) -> KernelView:
    v = KernelView.of(BGP)
    for m in messages:
        v.apply(m)
    return v


def test_both_tors_of_an_ecmp_default_with_their_macs():
    v = view(route(DEFAULT, A, B), neigh(A, MAC_A), neigh(B, MAC_B, rt.NUD_STALE))
    assert next_hops(v, BGP).hops == ((str(A), MAC_A), (str(B), MAC_B))


def test_a_hop_bfd_removed_or_without_a_usable_mac_is_not_used():
    v = view(route(DEFAULT, A, B), neigh(A, MAC_A), neigh(B, MAC_B))
    v.apply(route(DEFAULT, A))  # zebra replaced the route: B's session went down
    assert next_hops(v, BGP).hops == ((str(A), MAC_A),)
    v.apply(route(DEFAULT, A, B))
    v.apply(neigh(B, MAC_B, state=0x20))  # NUD_FAILED: B does not answer ARP
    assert next_hops(v, BGP).hops == ((str(A), MAC_A),)
    v.apply(route(DEFAULT, A, B, kind=rt.RTM_DELROUTE))
    assert next_hops(v, BGP).hops == ()


def test_only_accepted_routes_in_the_main_table_through_link_peers_count():
    other = netaddr.IPAddress("10.254.7.1")
    v = view(
        neigh(A, MAC_A),
        neigh(other, MAC_B),
        route(netaddr.IPNetwork("198.51.100.0/24"), A),  # not accepted (default only)
        route(DEFAULT, A, table=100),  # another table
        route(DEFAULT, other),  # not a ToR of ours
    )
    assert next_hops(v, BGP).hops == ()
    v.apply(route(DEFAULT, A))  # positive control: the same hop, on an accepted route
    assert next_hops(v, BGP).hops == ((str(A), MAC_A),)


def test_a_neighbour_deleted_takes_its_tor_out():
    v = view(route(DEFAULT, A, B), neigh(A, MAC_A), neigh(B, MAC_B))
    v.apply(neigh(B, MAC_B, kind=rt.RTM_DELNEIGH))
    assert next_hops(v, BGP).hops == ((str(A), MAC_A),)


def test_of_two_defaults_only_the_one_with_the_lower_metric_counts():
    """A management default (metric 100, through a ToR too) beside zebra's (metric 20):
    the kernel uses zebra's, and deleting either leaves the other."""
    zebra = rt.Route(DEFAULT, MAIN_TABLE, 186, rt.RTN_UNICAST, (A, B), priority=20)
    other = rt.Route(DEFAULT, MAIN_TABLE, 3, rt.RTN_UNICAST, (A,), priority=100)
    v = view(neigh(A, MAC_A), neigh(B, MAC_B))
    for body in (other, zebra):
        v.apply(rt.Message(rt.RTM_NEWROUTE, 0, 0, body))
    assert next_hops(v, BGP).hops == ((str(A), MAC_A), (str(B), MAC_B))
    v.apply(rt.Message(rt.RTM_DELROUTE, 0, 0, zebra))
    assert next_hops(v, BGP).hops == ((str(A), MAC_A),)


def fip_route(ip: str, protocol: int, kind=rt.RTM_NEWROUTE, kind_rtn=rt.RTN_UNICAST):
    prefix = netaddr.IPNetwork(f"{ip}/32")
    return rt.Message(kind, 0, 0, rt.Route(prefix, MAIN_TABLE, protocol, kind_rtn, (A, B), 20))


def test_echoes_are_the_other_hosts_fips_as_bgp_routes_and_never_our_own():
    """Another host's FIP comes back from the ToRs as a BGP /32 in the announced range;
    once this host announces it too, zebra installs its own import (proto zebra, a
    blackhole) in its place, and it is no echo any more."""
    v = view(route(DEFAULT, A, B), fip_route("203.0.113.50", 186), fip_route("198.51.100.7", 186))
    v.apply(route(netaddr.IPNetwork("203.0.113.0/25"), A))
    assert echoes(v).addresses == {"203.0.113.50"}  # not outside the range, not a /25
    v.apply(fip_route("203.0.113.50", 11, kind_rtn=rt.RTN_BLACKHOLE))  # our own import won
    assert echoes(v).addresses == set()
    v.apply(fip_route("203.0.113.51", 186))
    assert echoes(v).addresses == {"203.0.113.51"}
    v.apply(fip_route("203.0.113.51", 186, kind=rt.RTM_DELROUTE))  # the other host withdrew
    assert echoes(v).addresses == set()


def test_the_watch_posts_echoes_only_while_a_next_hop_is_usable():
    """FRR stopped: zebra takes every route, the default and the echoes. That says nothing
    about who holds a FIP, so the last echo set stands until FRR's routes are back."""
    posted: list = []
    watch = NextHopWatch(BGP, posted.append)
    v = view()
    v.apply(fip_route("203.0.113.50", 186))  # FRR not up yet: no default, an echo
    watch._tell(v)
    assert posted == [NextHops(())]  # no echo set yet: the FIPs wait for one
    v.apply(route(DEFAULT, A, B))
    v.apply(neigh(A, MAC_A))
    watch._tell(v)
    assert posted[-2:] == [NextHops(((str(A), MAC_A),)), EchoesSeen(frozenset({"203.0.113.50"}))]
    v.apply(route(DEFAULT, A, B, kind=rt.RTM_DELROUTE))  # FRR stops: zebra takes it all
    v.apply(fip_route("203.0.113.50", 186, kind=rt.RTM_DELROUTE))
    watch._tell(v)
    assert posted[-1] == NextHops(())  # the echo set stands
    v.apply(route(DEFAULT, A, B))  # FRR is back; the echo may follow (the core waits for it)
    watch._tell(v)
    assert posted[-1] == EchoesSeen(frozenset())
    many = [fip_route(str(ip), 186) for ip in list(netaddr.IPNetwork("203.0.113.128/25"))]
    for message in many:
        v.apply(message)
    watch._tell(v)
    assert len(posted[-1].addresses) == 128
