"""The metadata proxy's pure parts and its connection handler, without a network
(ovsnat-metadata-proxy, issue 29; the real process, namespace and sockets are in
tests/test_metadata_proxy_lab.py): the port encoding it reads, the request it accepts,
what it tells Nova (checked by Nova's own handler, in Neutron's virtualenv), who it
vouches for, the per-port limits with a clock the test moves, and the order a request
meets them in (a rate-limited request never costs an OVSDB lookup)."""

from __future__ import annotations

import asyncio
import configparser
import json
import os
import shlex
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ovsnat.metadata import main, server
from ovsnat.metadata.backend import Backend, BackendError, BodyCut, relay, tls_context
from ovsnat.metadata.counters import Counters, StatusFile
from ovsnat.metadata.headers import backend_request, error_response, response_head, sign
from ovsnat.metadata.identity import Instance, Refusal, identify
from ovsnat.metadata.limits import Connections, LogGate, TokenBuckets
from ovsnat.metadata.request import MAX_BODY, HttpError, parse_head
from ovsnat.model.metadata import MAX_OFPORT, PROXY_IP, decode, encode
from ovsnat.ovsdb.lookup import OvsdbError, PortRow, Remote, bridge_rows_with_ofport
from tests.devstack_harness import in_neutron_venv

SECRET = b"a shared secret"
A = Instance(7, "tapa", "port-a", "10.0.0.7", "0a0a0a0a-0000-4000-8000-000000000007", "proj-a")
VM_ROW = PortRow(
    "tapa",
    {
        "iface-id": "port-a",
        "ovsnat-fixed-ip": "10.0.0.7",
        "ovsnat-device-id": A.device_id,
        "ovsnat-project": A.project,
    },
)
CLOUD_INIT = (
    b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: 169.254.169.254\r\n"
    b"User-Agent: Cloud-Init/23.1\r\nAccept: */*\r\n\r\n"
)


def head(*fields: str, line: str = "GET / HTTP/1.1") -> bytes:
    return "\r\n".join([line, *fields, "", ""]).encode("latin-1")


# --- the address a request comes from ------------------------------------------------------
def test_a_ports_encoded_address_names_it_and_the_proxys_own_names_no_port():
    assert str(encode(1)) == "169.254.0.1" and str(encode(0x1234)) == "169.254.18.52"
    assert all(decode(encode(p)) == p for p in (1, 255, 256, 43518, MAX_OFPORT))
    assert decode(PROXY_IP) is None and decode("169.254.0.0") is None
    assert decode("10.0.0.7") is None and decode("not an address") is None


# --- the request a VM may send ---------------------------------------------------------------
def test_cloud_inits_request_is_read_as_sent():
    req = parse_head(CLOUD_INIT)
    assert (req.method, req.target, req.version) == (
        "GET",
        "/openstack/latest/meta_data.json",
        "HTTP/1.1",
    )
    assert req.values("user-agent") == ["Cloud-Init/23.1"] and req.content_length == 0
    post = parse_head(head("Content-Length: 6", "Expect: 100-continue", line="POST /p HTTP/1.0"))
    assert (post.content_length, post.expects_continue) == (6, True)


@pytest.mark.parametrize(
    "sent, status",
    [
        (head(line="PUT /latest/api/token HTTP/1.1"), 405),  # IMDSv2's token: not Nova's
        (head(line="BREW / HTTP/1.1"), 501),
        (head(line="GET http://169.254.169.254/ HTTP/1.1"), 400),  # absolute-form
        (head(line="GET / HTTP/2.0"), 505),
        (head(line="GET  / HTTP/1.1"), 400),
        (head("Transfer-Encoding: chunked", line="POST / HTTP/1.1"), 501),
        (head(f"Content-Length: {MAX_BODY + 1}", line="POST / HTTP/1.1"), 413),
        (head("Content-Length: 5", "Content-Length: 6", line="POST / HTTP/1.1"), 400),
        (head("Content-Length: \u00b2", line="POST / HTTP/1.1"), 400),  # "²".isdigit()
        (head("Content-Length: -1", line="POST / HTTP/1.1"), 400),
        (head("Expect: something"), 417),
        (head("X-A: 1", " folded"), 400),
        (head("No colon"), 400),
        (head("Bad Name: 1"), 400),
        (head("X-A: a\x01b"), 400),
        (head(*(f"X-{i}: 1" for i in range(65))), 431),
        (head("X-A: " + "a" * 9000), 431),
    ],
)
def test_what_a_vm_should_not_send_is_answered_with_its_status(sent, status):
    with pytest.raises(HttpError) as refused:
        parse_head(sent)
    assert refused.value.status == status
    if status == 405:
        assert refused.value.headers == (("Allow", "GET, HEAD, POST"),)


