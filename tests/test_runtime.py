"""The shim's plumbing that needs no switch (ovsnat.runtime): which connection is ours and
is written to, what a refused send means, the loop meter's windows, the metrics server."""

from __future__ import annotations

from ovsnat.core.failures import Failures
from ovsnat.core.status import Stats
from ovsnat.runtime.loopmeter import WINDOW, LoopMeter, Worst
from ovsnat.runtime.switches import Switches


class Dp:
    """A framework datapath as the shim uses one."""

    def __init__(self, dpid: int, accepts: bool = True):
        self.id, self.accepts = dpid, accepts
        self.sent: list = []
        self.closed = False

    def send(self, data: bytes) -> bool:
        if self.accepts:
            self.sent.append(data)
        return self.accepts

    def close(self) -> None:
        self.closed = True


def test_only_the_adopted_switch_is_written_to_and_a_refused_one_is_closed():
    sw = Switches(Failures(Stats()))
    ours, other = Dp(1), Dp(2)
    sw.connected(ours)
    sw.connected(other)
    assert not sw.send(b"x", 0.0)  # none adopted yet: nothing sent
    sw.adopt(1)
    sw.refuse(2)
    assert sw.send(b"y", 0.0) and ours.sent == [b"y"] and other.sent == []
    assert other.closed and not ours.closed
    assert sw.gone(other) is None  # refused: its close is no news
    assert sw.gone(ours) == "ours" and sw.ours is None
    late = Dp(1)  # an older connection's late event
    sw.connected(Dp(1))
    assert sw.gone(late) is None


def test_a_send_the_connection_refuses_is_reported_once_and_counted():
    stats = Stats()
    failures = Failures(stats)
    sw = Switches(failures)
    closing = Dp(1, accepts=False)
    sw.connected(closing)
    sw.adopt(1)
    assert not sw.send(b"a", 1.0) and not sw.send(b"b", 2.0)
    assert stats.counts["switch_send_failures"] == 2
    assert failures.status()["switch_send"]["count"] == 2
    closing.accepts = True
    assert sw.send(b"c", 3.0) and failures.status() == {}


def test_the_worst_is_kept_for_one_to_two_windows():
    w = Worst()
    w.add(0.040, 100.0, "a")
    w.add(0.002, 100.5)
    assert w.worst(101.0) == 0.040
    assert w.worst(100.0 + WINDOW) == 0.040  # the previous window still counts
    assert w.worst(100.0 + 2 * WINDOW) == 0.0  # then it is forgotten
    assert [r[2] for r in w.recent] == ["a"]  # only what is over KEPT_MS is listed


def test_the_loop_meter_sees_a_green_thread_that_does_not_yield():
    """The real hub: a green thread that computes for 30 ms without yielding is the
    longest stall, named by the framework's frames on its stack (hub._launch: these test
    functions are not ovsnat's); a 1 ms sleeper is not listed."""
    import time

    from ovsnat.runtime import framework as fw

    meter = LoopMeter()
    meter.start()
    try:

        def busy():
            t = time.perf_counter()
            while time.perf_counter() - t < 0.030:
                pass
            fw.hub.sleep(0)

        def sleeper():
            for _ in range(20):
                fw.hub.sleep(0.001)

        threads = [fw.hub.spawn(sleeper), fw.hub.spawn(busy)]
        fw.hub.joinall(threads)
    finally:
        import greenlet

        greenlet.settrace(None)
    st = meter.status(time.time())
    assert 29 <= st["loop_max_stall_ms"] < 200, st
    assert [s for s in st["loop_stalls"] if s[1] >= 29 and "_launch" in s[2]], st


def test_port_descriptions_are_read_for_their_numbers_only():
    """The framework parses every port description when a switch connects; ovsnat keeps
    the port numbers (10,000 ports: 60 ms of parsing otherwise, the loop stalled)."""
    import struct

    from ovsnat.runtime import framework as fw

    fw.use_light_flow_stats()
    o, p = fw.ofproto, fw.parser
    ports = b"".join(
        struct.pack(
            o.OFP_PORT_PACK_STR,
            n,
            b"\x02\x00\x00\x00\x00\x01",
            f"p{n}".encode(),
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        )
        for n in range(1, 101)
    )
    head = struct.pack(
        "!BBHIHH4x", 4, o.OFPT_MULTIPART_REPLY, 16 + len(ports), 7, o.OFPMP_PORT_DESC, 0
    )
    msg = p.OFPMultipartReply.parser(
        None, 4, o.OFPT_MULTIPART_REPLY, 16 + len(ports), 7, head + ports
    )
    assert [e.port_no for e in msg.body] == list(range(1, 101))


def test_a_metrics_port_in_use_is_reported_not_swallowed():
    import socket

    from ovsnat.runtime import framework as fw
    from ovsnat.runtime.metrics import Metrics, serve_metrics

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    failures = Failures(Stats())
    metrics = Metrics(port, "127.0.0.1", lambda: {})
    assert metrics.enabled
    thread = fw.hub.spawn(serve_metrics, metrics, failures)
    try:
        import time

        deadline = time.monotonic() + 5
        while "metrics" not in failures.status() and time.monotonic() < deadline:
            fw.hub.sleep(0.01)
        assert f"127.0.0.1:{port}" in failures.status()["metrics"]["error"]
    finally:
        fw.hub.kill(thread)
        blocker.close()
