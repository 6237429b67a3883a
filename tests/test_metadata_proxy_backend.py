"""The metadata proxy's two backends on stand-ins (ovsnat-metadata-proxy, issue 29): Nova's
metadata API on loopback (its answer relayed, its faults as 502/504, TLS verified, and
one deadline for the whole exchange), and OVSDB on a unix socket (the lookup by ofport,
kept to the bridge, and the recheck by row uuid)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import time

import pytest

from ovsnat.metadata.backend import Backend, BackendError, BodyCut, ask, relay, tls_context
from ovsnat.ovsdb.lookup import OvsdbError, PortRow, Remote, bridge_rows_with_ofport, row_by_uuid
from tests.test_metadata_proxy import FakeWriter


# --- Nova, on loopback ------------------------------------------------------------------------
def closing(handler):
    """A stand-in server's connection handler that closes its end however it ends."""

    async def handle(reader, writer):
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    return handle


def relayed(handler, tls=None, server_tls=None, port: int | None = None, timeout=5.0):
    """Nova's answer through `relay`, from a stand-in Nova on 127.0.0.1 run by `handler`
    (none: nothing listens on `port`). Returns (status or the BackendError, what the VM got)."""

    async def scenario():
        client = FakeWriter("169.254.0.7")
        request = b"GET /latest/meta-data/ HTTP/1.0\r\nConnection: close\r\n\r\n"
        srv = handler and await asyncio.start_server(
            closing(handler), "127.0.0.1", 0, ssl=server_tls
        )
        nova = Backend("127.0.0.1", srv.sockets[0].getsockname()[1] if srv else port, tls, timeout)
        try:
            return await relay(nova, request, client), client.out
        except (BackendError, BodyCut) as e:
            return e, client.out
        finally:
            if srv:
                srv.close()

    return asyncio.run(scenario())


ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n"


