"""The metadata proxy's limits and counters, pure, with a clock the test moves
(ovsnat-metadata-proxy, issue 29): token buckets, the fair share of connections, each
connection's deadlines, the log gate, the status file."""

from __future__ import annotations

import json
import os
import random

import pytest

from ovsnat.metadata.counters import Counters, StatusFile
from ovsnat.metadata.limits import HOST, Connections, Deadlines, LogGate, TokenBuckets


# --- limits, with a clock the test moves -------------------------------------------------------
def test_a_ports_bucket_allows_its_burst_then_its_rate_and_others_are_untouched():
    buckets = TokenBuckets(rate=10.0, burst=20)
    assert [buckets.take(7, 0.0) for _ in range(20)] == [0.0] * 20
    assert buckets.take(7, 0.0) == pytest.approx(0.1)  # a token in 1/rate
    assert buckets.take(9, 0.0) == 0.0  # another port: its own full bucket
    assert buckets.take(7, 0.05) == pytest.approx(0.05)
    assert buckets.take(7, 0.1) == 0.0  # refilled: one token
    assert buckets.take(7, 0.1) > 0
    assert [buckets.take(7, 100.0) for _ in range(20)] == [0.0] * 20  # never above burst
    assert buckets.take(7, 100.0) > 0


def test_refilled_buckets_are_forgotten_when_many_ports_asked():
    buckets = TokenBuckets(rate=10.0, burst=20)
    for port in range(1, 5000):
        buckets.take(port, 0.0)
    buckets.take(1, 10.0)  # every other bucket refilled long ago
    assert len(buckets) < 10


def test_a_port_holds_at_most_its_share_of_connections_while_the_proxy_is_quiet():
    conns = Connections(per_port=4, total=16)
    assert [conns.open(7) for _ in range(4)] == [None] * 4
    turned = conns.open(7)
    assert turned.kind == "rate_limited" and "holds 4" in turned.reason
    assert conns.open(9) is None and (conns.held(), conns.held(7), conns.ports) == (5, 4, 2)
    conns.close(7)
    assert conns.open(7) is None and conns.held(7) == 4


def fill(conns: Connections, ports: list[int], order: str, rng: random.Random) -> dict:
    """Each of `ports` opens connections until it is turned away, in `order`: one port
    after another, round robin, or at random. Returns what each was last told."""
    told: dict[int, object] = {}
    if order == "one after another":
        for port in ports:
            while (t := conns.open(port)) is None:
                pass
            told[port] = t
        return told
    asking = list(ports)
    while asking:
        port = rng.choice(asking) if order == "at random" else asking[0]
        t = conns.open(port)
        if t is not None:
            told[port] = t
            asking.remove(port)
        elif order == "round robin":
            asking.append(asking.pop(0))
    return told


@pytest.mark.parametrize("order", ["one after another", "round robin", "at random"])
def test_32_ports_holding_their_share_cannot_turn_a_33rd_away(order):
    """The defaults: 256 connections, 8 per port. First come first served, 32 ports with
    8 slow connections each filled the proxy; now past half full each holds only its
    share, and the last slots stay for ports that hold none."""
    conns = Connections(per_port=8, total=256)
    told = fill(conns, list(range(1, 33)), order, random.Random(33))
    assert conns.total == 32 * 8  # positive control: per port alone, they would fill it
    assert conns.held() > conns.total // 2  # the fair share was what stopped them
    assert all(t.kind == "rate_limited" for t in told.values()), told
    assert conns.held() < conns.total
    assert conns.open(33) is None  # the 33rd port gets its connection
    newcomers = 34
    while conns.held() < conns.total:  # ports holding none take the rest, one each
        assert conns.open(newcomers) is None
        newcomers += 1
    full = conns.open(newcomers)  # completely full: everyone is turned away
    assert full.kind == "overloaded" and conns.held() == conns.total


def test_a_port_that_holds_none_is_admitted_whenever_a_slot_is_free():
    """Random opens and closes of 100 ports on 64 slots, 8 per port: whenever a port
    holding none is turned away the proxy is full, and a port that already holds some
    never takes the last slot."""
    rng = random.Random(29)
    conns, held, firsts_refused = Connections(per_port=8, total=64), [], 0
    for _ in range(20_000):
        if held and rng.random() < 0.3:
            conns.close(held.pop(rng.randrange(len(held))))
            continue
        port = rng.randrange(1, 101)
        before, free = conns.held(port), conns.total - conns.held()
        turned = conns.open(port)
        if turned is None:
            held.append(port)
            assert before == 0 or conns.held() < conns.total, (port, before)
        elif before == 0:
            firsts_refused += 1
            assert free == 0 and turned.kind == "overloaded"
    assert firsts_refused > 0 and conns.held() == len(held)  # positive control: it got full


def test_a_connections_deadlines_are_fixed_at_accept():
    d = Deadlines.at_accept(100.0, request_timeout=3.0, whole=70.0)
    assert (d.request, d.close) == (103.0, 170.0)
    assert d.request_left(101.0) == 2.0 and d.request_left(104.0) == 0.0
    assert d.left(110.0) == 60.0 and d.left(110.0, at_most=5.0) == 5.0
    assert d.left(169.0, at_most=5.0) == 1.0 and d.left(200.0) == 0.0
    assert Deadlines.at_accept(0.0, 10.0, 4.0).request == 4.0  # never past the close


def test_a_flooding_port_gets_one_log_line_per_interval_saying_how_many_went_unlogged():
    gate = LogGate(interval=10.0)
    assert gate.allow(7, "rate_limited", 0.0) == 0
    assert [gate.allow(7, "rate_limited", t) for t in (1.0, 2.0, 9.9)] == [None] * 3
    assert gate.allow(9, "rate_limited", 1.0) == 0  # another port, another line
    assert gate.allow(7, "bad_requests", 1.0) == 0  # another kind, another line
    assert gate.allow(7, "rate_limited", 10.0) == 3
    assert gate.allow(HOST, "backend_errors", 1.0) == 0  # the host's own key: see handler


def test_the_status_file_is_written_whole_once_a_second(tmp_path):
    path = tmp_path / "status.json"
    status, counters = StatusFile(str(path)), Counters()
    assert status.due(0.0)
    counters.bump("rate_limited")
    status.write(counters, 0.0, {"serving": True})
    assert not status.due(0.5) and status.due(1.0)
    written = json.loads(path.read_text())
    assert written["counters"]["rate_limited"] == 1 and written["serving"] is True
    assert written["pid"] == os.getpid() and not (tmp_path / "status.json.tmp").exists()
    assert not StatusFile(None).due(5.0)


def test_every_counter_is_named_and_a_name_that_is_none_is_an_error():
    counters = Counters()
    for name in ("errors", "client_gone", "body_cut", "port_changed", "rechecks"):
        counters.bump(name)
        assert counters.as_dict()[name] == 1
    with pytest.raises(AttributeError, match="bug"):
        counters.bump("bug")
