"""The rtnetlink codec of bgp mode (pure): requests as the kernel reads them, and a parser
that never raises on what it is handed, whole, cut short or random (the kernel is trusted,
but a bug there must not take the controller down). tests/test_routes_lab.py runs the same
messages against a real kernel."""

from __future__ import annotations

import netaddr
from hypothesis import given
from hypothesis import strategies as st

from ovsnat.runtime import rtnetlink as rt

PREFIX = netaddr.IPNetwork("203.0.113.50/32")


def test_a_blackhole_request_reads_back_as_the_route_it_asks_for():
    request = rt.blackhole(rt.RTM_NEWROUTE, 7, PREFIX, 101)
    (message,) = rt.parse(request)
    assert (message.kind, message.seq) == (rt.RTM_NEWROUTE, 7)
    assert message.flags & rt.NLM_F_ACK and message.flags & rt.NLM_F_REPLACE
    assert message.body == rt.Route(PREFIX, 101, rt.PROTO_OVSNAT, rt.RTN_BLACKHOLE)
    delete = rt.parse(rt.blackhole(rt.RTM_DELROUTE, 8, PREFIX, 100))[0]
    assert not delete.flags & rt.NLM_F_CREATE and delete.body.table == 100


def test_several_messages_in_one_read_are_all_read_in_order():
    data = b"".join(rt.blackhole(rt.RTM_NEWROUTE, i, PREFIX, 100) for i in range(1, 4))
    assert [m.seq for m in rt.parse(data)] == [1, 2, 3]


@given(st.binary(max_size=512))
def test_random_bytes_never_raise(data):
    for message in rt.parse(data):
        assert message.body is None or isinstance(message.body, (rt.Route, rt.Neighbor, rt.Ack))


@given(st.integers(min_value=0, max_value=200), st.binary(max_size=16))
def test_a_message_cut_short_or_with_garbage_after_never_raises(cut, tail):
    data = rt.blackhole(rt.RTM_NEWROUTE, 1, PREFIX, 100) + tail
    rt.parse(data[:cut])
    rt.parse(data)


def test_a_route_with_an_impossible_prefix_length_is_not_read():
    bad = bytearray(rt.blackhole(rt.RTM_NEWROUTE, 1, PREFIX, 100))
    bad[rt.HEADER.size + 1] = 40  # rtm_dst_len
    (message,) = rt.parse(bytes(bad))
    assert message.body is None


def multipath_route(metric: int, *hops: tuple[str, int]) -> bytes:
    """RTM_NEWROUTE of 0.0.0.0/0 with a metric and next hops (address, rtnh flags), as the
    kernel reports zebra's ECMP default."""
    nexthops = b""
    for address, flags in hops:
        gateway = rt._attr(rt.RTA_GATEWAY, netaddr.IPAddress(address).packed)
        nexthops += rt.RTNH.pack(rt.RTNH.size + len(gateway), flags, 0, 5) + gateway
    rtm = rt.RTMSG.pack(rt.AF_INET, 0, 0, 0, 254, 186, rt.RT_SCOPE_UNIVERSE, rt.RTN_UNICAST, 0)
    attrs = rt._attr(rt.RTA_PRIORITY, metric.to_bytes(4, "little"))
    attrs += rt._attr(rt.RTA_MULTIPATH, nexthops)
    return rt._message(rt.RTM_NEWROUTE, 0, 0, rtm + attrs)


def test_a_multipath_route_reads_its_metric_and_only_the_hops_the_kernel_uses():
    (message,) = rt.parse(multipath_route(20, ("10.254.1.0", 0), ("10.254.1.2", 0)))
    assert [str(g) for g in message.body.gateways] == ["10.254.1.0", "10.254.1.2"]
    assert message.body.priority == 20
    dead, linkdown = 0x1, 0x10  # RTNH_F_DEAD, RTNH_F_LINKDOWN
    for flags in (dead, linkdown):
        (message,) = rt.parse(multipath_route(20, ("10.254.1.0", flags), ("10.254.1.2", 0)))
        assert [str(g) for g in message.body.gateways] == ["10.254.1.2"]
