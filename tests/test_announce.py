"""Which /32s a host in bgp mode announces, and the kernel writes that make it so
(ovsnat.core.announce, pure; docs/bgp.md sections 3, 5 and 7). The writes are carried out
against a real kernel in tests/test_routes_lab.py."""

from __future__ import annotations

import netaddr

from ovsnat.core.announce import Announcer, Plan
from ovsnat.core.effects import Routes, RoutesDone

SNAT = netaddr.IPAddress("203.0.113.11")
A, B, C = (netaddr.IPAddress(f"203.0.113.{n}") for n in (61, 62, 63))


def key(ip, table=100):
    return (netaddr.IPNetwork(f"{ip}/32"), table)


def settled(announcer: Announcer, now: float) -> list[Routes]:
    """Every write the announcer asks for, each answered as done, until it asks no more."""
    writes = []
    while out := announcer.next(now):
        writes += out
        announcer.done(RoutesDone(out[0]), now)
    return writes


def fresh(**plan) -> Announcer:
    announcer = Announcer(Plan(**plan))
    announcer.set_snat([SNAT])
    return announcer


def test_nothing_is_written_before_the_kernel_is_read_and_a_restart_writes_nothing():
    first = fresh()
    first.live(A, "tap-a", 0.0)
    assert first.next(0.0) == []  # the tables not dumped yet
    first.seen(set())
    assert settled(first, 0.0) == [Routes((key(SNAT), key(A)), ())]
    # The restarted controller dumps the same tables and wants the same: no write at all.
    again = fresh()
    again.live(A, "tap-a", 5.0)
    again.seen(first.known)
    assert settled(again, 5.0) == []


def test_a_fip_that_leaves_is_withdrawn_and_a_stale_route_of_ours_goes():
    announcer = fresh()
    announcer.live(A, "tap-a", 0.0)
    announcer.seen({key(SNAT), key(A), key(C, 101)})  # C: left over from before a crash
    assert settled(announcer, 0.0) == [Routes((), (key(C, 101),))]
    announcer.dark(A)
    assert settled(announcer, 1.0) == [Routes((), (key(A),))]
    assert announcer.known == {key(SNAT)}


def test_a_migrated_fip_is_moved_for_the_hold_then_live_in_one_write():
    announcer = fresh(moved_hold=60.0)
    announcer.seen({key(SNAT)})
    announcer.live(A, "tap-a", 10.0, moved=True)
    assert settled(announcer, 10.0) == [Routes((key(A, 101),), ())]
    assert announcer.next_at() == 70.0 and settled(announcer, 69.9) == []
    announcer.expire(70.0)
    # Added to LIVE before it is deleted from MOVED, in the same batch: one UPDATE, and
    # never a moment without the route.
    assert settled(announcer, 70.0) == [Routes((key(A),), (key(A, 101),))]
    assert announcer.next_at() is None


def test_past_the_cap_fips_stay_dark_in_port_name_order_and_say_so():
    announcer = fresh(max_routes=3)
    announcer.seen(set())
    for ip, port in ((A, "tap-c"), (B, "tap-a"), (C, "tap-b")):
        announcer.live(ip, port, 0.0)
    (write,) = settled(announcer, 0.0)
    assert set(write.add) == {key(SNAT), key(B), key(C)}
    assert announcer.status(0.0)["capped"] == ["203.0.113.61"]
    announcer.dark(B)  # room again: the next in order is announced
    assert settled(announcer, 1.0) == [Routes((key(A),), (key(B),))]
    assert announcer.status(1.0)["capped"] == []


def test_a_refused_route_is_wanted_again_after_the_retry_and_holds_up_no_other():
    announcer = fresh()
    announcer.seen(set())
    announcer.live(A, "tap-a", 0.0)
    (write,) = announcer.next(0.0)
    assert announcer.next(0.0) == []  # one write in flight at a time
    announcer.done(RoutesDone(write, (key(A),), "203.0.113.61/32 table 100: ENOBUFS"), 0.0)
    assert announcer.known == {key(SNAT)}
    assert announcer.status(0.0)["failed"] == {
        "203.0.113.61/32 table 100": "203.0.113.61/32 table 100: ENOBUFS"
    }
    assert announcer.next(1.0) == [] and announcer.next_at() == announcer.RETRY
    # Another FIP meanwhile goes out at once, without the refused one.
    announcer.live(B, "tap-b", 2.0)
    assert settled(announcer, 2.0) == [Routes((key(B),), ())]
    assert settled(announcer, announcer.RETRY) == [Routes((key(A),), ())]
    assert announcer.status(announcer.RETRY)["failed"] == {}


def test_the_snat_address_is_never_also_a_fip_route():
    announcer = fresh()
    announcer.seen(set())
    announcer.live(SNAT, "tap-odd", 0.0)
    assert settled(announcer, 0.0) == [Routes((key(SNAT),), ())]


def test_a_restart_within_the_hold_keeps_a_moved_route_and_a_half_done_move_goes_live():
    a = fresh(moved_hold=60.0)
    a.seen({key(SNAT), key("203.0.113.1", 101)})  # a restart found it MOVED: kept, no write
    a.live(netaddr.IPAddress("203.0.113.1"), "p1", now=0.0)
    assert a.next(0.0) == []
    b = fresh(moved_hold=60.0)  # a crash between adding LIVE and deleting MOVED
    b.seen({key(SNAT), key("203.0.113.1", 100), key("203.0.113.1", 101)})
    b.live(netaddr.IPAddress("203.0.113.1"), "p1", now=0.0)
    assert b.next(0.0) == [Routes((), (key("203.0.113.1", 101),))]  # finished, not undone
