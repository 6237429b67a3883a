"""A VM's HTTP request head, read strictly and within bounds (pure: bytes in, values out).

The VM is untrusted, and everything it sends is checked before anything reaches Nova:
one request per connection, GET/HEAD/POST only (POST is Nova's password endpoint), a body
only by Content-Length and at most 64 KiB (a password is 256 bytes; no chunked bodies, so
no request smuggling through a framing the proxy and Nova read differently), a head of at
most 8 KiB and 64 fields (cloud-init's are a few hundred bytes). Whatever fails says so
with the HTTP status a client understands, never with a crash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD = 8 * 1024
MAX_FIELDS = 64
MAX_BODY = 64 * 1024
METHODS = ("GET", "HEAD", "POST")
# Methods HTTP defines that the metadata API has no use for: 405 with Allow, not 501.
OTHER_METHODS = frozenset({"PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
VERSIONS = ("HTTP/1.0", "HTTP/1.1")
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
TARGET = re.compile(r"/[\x21-\x7e]*\Z")  # origin-form only: no absolute URLs, no spaces
DIGITS = re.compile(r"[0-9]{1,12}\Z")  # ASCII digits only (str.isdigit takes "²")
FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*\Z")  # no CR, LF or other controls


class HttpError(Exception):
    """A request the proxy answers itself, with `status` and a one-line `reason`."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(f"{status} {reason}")
        self.status, self.reason, self.headers = status, reason, headers


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    version: str
    fields: tuple[tuple[str, str], ...]  # (name as sent, value), in order
    content_length: int
    expects_continue: bool  # Expect: 100-continue (curl sends it for larger POSTs)

    def values(self, name: str) -> list[str]:
        """Every value of field `name` (names compare case-insensitively)."""
        return [v for n, v in self.fields if n.lower() == name.lower()]


def parse_head(head: bytes) -> Request:
    """The request whose head (request line and fields, up to the blank line) is `head`.
    Raises HttpError with the status to answer."""
    if len(head) > MAX_HEAD:
        raise HttpError(431, f"request head exceeds {MAX_HEAD} bytes")
    lines = head.decode("latin-1").split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise HttpError(400, "empty request")
    method, target, version = _request_line(lines[0])
    fields = tuple(_field(line) for line in lines[1:])
    if len(fields) > MAX_FIELDS:
        raise HttpError(431, f"more than {MAX_FIELDS} header fields")
    return Request(
        method, target, version, fields, _content_length(fields), _expects_continue(fields)
    )


def _request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not TOKEN.match(method):
        raise HttpError(400, "malformed method")
    if version not in VERSIONS:
        raise HttpError(505, f"HTTP version {version[:16]!r} not supported")
    if method not in METHODS:
        if method in OTHER_METHODS:
            raise HttpError(405, f"method {method} not allowed", (("Allow", ", ".join(METHODS)),))
        raise HttpError(501, f"method {method[:16]} not implemented")
    if not TARGET.match(target):
        raise HttpError(400, "request target must be a path (origin-form)")
    return method, target, version


def _field(line: str) -> tuple[str, str]:
    if line[:1] in (" ", "\t"):
        raise HttpError(400, "folded header field (obsolete line folding)")
    name, colon, value = line.partition(":")
    if not colon or not TOKEN.match(name):
        raise HttpError(400, "malformed header field")
    value = value.strip(" \t")
    if not FIELD_VALUE.match(value):
        raise HttpError(400, f"control character in header field {name}")
    return name, value


def _content_length(fields: tuple[tuple[str, str], ...]) -> int:
    names = {n.lower() for n, _ in fields}
    if "transfer-encoding" in names:
        raise HttpError(501, "Transfer-Encoding not supported: send Content-Length")
    values = {v for n, v in fields if n.lower() == "content-length"}
    if not values:
        return 0
    if len(values) > 1 or not DIGITS.match(next(iter(values))):
        raise HttpError(400, "malformed or conflicting Content-Length")
    length = int(next(iter(values)))
    if length > MAX_BODY:
        raise HttpError(413, f"body of {length} bytes exceeds {MAX_BODY}")
    return length


def _expects_continue(fields: tuple[tuple[str, str], ...]) -> bool:
    expect = [v.lower() for n, v in fields if n.lower() == "expect"]
    if any(v != "100-continue" for v in expect):
        raise HttpError(417, "only Expect: 100-continue is understood")
    return bool(expect)
