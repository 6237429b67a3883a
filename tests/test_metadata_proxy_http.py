"""The metadata proxy's HTTP, pure (ovsnat-metadata-proxy, issue 29): the request a VM
may send, what Nova is told (checked by Nova's own handler, in Neutron's virtualenv), and
what the VM gets back."""

from __future__ import annotations

import pytest

from ovsnat.metadata.headers import backend_request, error_response, response_head, sign
from ovsnat.metadata.request import MAX_BODY, HttpError, parse_head
from tests.devstack_harness import in_neutron_venv
from tests.test_metadata_proxy import CLOUD_INIT, SECRET, A, head


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