# --- what Nova is told ---------------------------------------------------------------------
def spoofing_request() -> bytes:
    return head(
        "Host: 169.254.169.254",
        "User-Agent: curl/7.88.1",
        "Accept: application/json",
        "X-Instance-ID: someone-else",
        "x-instance-id-signature: ff",
        "X-Tenant-ID: their-project",
        "X-Forwarded-For: 10.0.0.99",
        "X-Forwarded-Proto: https",
        "Forwarded: for=10.0.0.99",
        "X-Metadata-Provider: theirs",
        "X-Metadata-Provider-Signature: ff",
        "Connection: keep-alive, X-Hop",
        "X-Hop: 1",
        "Keep-Alive: timeout=5",
        "Proxy-Authorization: Basic eA==",
        "Upgrade: h2c",
        "TE: trailers",
        "Content-Type: text/plain",
        "Content-Length: 2",
        line="POST /openstack/latest/password HTTP/1.1",
    )


def test_nova_is_told_the_ports_identity_and_nothing_the_vm_claimed():
    sent = backend_request(parse_head(spoofing_request()), A, SECRET, "nova:8775")
    lines = sent.decode().split("\r\n")
    assert lines[0] == "POST /openstack/latest/password HTTP/1.0"
    assert sent.endswith(b"\r\n\r\n")
    fields = [tuple(line.split(": ", 1)) for line in lines[1:] if line]
    assert fields == [
        ("Host", "nova:8775"),
        ("User-Agent", "curl/7.88.1"),
        ("Accept", "application/json"),
        ("Content-Type", "text/plain"),
        ("X-Instance-ID", A.device_id),
        ("X-Tenant-ID", A.project),
        ("X-Instance-ID-Signature", sign(SECRET, A.device_id)),
        ("X-Forwarded-For", A.fixed_ip),
        ("Content-Length", "2"),
        ("Connection", "close"),
    ]


