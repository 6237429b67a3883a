"""The metadata proxy's connection handler, one connection in order, without a network
(ovsnat-metadata-proxy, issue 29): a rate-limited request never costs an OVSDB lookup, a
request is answered once and only the first of a connection goes to Nova, Nova's answer
goes back only while the port is still the one asked about, every slot is given back
however serving ends, OVSDB is asked by a bounded number at once, host-wide faults are
logged once per interval, and a stop ends the connections it would otherwise wait for."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time

import pytest

from ovsnat.metadata import main, server
from ovsnat.metadata.backend import Backend, BackendError
from ovsnat.metadata.counters import Counters, StatusFile
from ovsnat.metadata.headers import CONTINUE
from ovsnat.ovsdb.lookup import OvsdbError
from tests.test_metadata_proxy import (
    CLOUD_INIT,
    NOVA_SAYS,
    VM_ROW,
    A,
    FakeWriter,
    PortRow,
    fake_proxy,
    head,
    serve_one,
)


@pytest.fixture(name="proxy")
def _proxy(monkeypatch):
    return fake_proxy(monkeypatch)


def _lines(caplog, level=logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


def test_a_vm_port_is_answered_by_nova_on_its_own_behalf(proxy):
    assert serve_one(proxy, "169.254.0.7") == NOVA_SAYS
    (request,) = proxy.calls["nova"]
    assert f"X-Instance-ID: {A.device_id}\r\n".encode() in request
    assert proxy.counters.as_dict() == {
        **Counters().as_dict(),
        "requests": 1,
        "answered": 1,
        "lookups": 1,
        "rechecks": 1,
    }


def test_a_port_over_its_rate_is_answered_429_without_an_ovsdb_lookup(proxy):
    answers = [serve_one(proxy, "169.254.0.7") for _ in range(10)]
    assert [a.split(b" ", 2)[1] for a in answers] == [b"200", b"200"] + [b"429"] * 8
    assert b"\r\nRetry-After: 1\r\n" in answers[-1]
    assert proxy.calls["lookups"] == 2 and len(proxy.calls["nova"]) == 2
    assert serve_one(proxy, "169.254.0.9").startswith(b"HTTP/1.1 404")  # another port: its own
    proxy.clock.now += 1.0
    assert serve_one(proxy, "169.254.0.7").endswith(b"meta")  # a token back after 1/rate
    assert proxy.counters.rate_limited == 8


def test_unknown_ports_and_bad_requests_are_answered_and_counted_not_forwarded(proxy):
    assert b"no VM port has ofport 9" in serve_one(proxy, "169.254.0.9")
    assert b"is not a VM port's address" in serve_one(proxy, "10.1.2.3")
    assert serve_one(proxy, "169.254.0.7", b"GET / HTTP/3\r\n\r\n").startswith(b"HTTP/1.1 505")
    assert serve_one(proxy, "169.254.0.7", b"GET / HT") == b""  # closed mid-head: nothing to answer
    c = proxy.counters
    assert (c.refused_unknown_port, c.bad_requests, c.answered) == (2, 2, 0)
    assert proxy.calls["nova"] == []


def test_nova_unreachable_is_502_and_counted(proxy, monkeypatch):
    async def down(backend, request, head_only, budget):
        raise BackendError(502, "nova:8775: Connection refused")

    monkeypatch.setattr(server, "ask", down)
    assert serve_one(proxy, "169.254.0.7").startswith(b"HTTP/1.1 502 Bad Gateway")
    assert proxy.counters.backend_errors == 1


def test_ovsdb_away_is_503_with_retry_after_and_counted(proxy, monkeypatch):
    async def away(remote, bridge, ofport, timeout):
        raise OvsdbError("OVSDB at unix:/run/openvswitch/db.sock: [Errno 111] Connection refused")

    monkeypatch.setattr(server, "bridge_rows_with_ofport", away)
    answer = serve_one(proxy, "169.254.0.7")
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable") and b"Retry-After: 1" in answer
    assert (proxy.counters.ovsdb_errors, proxy.calls["nova"]) == (1, [])


# --- one request per connection ---------------------------------------------------------------
def test_a_pipelined_second_request_is_never_sent_to_nova(proxy):
    second = b"GET /openstack/latest/user_data HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
    assert serve_one(proxy, "169.254.0.7", CLOUD_INIT + second) == NOVA_SAYS
    (request,) = proxy.calls["nova"]  # one request to Nova, the first
    assert request.startswith(b"GET /openstack/latest/meta_data.json HTTP/1.0\r\n")
    assert b"user_data" not in request
    assert (proxy.counters.requests, proxy.counters.answered) == (1, 1)


def test_100_continue_comes_only_after_the_port_is_known_then_the_body_goes_to_nova(proxy):
    sent = head(
        "Content-Length: 6", "Expect: 100-continue", line="POST /openstack/latest/password HTTP/1.1"
    )

    async def scenario():
        reader, writer = asyncio.StreamReader(), FakeWriter("169.254.0.7")
        reader.feed_data(sent)  # the head only: curl waits for 100 Continue
        serving = asyncio.create_task(proxy.handle(reader, writer))
        deadline = time.monotonic() + 5
        while CONTINUE not in writer.out and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        asked_before_continue = proxy.calls["lookups"]
        got_continue = writer.out
        reader.feed_data(b"s3cr3t")
        reader.feed_eof()
        await asyncio.wait_for(serving, 5)
        return asked_before_continue, got_continue, writer.out

    looked_up, continued, out = asyncio.run(scenario())
    assert continued == CONTINUE and looked_up == 1  # the port was identified first
    assert out == CONTINUE + NOVA_SAYS
    (request,) = proxy.calls["nova"]
    assert request.endswith(b"Content-Length: 6\r\nConnection: close\r\n\r\ns3cr3t")


def test_100_continue_from_a_port_that_cannot_be_vouched_for_gets_its_404_and_no_100(proxy):
    sent = head("Content-Length: 6", "Expect: 100-continue", line="POST /p HTTP/1.1")
    out = serve_one(proxy, "169.254.0.9", sent)
    assert out.startswith(b"HTTP/1.1 404") and CONTINUE not in out and not proxy.calls["nova"]


def test_a_head_that_does_not_arrive_in_time_is_answered_408(monkeypatch):
    proxy = fake_proxy(monkeypatch, request_timeout=0.2)

    async def scenario():
        reader, writer = asyncio.StreamReader(), FakeWriter("169.254.0.7")
        reader.feed_data(b"GET / HTTP/1.1\r\nHost: 169.25")  # and nothing more
        started = time.monotonic()
        await asyncio.wait_for(proxy.handle(reader, writer), 10)
        return writer.out, time.monotonic() - started

    out, seconds = asyncio.run(scenario())
    assert out.startswith(b"HTTP/1.1 408 Request Timeout") and b"too slow" in out
    assert 0.2 <= seconds < 5 and proxy.counters.bad_requests == 1
    assert proxy.connections.held() == 0 and not proxy.calls["nova"]


# --- the port must still be the one Nova was asked about --------------------------------------
def test_an_ofport_given_to_another_port_meanwhile_gets_503_and_not_novas_answer(proxy):
    proxy.rows_now[VM_ROW.uuid] = None  # the port was deleted while Nova answered
    out = serve_one(proxy, "169.254.0.7")
    assert out.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in out and b"meta" not in out
    assert (proxy.counters.port_changed, proxy.counters.answered) == (1, 0)
    assert proxy.calls["replies_closed"] == 1 and len(proxy.calls["nova"]) == 1
    proxy.rows_now[VM_ROW.uuid] = PortRow(VM_ROW.name, VM_ROW.external_ids, VM_ROW.uuid, 8)
    proxy.clock.now += 10  # a token again
    assert serve_one(proxy, "169.254.0.7").startswith(b"HTTP/1.1 503")  # renumbered
    proxy.rows_now[VM_ROW.uuid] = VM_ROW
    proxy.clock.now += 10
    assert serve_one(proxy, "169.254.0.7") == NOVA_SAYS  # positive control: unchanged
    assert (proxy.counters.port_changed, proxy.calls["rechecks"]) == (2, 3)


# --- slots, counters, log lines ---------------------------------------------------------------
def test_a_slot_is_given_back_and_an_unexpected_error_counted_and_logged_once(
    proxy, monkeypatch, caplog
):
    held_while_serving = []

    def broken(*args):
        held_while_serving.append(proxy.connections.held())
        raise RuntimeError("a bug")

    monkeypatch.setattr(server, "backend_request", broken)
    for _ in range(2):  # within one log interval
        assert serve_one(proxy, "169.254.0.7") == b""
    assert held_while_serving == [1, 1]  # positive control: it held a slot then
    assert proxy.connections.held() == 0 and not proxy.handlers
    assert proxy.counters.errors == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info and "unexpected error" in errors[0].getMessage()
    assert not [r for r in caplog.records if "exception was never retrieved" in r.getMessage()]


def test_a_vm_that_never_takes_its_answer_is_cut_at_the_connections_deadline(monkeypatch):
    proxy = fake_proxy(monkeypatch, request_timeout=0.1, ovsdb_timeout=0.1)
    proxy.settings = server.Settings(
        **{**proxy.settings.__dict__, "backend": Backend("nova", 8775, None, 0.1)}
    )
    assert proxy.settings.connection_timeout == pytest.approx(1.4)

    class NeverReads(FakeWriter):
        async def drain(self) -> None:
            await asyncio.Event().wait()

    async def scenario():
        reader, writer = asyncio.StreamReader(), NeverReads("169.254.0.7")
        reader.feed_data(CLOUD_INIT)
        started = time.monotonic()
        await asyncio.wait_for(proxy.handle(reader, writer), 10)
        return writer, time.monotonic() - started

    writer, seconds = asyncio.run(scenario())
    assert writer.out == NOVA_SAYS and writer.closed  # positive control: it was answered
    assert seconds < 3 and proxy.connections.held() == 0
    assert proxy.counters.client_gone == 1


def test_a_vm_that_reset_before_the_half_close_is_gone_not_a_bug(proxy, caplog):
    class Reset(FakeWriter):
        def write_eof(self) -> None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    async def scenario():
        reader, writer = asyncio.StreamReader(), Reset("169.254.0.7")
        reader.feed_data(CLOUD_INIT)
        await proxy.handle(reader, writer)
        return writer

    writer = asyncio.run(scenario())
    assert writer.out == NOVA_SAYS and writer.closed
    assert (proxy.counters.client_gone, proxy.counters.errors) == (1, 0)
    assert proxy.connections.held() == 0 and "Traceback" not in caplog.text


def test_a_host_wide_fault_is_one_log_line_per_interval_not_one_per_vm(monkeypatch, caplog):
    proxy = fake_proxy(monkeypatch, per_port=4, total=64)

    async def away(remote, bridge, ofport, timeout):
        raise OvsdbError("OVSDB at unix:/run/openvswitch/db.sock: Connection refused")

    monkeypatch.setattr(server, "bridge_rows_with_ofport", away)
    for port in range(20, 30):
        assert serve_one(proxy, f"169.254.0.{port}").startswith(b"HTTP/1.1 503")
    assert proxy.counters.ovsdb_errors == 10
    assert len([m for m in _lines(caplog) if "503" in m]) == 1
    caplog.clear()
    proxy.clock.now += 10  # the next interval: one line, saying how many it stood for
    assert serve_one(proxy, "169.254.0.31").startswith(b"HTTP/1.1 503")
    assert [m for m in _lines(caplog) if "503" in m][0].endswith(
        "(and 9 like it since the last line)"
    )
    caplog.clear()
    monkeypatch.setattr(server, "bridge_rows_with_ofport", lambda *a: _no_rows())
    for port in (40, 41):  # positive control: a port's own refusal is a line per port
        serve_one(proxy, f"169.254.0.{port}")
    assert len([m for m in _lines(caplog) if "404" in m]) == 2


async def _no_rows():
    return []


def test_lookups_wait_for_one_of_their_places_so_ovsdb_sees_a_bounded_number(monkeypatch):
    """40 ports ask at once; OVSDB answers only once it holds 4 lookups (the limit here):
    never more than 4 are in flight, and every request is answered."""

    async def scenario():
        proxy = fake_proxy(monkeypatch, total=64, ovsdb_lookups=4, ovsdb_timeout=10.0)
        inflight, most, release = [0], [0], asyncio.Event()

        async def slow_rows(remote, bridge, ofport, timeout):
            inflight[0] += 1
            most[0] = max(most[0], inflight[0])
            await release.wait()
            inflight[0] -= 1
            return [PortRow(VM_ROW.name, VM_ROW.external_ids, f"row-{ofport}", ofport)]

        async def row(remote, uuid, timeout):
            ofport = int(uuid.removeprefix("row-"))
            return PortRow(VM_ROW.name, VM_ROW.external_ids, uuid, ofport)

        monkeypatch.setattr(server, "bridge_rows_with_ofport", slow_rows)
        monkeypatch.setattr(server, "row_by_uuid", row)
        writers = [FakeWriter(f"169.254.1.{i}") for i in range(40)]
        tasks = []
        for w in writers:
            reader = asyncio.StreamReader()
            reader.feed_data(CLOUD_INIT)
            reader.feed_eof()
            tasks.append(asyncio.create_task(proxy.handle(reader, w)))
        deadline = time.monotonic() + 5
        while inflight[0] < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for _ in range(100):  # every handler has had its chance to ask
            await asyncio.sleep(0)
        at_most = most[0]
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return at_most, most[0], [w.out for w in writers], proxy

    waiting, most, outs, proxy = asyncio.run(scenario())
    assert waiting == most == 4  # 4 at once (positive control: not fewer), never more
    assert proxy.counters.lookups == 40 and proxy.counters.ovsdb_errors == 0
    assert all(out.startswith(b"HTTP/1.0 200") for out in outs)


def test_a_lookup_that_finds_no_place_in_time_is_503(monkeypatch):
    async def scenario():
        proxy = fake_proxy(monkeypatch, ovsdb_lookups=1, ovsdb_timeout=0.2)
        await proxy.lookup_slots.acquire()  # the one place, taken
        reader, writer = asyncio.StreamReader(), FakeWriter("169.254.0.7")
        reader.feed_data(CLOUD_INIT)
        reader.feed_eof()
        await asyncio.wait_for(proxy.handle(reader, writer), 10)
        return proxy, writer.out

    proxy, out = asyncio.run(scenario())
    assert out.startswith(b"HTTP/1.1 503") and b"OVSDB busy" in out
    assert proxy.counters.ovsdb_errors == 1 and proxy.calls["lookups"] == 0


# --- stopping ---------------------------------------------------------------------------------
def test_a_stop_ends_the_connections_being_served_at_once(monkeypatch, tmp_path):
    """serve() with a slow client holding a connection (half a head, 30 s allowed): once
    stopped it returns within a second or two, every handler ended and its slot given
    back (Python 3.12.1's wait_closed would wait for the handler otherwise)."""
    proxy = fake_proxy(monkeypatch, request_timeout=30.0)
    path = str(tmp_path / "proxy.sock")

    async def scenario():
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        stop = asyncio.Event()
        serving = asyncio.create_task(
            main.serve(proxy, listener, StatusFile(str(tmp_path / "status.json")), {}, stop)
        )
        deadline = time.monotonic() + 5
        while not (tmp_path / "status.json").exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"GET / HTTP/1.1\r\nHost: 169.25")
        await writer.drain()
        while proxy.connections.held() < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        held = proxy.connections.held()
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(serving, 10)
        seconds = time.monotonic() - started
        ended = await asyncio.wait_for(reader.read(), 5)  # EOF: the proxy closed it
        writer.close()
        return held, seconds, ended

    held, seconds, ended = asyncio.run(scenario())
    assert held == 1  # positive control: the slow client was being served
    assert seconds < 2.5 and ended == b""
    assert proxy.connections.held() == 0 and not proxy.handlers