async def nova_ok(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    writer.write(ANSWER + b"Keep-Alive: timeout=5\r\n\r\nami-id\nx\n")
    await writer.drain()
    writer.close()


def test_novas_answer_is_relayed_with_its_status_and_body():
    status, got = relayed(nova_ok)
    assert status == 200
    assert got == ANSWER + b"Connection: close\r\n\r\nami-id\nx\n"


def test_a_nova_that_keeps_the_connection_open_is_relayed_up_to_its_content_length():
    async def keeps_open(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ANSWER + b"\r\nami-id\nx\n")
        await reader.read()  # until the proxy closes

    started = time.monotonic()
    assert relayed(keeps_open, timeout=30)[0] == 200
    assert time.monotonic() - started < 10  # not the backend timeout


def test_nova_away_or_broken_is_502_silent_is_504_and_cut_short_is_only_logged():
    with socket.socket() as s:  # a port nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        refused, got = relayed(None, port=s.getsockname()[1])
        assert (refused.status, got) == (502, b"")

    async def garbage(reader, writer):
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()

    async def silent(reader, writer):
        await reader.read()

    async def hangs_up(reader, writer):
        writer.close()

    async def short_body(reader, writer):
        writer.write(ANSWER + b"\r\nami")

    assert relayed(garbage)[0].status == 502
    assert relayed(hangs_up)[0].status == 502
    cut, got = relayed(short_body)  # too late for a 502: the VM has Nova's head already
    assert isinstance(cut, BodyCut) and cut.status == 200 and got.endswith(b"\r\n\r\nami")
    started = time.monotonic()
    assert relayed(silent, timeout=0.3)[0].status == 504
    assert time.monotonic() - started < 5


@pytest.fixture(scope="module")
def nova_cert(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (openssl, as an operator would make one)."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=nova-metadata",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_https_verifies_nova_against_the_ca_file_unless_insecure(nova_cert):
    cert, key = nova_cert
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    trusted = tls_context(insecure=False, ca_file=cert, cert=None, key=None)
    assert relayed(nova_ok, trusted, server_tls)[0] == 200
    system_cas = tls_context(insecure=False, ca_file=None, cert=None, key=None)
    unknown, got = relayed(nova_ok, system_cas, server_tls)
    assert unknown.status == 502 and "CERTIFICATE_VERIFY_FAILED" in unknown.reason and not got
    insecure = tls_context(insecure=True, ca_file=None, cert=None, key=None)
    assert relayed(nova_ok, insecure, server_tls)[0] == 200


# --- OVSDB, as the proxy asks it ----------------------------------------------------------------
def test_the_lookup_reads_a_reply_in_pieces_answers_echo_and_keeps_to_the_bridge(tmp_path):
    """A stand-in ovsdb-server on a unix socket (the real one: the lab test) that sends its
    replies a few bytes at a time and probes with an echo first."""
    sock = str(tmp_path / "db.sock")
    seen, echoed = [], []
    replies = [
        # Interface rows with ofport 7 (on br-int and on another bridge), and br-int's ports
        [
            {"rows": [
                {"_uuid": ["uuid", "i1"], "name": "tapa", "external_ids": ["map", [["k", "é"]]],
                 "ofport": 7},
                {"_uuid": ["uuid", "i2"], "name": "other", "external_ids": ["map", []],
                 "ofport": 7},
            ]},
            {"rows": [{"ports": ["set", [["uuid", "p1"], ["uuid", "p3"]]]}]},
        ],
        [{"rows": [{"_uuid": ["uuid", "p1"]}]}, {"rows": [{"_uuid": ["uuid", "p2"]}]}],
    ]  # fmt: skip

    async def ovsdb(reader, writer):
        writer.write(json.dumps({"method": "echo", "params": ["x"], "id": "echo"}).encode())
        incoming = messages(reader)
        for reply in replies:
            msg = await anext(incoming)
            while msg.get("method") != "transact":
                echoed.append(msg)
                msg = await anext(incoming)
            seen.append(msg)
            data = json.dumps({"id": msg["id"], "result": reply, "error": None}).encode()
            for i in range(0, len(data), 7):
                writer.write(data[i : i + 7])
                await writer.drain()

    async def scenario():
        srv = await asyncio.start_unix_server(closing(ovsdb), sock)
        async with srv:
            return await bridge_rows_with_ofport(Remote.parse(f"unix:{sock}"), "br-int", 7, 5)

    assert asyncio.run(scenario()) == [PortRow("tapa", {"k": "é"}, "i1", 7)]
    assert echoed == [{"id": "echo", "result": ["x"], "error": None}]
    first, second = seen
    assert first["params"][1]["where"] == [["ofport", "==", 7]]
    assert first["params"][2]["where"] == [["name", "==", "br-int"]]
    assert second["params"][1]["where"] == [["interfaces", "includes", ["uuid", "i1"]]]


async def messages(reader: asyncio.StreamReader):
    """The JSON values a peer sends, one by one (JSON-RPC over a stream has no framing)."""
    decoder, buf = json.JSONDecoder(), ""
    while True:
        text = buf.lstrip()
        try:
            msg, end = decoder.raw_decode(text)
        except json.JSONDecodeError:
            chunk = await reader.read(4096)
            if not chunk:
                return
            buf += chunk.decode()
            continue
        buf = text[end:]
        yield msg


def test_an_ovsdb_that_is_away_or_refuses_is_an_ovsdb_error(tmp_path):
    missing = Remote.parse(f"unix:{tmp_path}/none.sock")
    with pytest.raises(OvsdbError, match="none.sock"):
        asyncio.run(bridge_rows_with_ofport(missing, "br-int", 7, 5))
    sock = str(tmp_path / "db.sock")

    async def refusing(reader, writer):
        await reader.read(100)
        writer.write(b'{"id": 1, "result": null, "error": "unknown database"}')
        await writer.drain()

    async def scenario():
        srv = await asyncio.start_unix_server(closing(refusing), sock)
        async with srv:
            await bridge_rows_with_ofport(Remote.parse(f"unix:{sock}"), "br-int", 7, 5)

    with pytest.raises(OvsdbError, match="unknown database"):
        asyncio.run(scenario())


def test_ovsdb_remotes_are_ovs_vsctls():
    assert Remote.parse("unix:/run/openvswitch/db.sock").path == "/run/openvswitch/db.sock"
    assert (Remote.parse("tcp:127.0.0.1:6640").host, Remote.parse("tcp:[::1]:6640").port) == (
        "127.0.0.1",
        6640,
    )
    for bad in ("ssl:1.2.3.4:6640", "unix:", "tcp:host", "/run/db.sock"):
        with pytest.raises(ValueError):
            Remote.parse(bad)


def test_the_recheck_reads_the_one_row_by_uuid_and_says_when_it_is_gone(tmp_path):
    sock = str(tmp_path / "db.sock")
    seen = []
    rows = {"i1": {"_uuid": ["uuid", "i1"], "name": "tapa", "ofport": ["set", []],
                   "external_ids": ["map", [["ovsnat-fixed-ip", "10.0.0.7"]]]}}  # fmt: skip

    async def ovsdb(reader, writer):
        msg = await anext(messages(reader))
        seen.append(msg)
        uuid = msg["params"][1]["where"][0][2][1]
        found = [rows[uuid]] if uuid in rows else []
        writer.write(
            json.dumps({"id": msg["id"], "result": [{"rows": found}], "error": None}).encode()
        )
        await writer.drain()

    async def scenario():
        srv = await asyncio.start_unix_server(closing(ovsdb), sock)
        async with srv:
            remote = Remote.parse(f"unix:{sock}")
            return await row_by_uuid(remote, "i1", 5), await row_by_uuid(remote, "i9", 5)

    now, gone = asyncio.run(scenario())
    assert now == PortRow("tapa", {"ovsnat-fixed-ip": "10.0.0.7"}, "i1", None)  # no ofport now
    assert gone is None
    assert seen[0]["params"][1]["where"] == [["_uuid", "==", ["uuid", "i1"]]]
    assert seen[0]["params"][1]["columns"] == ["_uuid", "name", "external_ids", "ofport"]


def test_a_vm_that_reads_slowly_gets_its_answer_cut_at_novas_one_deadline():
    """Nova answers at once with a big body; the VM takes nothing: the relay ends at the
    backend timeout as a whole, where a timeout per chunk would wait for ever."""

    async def scenario():
        async def big(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            body = b"x" * (4 * 1024 * 1024)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()

        class Stuck(FakeWriter):
            async def drain(self) -> None:
                await asyncio.Event().wait()

        srv = await asyncio.start_server(closing(big), "127.0.0.1", 0)
        async with srv:
            nova = Backend("127.0.0.1", srv.sockets[0].getsockname()[1], None, 0.5)
            client = Stuck("169.254.0.7")
            started = time.monotonic()
            reply = await ask(nova, b"GET / HTTP/1.0\r\n\r\n")
            try:
                with pytest.raises(BodyCut, match="not relayed in full in time") as cut:
                    await reply.relay_to(client)
            finally:
                reply.close()
            return cut.value, client.out, time.monotonic() - started

    cut, got, seconds = asyncio.run(scenario())
    assert cut.status == 200 and got.startswith(b"HTTP/1.1 200 OK")  # positive: head relayed
    assert 0.4 < seconds < 5


def test_a_budget_shorter_than_the_backend_timeout_is_the_deadline():
    async def scenario():
        async def silent(reader, writer):
            await reader.read()

        srv = await asyncio.start_server(closing(silent), "127.0.0.1", 0)
        async with srv:
            nova = Backend("127.0.0.1", srv.sockets[0].getsockname()[1], None, 30.0)
            started = time.monotonic()
            with pytest.raises(BackendError) as failed:
                await ask(nova, b"GET / HTTP/1.0\r\n\r\n", budget=0.3)
            return failed.value, time.monotonic() - started

    failed, seconds = asyncio.run(scenario())
    assert failed.status == 504 and seconds < 5
