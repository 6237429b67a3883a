"""What goes to Nova and what comes back to the VM, byte for byte (pure).

To Nova: exactly the four fields Neutron's metadata agent adds (X-Instance-ID,
X-Tenant-ID, X-Instance-ID-Signature, X-Forwarded-For; `neutron.agent.metadata.
proxy_base._proxy_request`), computed from the port, never taken from the VM. Of the VM's
own fields only an allowlist passes (what a metadata client needs to say about content):
so X-Instance-ID*, X-Tenant-ID, X-Forwarded-*, X-Metadata-Provider*, Forwarded, hop-by-hop
fields and whatever identity header nobody has thought of yet never reach Nova. Neutron
forwards none of the VM's fields at all; the allowlist keeps content negotiation working.

The request goes out as HTTP/1.0 with `Connection: close`, so Nova answers with a body
delimited by Content-Length or by closing, never chunked: the proxy relays it unchanged
and only rewrites the response's connection fields.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from http import HTTPStatus

from ovsnat.metadata.identity import Instance
from ovsnat.metadata.request import Request

# The VM's fields that pass to Nova (lower case); every other field is dropped.
PASSED = frozenset(
    {
        "accept",
        "accept-language",
        "content-type",
        "user-agent",
        "if-none-match",
        "if-modified-since",
    }
)
# Response fields about the connection to the proxy, not about the answer.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "upgrade"})
MAX_RESPONSE_HEAD = 64 * 1024


def sign(secret: bytes, instance_id: str) -> str:
    """Nova's check, `nova.api.metadata.handler._validate_shared_secret`: hex HMAC-SHA256
    of the instance id (utf-8) keyed with metadata_proxy_shared_secret (utf-8)."""
    return hmac.new(secret, instance_id.encode("utf-8"), hashlib.sha256).hexdigest()


def backend_request(req: Request, inst: Instance, secret: bytes, host: str) -> bytes:
    """The head of the request to Nova for `req` from `inst`; `host` is Nova's host[:port]
    for the Host field. The body (exactly `req.content_length` bytes) follows unchanged."""
    kept = [(n, v) for n, v in req.fields if n.lower() in PASSED]
    added = [
        ("X-Instance-ID", inst.device_id),
        ("X-Tenant-ID", inst.project),
        ("X-Instance-ID-Signature", sign(secret, inst.device_id)),
        ("X-Forwarded-For", inst.fixed_ip),
    ]
    body = req.method == "POST" or req.content_length > 0
    length = [("Content-Length", str(req.content_length))] if body else []
    fields = [("Host", host), *kept, *added, *length, ("Connection", "close")]
    return _head(f"{req.method} {req.target} HTTP/1.0", fields)


@dataclass(frozen=True)
class Answer:
    """Nova's response head as the VM gets it, and how long its body is."""

    status: int
    head: bytes  # the connection fields replaced by `Connection: close`
    length: int | None  # body bytes to relay; None: until Nova closes


def response_head(head: bytes, head_only: bool = False) -> Answer:
    """Nova's answer to a request (a HEAD request: `head_only`); ValueError if it is not
    HTTP. The body length follows RFC 9112 6.3: none after HEAD, 1xx, 204 and 304, else
    Content-Length, else until Nova closes (it was asked with HTTP/1.0, so never chunked),
    so a Nova that keeps the connection open despite `Connection: close` costs nothing."""
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0]
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isascii() or not code.isdigit():
        raise ValueError(f"not an HTTP response: {status_line[:60]!r}")
    fields = []
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"malformed response field: {line[:60]!r}")
        fields.append((name, value.strip()))
    status = int(code)
    kept = [(n, v) for n, v in fields if n.strip().lower() not in HOP_BY_HOP]
    return Answer(
        status,
        _head(status_line, [*kept, ("Connection", "close")]),
        _body_length(status, fields, head_only),
    )


def _body_length(status: int, fields: list[tuple[str, str]], head_only: bool) -> int | None:
    if head_only or status < 200 or status in (204, 304):
        return 0
    names = {n.strip().lower() for n, _ in fields}
    lengths = {v for n, v in fields if n.strip().lower() == "content-length"}
    if "transfer-encoding" in names or not lengths:
        return None
    value = lengths.pop()
    if lengths or not (value.isascii() and value.isdigit()):
        raise ValueError(f"malformed or conflicting Content-Length: {value!r}")
    return int(value)


def error_response(
    status: int, reason: str, headers: tuple[tuple[str, str], ...] = (), head_only: bool = False
) -> bytes:
    """The proxy's own answer: `reason` as a plain-text body (left out for HEAD)."""
    body = (reason + "\n").encode("utf-8")
    fields = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        *headers,
        ("Connection", "close"),
    ]
    head = _head(f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", fields)
    return head if head_only else head + body


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _head(first: str, fields: list[tuple[str, str]]) -> bytes:
    lines = [first, *(f"{n}: {v}" for n, v in fields), "", ""]
    return "\r\n".join(lines).encode("latin-1")
