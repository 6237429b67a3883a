"""East-west routing's keys (docs/routers.md, issue 26 item 2), pure: a network's definition
in its `ovsnat-net-*` key, the hosts' routed MACs, the remote neighbours, the router tags;
every bad value fails safe with one problem naming the key and the value, and touches
nothing else. The flows are tests/test_eastwest.py's; the packets tests/test_eastwest_lab.py's.
"""

from __future__ import annotations

import netaddr
import pytest

from ovsnat.model.eastwest import router_tags
from ovsnat.model.routing import parse_bridge

A = "router=r1;cidr=10.1.0.0/24;gw=10.1.0.1;vlan=101"
C = "router=r1;cidr=10.2.0.0/24;gw=10.2.0.1;vlan=103"
R1 = {"ovsnat-router-r1": "ext=-;snat=off"}
HOSTS = {
    "ovsnat-host": "hv1",
    "ovsnat-hostmac-hv1": "fa:16:3f:00:00:01",
    "ovsnat-hostmac-hv2": "fa:16:3f:00:00:02",
}


def keys(**extra) -> dict[str, str]:
    return {**R1, "ovsnat-net-tenant-a": A, "ovsnat-net-tenant-c": C, **HOSTS, **extra}


def test_networks_defined_by_their_keys_are_routed_east_west_with_their_routers_tag():
    got = parse_bridge(keys())
    a, c = got.of("tenant-a"), got.of("tenant-c")
    assert not got.problems
    assert a.east_west and a.tag == c.tag != 0
    assert (str(a.net.cidr), str(a.net.gateway), a.net.vlan) == ("10.1.0.0/24", "10.1.0.1", 101)
    assert set(got.east_west()) == {"tenant-a", "tenant-c"}
    assert (got.hosts.name, str(got.hosts.mac)) == ("hv1", "FA-16-3F-00-00-01")
    assert list(got.hosts.others) == ["hv2"]


def test_an_untagged_definition_and_a_router_without_key_still_route_east_west():
    got = parse_bridge({"ovsnat-net-flat": "router=r9;cidr=10.3.0.0/24;gw=10.3.0.1;vlan=-"})
    flat = got.of("flat")
    assert flat.net.vlan is None and flat.east_west  # no gateway, east-west only
    assert not flat.fips and list(got.problems) == ["ovsnat-net-flat"]  # r9 has no key


def test_a_key_without_definition_is_routed_as_item_1_says_but_not_east_west():
    got = parse_bridge({**R1, "ovsnat-net-tenant-a": "router=r1"})
    assert got.of("tenant-a").routed and not got.of("tenant-a").east_west
    assert not got.problems and got.east_west() == {}


def test_tags_are_stable_distinct_and_never_zero():
    ids = [f"router-{n}" for n in range(2000)]
    tags = router_tags(ids)
    assert len(set(tags.values())) == len(ids) and 0 not in tags.values()
    assert router_tags(ids[:10]) == {i: tags[i] for i in ids[:10]}  # others change nothing
    assert all(t < 1 << 31 for t in tags.values())


@pytest.mark.parametrize(
    "value,words",
    [
        ("router=r1;cidr=10.1.0.0/24;gw=10.1.0.1", "defines the network without vlan="),
        ("router=r1;vlan=101", "defines the network without cidr="),
        ("router=r1;cidr=10.1.0.0;gw=10.1.0.1;vlan=101", "needs a prefix length"),
        ("router=r1;cidr=10.1.0.0/24;gw=10.9.0.1;vlan=101", "10.9.0.1 is not a host address"),
        ("router=r1;cidr=10.1.0.0/24;gw=x;vlan=101", "'x' is not an IPv4 address"),
        ("router=r1;cidr=10.1.0.0/24;gw=10.1.0.1;vlan=4095", "vlan '4095' is not a VLAN"),
        ("router=r1;cidr=10.1.0.0/24;gw=10.1.0.1;vlan=101;cidr=10.2.0.0/24", "is not router="),
        ("router=r1;cidr=10.1.0.0/24;gw=10.1.0.1;vlan=101;mtu=1500", "is not router="),
    ],
)
def test_a_bad_definition_isolates_the_network_with_one_problem(value, words):
    got = parse_bridge(keys(**{"ovsnat-net-tenant-a": value}))
    assert list(got.problems) == ["ovsnat-net-tenant-a"], got.problems
    problem = got.problems["ovsnat-net-tenant-a"]
    assert problem.startswith("bridge external_ids:ovsnat-net-tenant-a: ") and words in problem
    assert problem.endswith("network tenant-a is isolated")
    assert not got.of("tenant-a").routed and not got.of("tenant-a").east_west
    assert got.of("tenant-c").east_west  # the router's other network is untouched


