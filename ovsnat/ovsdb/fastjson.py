"""JSON-RPC messages from OVSDB decoded by the standard library's C decoder.

python-ovs frames and parses what OVSDB sends with its own JSON parser, which is pure
Python unless its C extension was built against libopenvswitch (Debian 12 has no
libopenvswitch-dev). At 10,000 VMs the monitor's first reply is about 5 MB and took that
parser 2-3 s, most of a controller restart. Here the connection of the watcher's session
(python-ovs keeps reconnects, probes and sends) is given a `recv` that finds where each
message ends, cheaply, and hands it whole to `json.loads`.

Framing: messages are JSON objects sent back to back. With every complete string taken out
(a C-speed regex), a message ends exactly where the bracket depth returns to zero, and
inside one value a `}` is never followed by `{`: so a buffer holds a complete message when
its depth is zero or it contains `}{` (whitespace allowed between). Only then is it
decoded; every byte is scanned at most twice however the stream is cut.
"""

from __future__ import annotations

import errno
import json
import re

import ovs.jsonrpc

RECV_BYTES = 1 << 18  # per read: python-ovs reads 4 KB at a time
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
# Whole strings and runs of anything else, from outside a string: where it stops, a string
# begins that has not arrived whole (a regex scanning for strings alone would resync on its
# escaped quotes).
_WHOLE = re.compile(rb'(?:"[^"\\]*(?:\\.[^"\\]*)*"|[^"]+)*')
_BOUNDARY = re.compile(rb"\}\s*\{")
_DECODER = json.JSONDecoder()


class Framer:
    """Cuts a byte stream into JSON values (dicts, lists...), decoded by the C decoder."""

    def __init__(self):
        self.buf = b""
        self.scanned = 0  # bytes of buf counted into depth (never inside a string)
        self.depth = 0
        self.complete = False  # buf holds at least one whole value

    def feed(self, data: bytes) -> None:
        self.buf += data
        if not self.complete:
            self._scan()

    def _scan(self) -> None:
        region = self.buf[self.scanned :]
        counted, safe = _STRING.sub(b"", region), len(region)
        if b'"' in counted:  # a string not yet whole: stop before it
            safe = _WHOLE.match(region).end()
            counted = _STRING.sub(b"", region[:safe])
        self.scanned += safe
        self.depth += (
            counted.count(b"{") + counted.count(b"[") - counted.count(b"}") - counted.count(b"]")
        )
        self.complete = (self.depth == 0 and counted.strip() != b"") or _BOUNDARY.search(
            counted
        ) is not None

    def values(self) -> list:
        """Every whole value in the buffer, in order; the rest waits for more bytes.
        Raises ValueError on bytes that are not JSON."""
        if not self.complete:
            return []
        text = self.buf.decode("utf-8", "surrogateescape")  # the tail may end mid-character
        out, index, end = [], 0, len(text)
        while True:
            while index < end and text[index].isspace():
                index += 1
            if index >= end:
                break
            try:
                value, index = _DECODER.raw_decode(text, index)
            except json.JSONDecodeError as e:
                if e.pos < end and out:  # a partial next value: keep it
                    break
                if e.pos < end:
                    raise ValueError(f"bad JSON from OVSDB: {e}") from None
                break  # ran out of bytes: wait for more
            out.append(value)
        self.buf = text[index:].encode("utf-8", "surrogateescape")
        self.scanned = self.depth = 0
        self.complete = False
        self._scan()
        return out


class FastConnection(ovs.jsonrpc.Connection):
    """python-ovs's Connection with framing and decoding done by `Framer`."""

    def recv(self):
        if self.status:
            return self.status, None
        framer = self.__dict__.setdefault("_framer", Framer())
        queue = self.__dict__.setdefault("_queue", [])
        while not queue:
            error, data = self.stream.recv(RECV_BYTES)
            if error == errno.EAGAIN:
                return error, None
            if error:
                self.error(error)
                return self.status, None
            if not data:
                self.error(ovs.jsonrpc.EOF)
                return ovs.jsonrpc.EOF, None
            self.received_bytes += len(data)
            framer.feed(data if isinstance(data, bytes) else data.encode("utf-8"))
            try:
                queue.extend(framer.values())
            except ValueError:
                self.error(errno.EPROTO)
                return self.status, None
        msg = ovs.jsonrpc.Message.from_json(queue.pop(0))
        if not isinstance(msg, ovs.jsonrpc.Message):
            self.error(errno.EPROTO)
            return self.status, None
        return 0, msg

    def recv_wait(self, poller):
        if self.status or self.__dict__.get("_queue"):
            poller.immediate_wake()
        else:
            self.stream.recv_wait(poller)


def upgrade(session) -> None:
    """Give the session's current connection the fast decoder (python-ovs makes a new
    plain Connection at every reconnect, so this is called after each `session.run()`)."""
    rpc = session.rpc
    if rpc is not None and type(rpc) is ovs.jsonrpc.Connection and not rpc.input:
        rpc.__class__ = FastConnection