def test_the_signature_is_hex_hmac_sha256_of_the_instance_id():
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
    assert sign(b"Jefe", "what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def test_nova_own_handler_accepts_what_the_proxy_sends_and_refuses_another_secret():
    """Nova's MetadataRequestHandler (nova 34, in Neutron's virtualenv) parses the bytes the
    proxy sends: it takes the instance-id path (no X-Metadata-Provider got through), finds
    one X-Instance-ID and one X-Tenant-ID, checks the signature with its own
    _validate_shared_secret and asks for exactly the port's instance, project and address."""
    sent = backend_request(parse_head(spoofing_request()), A, SECRET, "nova:8775") + b"pw"
    in_neutron_venv(f"""
import webob
import nova.conf
from nova.api.metadata import handler
from oslo_log import log

CONF = nova.conf.CONF
log.register_options(CONF)  # `debug`, which the handler reads (nova-api registers it)
CONF.set_override("service_metadata_proxy", True, group="neutron")
CONF.set_override("metadata_proxy_shared_secret", {SECRET.decode()!r}, group="neutron")
asked = []

class Meta:
    def lookup(self, path):
        return "metadata of " + asked[-1][0]
    def get_mimetype(self):
        return "text/plain"

def by_instance_id(instance_id, tenant_id, address):
    asked.append((instance_id, tenant_id, address))
    return Meta()

nova = handler.MetadataRequestHandler.__new__(handler.MetadataRequestHandler)
nova._get_meta_by_instance_id = by_instance_id
raw = bytes.fromhex({sent.hex()!r})
answer = webob.Request.from_bytes(raw).get_response(nova)
assert answer.status_int == 200, answer
assert answer.body == b"metadata of {A.device_id}", answer.body
assert asked == [({A.device_id!r}, {A.project!r}, {A.fixed_ip!r})], asked
CONF.set_override("metadata_proxy_shared_secret", "another secret", group="neutron")
assert webob.Request.from_bytes(raw).get_response(nova).status_int == 403
print("ok")
""")


def test_novas_answer_reaches_the_vm_with_connection_close_only_and_its_length():
    answer = response_head(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
        b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n"
    )
    assert (answer.status, answer.length) == (200, 2)
    assert answer.head == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert response_head(b"HTTP/1.0 200 OK\r\n\r\n").length is None  # until Nova closes
    assert response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", True).length == 0
    assert response_head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n").length == 0
    for garbage in (
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n",
    ):
        with pytest.raises(ValueError):
            response_head(garbage)


def test_the_proxys_own_answers_say_why_and_head_gets_no_body():
    answer = error_response(429, "slow down", (("Retry-After", "2"),))
    assert answer.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"\r\nRetry-After: 2\r\n" in answer and answer.endswith(b"\r\n\r\nslow down\n")
    assert b"Content-Length: 10\r\n" in answer
    assert error_response(404, "no", head_only=True).endswith(b"Connection: close\r\n\r\n")


# --- who is asking -------------------------------------------------------------------------
def test_the_one_vm_row_with_the_ofport_is_the_instance():
    other_bridge_kind = PortRow("patch", {})  # not a VM port: ignored
    assert identify(7, [VM_ROW, other_bridge_kind]) == A


@pytest.mark.parametrize(
    "rows, reason",
    [
        ([], "no VM port has ofport 7"),
        ([PortRow("uplink", {})], "no VM port has ofport 7"),
        ([VM_ROW, PortRow("tapb", VM_ROW.external_ids)], "ports tapa, tapb share ofport 7"),
        (
            [PortRow("tapa", {"ovsnat-fixed-ip": "10.0.0.7", "iface-id": "p"})],
            "external_ids:ovsnat-device-id and external_ids:ovsnat-project",
        ),
        (
            [PortRow("tapa", {**VM_ROW.external_ids, "ovsnat-project": ""})],
            "no external_ids:ovsnat-project",
        ),
        (
            [PortRow("tapa", {**VM_ROW.external_ids, "ovsnat-fixed-ip": "10.0.0"})],
            "is not an IPv4 address",
        ),
        (
            [PortRow("tapa", {**VM_ROW.external_ids, "ovsnat-device-id": "a\r\nX-Evil: 1"})],
            "ovsnat-device-id is not a printable id",
        ),
    ],
)
def test_a_port_that_cannot_be_vouched_for_is_refused_with_the_reason(rows, reason):
    refused = identify(7, rows)
    assert isinstance(refused, Refusal) and reason in refused.reason, refused


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


def test_a_port_holds_at_most_its_share_of_connections_and_all_at_most_the_total():
    conns = Connections(per_port=2, total=3)
    assert [conns.open(7), conns.open(7), conns.open(7)] == [None, None, "rate_limited"]
    assert conns.open(9) is None
    assert conns.open(11) == "overloaded"
    conns.close(7)
    assert conns.open(11) is None and conns.held() == 3 and conns.held(7) == 1


def test_a_flooding_port_gets_one_log_line_per_interval_saying_how_many_went_unlogged():
    gate = LogGate(interval=10.0)
    assert gate.allow(7, "rate_limited", 0.0) == 0
    assert [gate.allow(7, "rate_limited", t) for t in (1.0, 2.0, 9.9)] == [None] * 3
    assert gate.allow(9, "rate_limited", 1.0) == 0  # another port, another line
    assert gate.allow(7, "bad_requests", 1.0) == 0  # another kind, another line
    assert gate.allow(7, "rate_limited", 10.0) == 3


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


# --- one connection, in order -------------------------------------------------------------------
class FakeWriter:
    """The handler's view of a connection: what it wrote, whether it closed or aborted."""

    def __init__(self, peer: str):
        self.peer, self.out, self.closed, self.aborted = peer, b"", False, False
        self.transport = self

    def get_extra_info(self, name):
        return (self.peer, 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        return None

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def proxy(monkeypatch):
    """A Proxy whose OVSDB has VM_ROW at ofport 7 and whose Nova answers 200 (both fakes
    count their calls), on a clock that stands still unless a test moves it."""
    calls = {"lookups": 0, "nova": []}

    async def rows(remote, bridge, ofport, timeout):
        calls["lookups"] += 1
        return [VM_ROW] if ofport == 7 else []

    async def relay(backend, request, client, head_only):
        calls["nova"].append(request)
        client.write(b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nmeta")
        return 200

    monkeypatch.setattr(server, "bridge_rows_with_ofport", rows)
    monkeypatch.setattr(server, "relay", relay)
    settings = server.Settings(
        backend=Backend("nova", 8775, None, 5.0),
        secret=SECRET,
        ovsdb=Remote.parse("unix:/nonexistent"),
        bridge="br-int",
        rate=1.0,
        burst=2,
        per_port=4,
        total=16,
        request_timeout=5.0,
        ovsdb_timeout=1.0,
        log_interval=10.0,
    )
    p = server.Proxy(settings, clock=Clock())
    p.calls = calls
    return p


def ask(proxy, source: str, sent: bytes = CLOUD_INIT) -> bytes:
    async def one():
        reader = asyncio.StreamReader()
        reader.feed_data(sent)
        reader.feed_eof()
        writer = FakeWriter(source)
        await proxy.handle(reader, writer)
        assert writer.closed or writer.aborted
        return writer.out

    return asyncio.run(one())


def test_a_vm_port_is_answered_by_nova_on_its_own_behalf(proxy):
    assert ask(proxy, "169.254.0.7").endswith(b"\r\n\r\nmeta")
    (request,) = proxy.calls["nova"]
    assert f"X-Instance-ID: {A.device_id}\r\n".encode() in request
    assert proxy.counters.as_dict() == {
        **Counters().as_dict(),
        "requests": 1,
        "answered": 1,
        "lookups": 1,
    }


def test_a_port_over_its_rate_is_answered_429_without_an_ovsdb_lookup(proxy):
    answers = [ask(proxy, "169.254.0.7") for _ in range(10)]
    assert [a.split(b" ", 2)[1] for a in answers] == [b"200", b"200"] + [b"429"] * 8
    assert b"\r\nRetry-After: 1\r\n" in answers[-1]
    assert proxy.calls["lookups"] == 2 and len(proxy.calls["nova"]) == 2
    assert ask(proxy, "169.254.0.9").startswith(b"HTTP/1.1 404")  # another port: its own
    proxy.clock.now += 1.0
    assert ask(proxy, "169.254.0.7").endswith(b"meta")  # a token back after 1/rate
    assert proxy.counters.rate_limited == 8


def test_unknown_ports_and_bad_requests_are_answered_and_counted_not_forwarded(proxy):
    assert b"no VM port has ofport 9" in ask(proxy, "169.254.0.9")
    assert b"is not a VM port's address" in ask(proxy, "10.1.2.3")
    assert ask(proxy, "169.254.0.7", b"GET / HTTP/3\r\n\r\n").startswith(b"HTTP/1.1 505")
    assert ask(proxy, "169.254.0.7", b"GET / HT") == b""  # closed mid-head: nothing to answer
    c = proxy.counters
    assert (c.refused_unknown_port, c.bad_requests, c.answered) == (2, 2, 0)
    assert proxy.calls["nova"] == []


def test_nova_unreachable_is_502_and_counted(proxy, monkeypatch):
    async def down(backend, request, client, head_only):
        raise BackendError(502, "nova:8775: Connection refused")

    monkeypatch.setattr(server, "relay", down)
    assert ask(proxy, "169.254.0.7").startswith(b"HTTP/1.1 502 Bad Gateway")
    assert proxy.counters.backend_errors == 1


def test_ovsdb_away_is_503_with_retry_after_and_counted(proxy, monkeypatch):
    async def away(remote, bridge, ofport, timeout):
        raise OvsdbError("OVSDB at unix:/run/openvswitch/db.sock: [Errno 111] Connection refused")

    monkeypatch.setattr(server, "bridge_rows_with_ofport", away)
    answer = ask(proxy, "169.254.0.7")
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable") and b"Retry-After: 1" in answer
    assert (proxy.counters.ovsdb_errors, proxy.calls["nova"]) == (1, [])


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
                {"_uuid": ["uuid", "i1"], "name": "tapa", "external_ids": ["map", [["k", "é"]]]},
                {"_uuid": ["uuid", "i2"], "name": "other", "external_ids": ["map", []]},
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

    assert asyncio.run(scenario()) == [PortRow("tapa", {"k": "é"})]
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


# --- the command line ---------------------------------------------------------------------------
def test_the_secret_comes_from_a_file_stripped_and_an_empty_or_open_one_is_told(tmp_path, caplog):
    path = tmp_path / "secret"
    path.write_text("  s3cret\n")
    path.chmod(0o600)
    assert main.read_secret(str(path)) == b"s3cret" and not caplog.records
    path.chmod(0o644)
    main.read_secret(str(path))
    assert "readable by every user" in caplog.text
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        main.read_secret(str(path))
    with pytest.raises(ValueError, match="--shared-secret-file is required"):
        main.read_secret(None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # read, never changed


def test_serving_without_nova_or_with_a_bad_limit_stops_with_one_clear_line(tmp_path, caplog):
    secret = tmp_path / "secret"
    secret.write_text("s")
    assert main.main(["--shared-secret-file", str(secret)]) == 1
    assert "--nova-metadata-host is required" in caplog.text
    argv = ["--nova-metadata-host", "nova", "--shared-secret-file", str(secret), "--rate", "0"]
    assert main.main(argv) == 1
    assert "--rate must be positive" in caplog.text


def test_the_command_runs_as_a_module_too_and_lists_every_option():
    """`python -m ovsnat.metadata.main` (the OpenStack lab's way) and the console script
    share main(); its options are the ones the report and the unit sample name."""
    done = subprocess.run(
        [sys.executable, "-m", "ovsnat.metadata.main", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for option in (
        "--namespace", "--port", "--bridge", "--bridge-namespace", "--db", "--no-bridge",
        "--cleanup", "--nova-metadata-host", "--nova-metadata-port",
        "--nova-metadata-protocol", "--nova-metadata-insecure", "--auth-ca-cert",
        "--nova-client-cert", "--nova-client-priv-key", "--shared-secret-file", "--rate",
        "--burst", "--max-connections-per-port", "--max-connections", "--request-timeout",
        "--backend-timeout", "--ovsdb-timeout", "--status-file", "--log-interval", "--debug",
    ):  # fmt: skip
        assert f"{option} " in done.stdout or f"{option}\n" in done.stdout, option


# --- the systemd unit sample --------------------------------------------------------------------
UNIT = Path(__file__).resolve().parent.parent / "etc" / "systemd" / "ovsnat-metadata-proxy.service"


def test_the_unit_sample_is_one_systemd_accepts_and_runs_the_proxy_with_options_it_has(tmp_path):
    """systemd-analyze verify (with this virtualenv in place of /opt/ovsnat), and the
    ExecStart line parsed by the proxy's own parser: the secret comes from a file."""
    local = tmp_path / UNIT.name
    local.write_text(UNIT.read_text().replace("/opt/ovsnat", sys.prefix))
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(UNIT)
    argv = shlex.split(unit["Service"]["ExecStart"].replace("\\\n", " "))
    assert argv[0] == "/opt/ovsnat/bin/ovsnat-metadata-proxy"
    args = main.parser().parse_args(argv[1:])
    assert args.shared_secret_file and args.nova_metadata_host and args.status_file
    assert "openvswitch-switch.service" in unit["Unit"]["After"].split()
    assert unit["Service"]["Restart"] == "on-failure"