@pytest.mark.parametrize(
    "other,why",
    [
        ("router=r1;cidr=10.1.0.128/25;gw=10.1.0.129;vlan=104", "overlap on one router"),
        ("router=r2;cidr=10.8.0.0/24;gw=10.8.0.1;vlan=101", "one VLAN, two networks"),
    ],
)
def test_a_clash_leaves_the_later_network_out_of_east_west_and_says_so(other, why):
    got = parse_bridge(keys(**{"ovsnat-net-tenant-z": other, "ovsnat-router-r2": "ext=-;snat=on"}))
    assert list(got.problems) == ["ovsnat-net-tenant-z"], why
    assert "clashes with network tenant-a" in got.problems["ovsnat-net-tenant-z"]
    z = got.of("tenant-z")
    assert z.routed and not z.east_west  # still on its router (item 1), not east-west
    assert got.of("tenant-a").east_west and got.of("tenant-c").east_west


def test_overlapping_networks_of_different_routers_are_both_routed():
    b = "router=r2;cidr=10.1.0.0/24;gw=10.1.0.1;vlan=102"
    got = parse_bridge(keys(**{"ovsnat-net-tenant-b": b, "ovsnat-router-r2": "ext=-;snat=on"}))
    assert not got.problems
    assert got.of("tenant-b").east_west and got.of("tenant-b").tag != got.of("tenant-a").tag


def test_neighbours_are_read_and_a_bad_entry_skips_only_itself():
    nb = (
        "10.2.0.20=02:00:0a:02:00:14@hv2, 10.2.0.21=02:00:0a:02:00:15@hv3,"
        "10.9.0.1=02:00:0a:02:00:16@hv2,10.2.0.22=01:00:5e:00:00:01@hv2,junk,"
        "10.2.0.20=02:00:0a:02:00:17@hv2,10.2.0.23=02:00:0a:02:00:18@bad host"
    )
    got = parse_bridge(keys(**{"ovsnat-nb-tenant-c": nb}))
    assert [(str(n.ip), n.host) for n in got.neighbours["tenant-c"]] == [
        ("10.2.0.20", "hv2"),
        ("10.2.0.21", "hv3"),
    ]
    problem = got.problems["ovsnat-nb-tenant-c"]
    assert list(got.problems) == ["ovsnat-nb-tenant-c"]
    assert "'10.9.0.1=02:00:0a:02:00:16@hv2': 10.9.0.1 is not a host address of 10.2.0.0/24" in (
        problem
    )
    assert "(and 4 more); skipped" in problem


def test_neighbours_of_a_network_not_routed_east_west_mean_nothing_here():
    got = parse_bridge(keys(**{"ovsnat-nb-tenant-x": "junk", "ovsnat-nb-tenant-a": ""}))
    assert not got.problems and got.neighbours == {"tenant-a": ()}


@pytest.mark.parametrize(
    "extra,key,words,own",
    [
        (
            {"ovsnat-hostmac-hv2": "fa:16:3f:00:00:01"},
            "ovsnat-hostmac-hv1",
            "used for neither",
            None,
        ),
        ({"ovsnat-hostmac-hv1": "01:16:3f:00:00:01"}, "ovsnat-hostmac-hv1", "multicast", None),
        ({"ovsnat-host": "hv 1"}, "ovsnat-host", "is not a host name", None),
        ({"ovsnat-host": "hv7"}, "ovsnat-host", "host hv7 has no ovsnat-hostmac-hv7", None),
        ({"ovsnat-hostmac-a/b": "fa:16:3f:00:00:09"}, "ovsnat-hostmac-a/b", "not a host", "hv1"),
    ],
)
def test_bad_host_keys_fail_safe(extra, key, words, own):
    got = parse_bridge(keys(**extra))
    assert key in got.problems and words in got.problems[key], got.problems
    assert got.hosts.name == own
    assert (got.hosts.mac is None) == (own is None)  # no own MAC: nothing across hosts
    assert got.of("tenant-a").east_west  # between this host's own VMs, still


def test_a_host_without_its_name_accepts_no_routed_mac_as_its_own():
    got = parse_bridge({k: v for k, v in keys().items() if k != "ovsnat-host"})
    assert "ovsnat-host" in got.problems and got.hosts.name is None
    assert got.hosts.mac is None
    assert netaddr.EUI("fa:16:3f:00:00:01") in got.hosts.others.values()
