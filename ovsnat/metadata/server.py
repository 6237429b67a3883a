"""One VM request, from accept to answer: the proxy's connection handler (asyncio).

The order is the point. The asking port is known from the source address before a byte
is read, so its connection share and its token bucket are checked first: a flooding VM
costs accept, one bounded read and a 429, and never an OVSDB lookup or a request to Nova.
Only then is OVSDB asked who the port is now, and Nova asked on the port's behalf. Every
outcome is counted, and logged through a gate (one line per port and kind per interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ovsnat.metadata.backend import Backend, BackendError, BodyCut, relay
from ovsnat.metadata.counters import Counters
from ovsnat.metadata.headers import CONTINUE, backend_request, error_response
from ovsnat.metadata.identity import Instance, Refusal, identify
from ovsnat.metadata.limits import Connections, LogGate, TokenBuckets
from ovsnat.metadata.request import HttpError, Request, parse_head
from ovsnat.model.metadata import decode
from ovsnat.ovsdb.lookup import OvsdbError, Remote, bridge_rows_with_ofport

LOG = logging.getLogger("ovsnat.metadata")


@dataclass(frozen=True)
class Settings:
    backend: Backend
    secret: bytes
    ovsdb: Remote
    bridge: str  # whose ports the ofport is looked up among
    rate: float  # requests per second per port
    burst: int
    per_port: int  # open connections per port
    total: int  # open connections in all
    request_timeout: float  # to receive a request's head and body
    ovsdb_timeout: float
    log_interval: float


@dataclass
class Asked:
    """One connection: who asks (`key` 0 when the source is no port's address) and when."""

    peer: str
    ofport: int | None
    deadline: float  # for the VM's request to arrive in full
    head_only: bool = False  # a HEAD request: answers carry no body

    @property
    def key(self) -> int:
        return self.ofport or 0

    @property
    def who(self) -> str:
        return f"port {self.ofport} ({self.peer})" if self.ofport else f"source {self.peer}"


class Proxy:
    """The connection handler and the state all connections share (limits, counters)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic):
        self.settings, self.clock = settings, clock
        self.counters = Counters()
        self.buckets = TokenBuckets(settings.rate, settings.burst)
        self.connections = Connections(settings.per_port, settings.total)
        self.gate = LogGate(settings.log_interval)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = (writer.get_extra_info("peername") or ("?",))[0]
        now = self.clock()
        asked = Asked(peer, decode(peer), now + self.settings.request_timeout)
        self.counters.bump("requests")
        turned_away = self.connections.open(asked.key)
        if turned_away:
            self._note(asked, turned_away, logging.WARNING, "turned away: too many connections")
            writer.transport.abort()
            return
        try:
            await self._serve(asked, reader, writer)
            await _linger(reader, writer)
        except (ConnectionError, asyncio.TimeoutError) as e:
            self._note(asked, "client_gone", logging.INFO, f"went away: {e or type(e).__name__}")
        except Exception:
            self._note(asked, "bug", logging.ERROR, "unexpected error", exc_info=True)
        finally:
            self.connections.close(asked.key)
            writer.close()

    async def _serve(self, asked: Asked, reader, writer) -> None:
        wait = self.buckets.take(asked.key, self.clock())
        req = await self._read_head(asked, reader, writer)
        if req is None:
            return
        asked.head_only = req.method == "HEAD"
        # A body already on its way is read before any answer (closing on unread data
        # resets the connection, and the VM could lose the answer); one announced with
        # Expect: 100-continue is asked for only once the proxy means to forward it.
        body = b"" if req.expects_continue else await self._read_body(asked, req, reader, writer)
        if body is None:
            return
        if wait:
            retry = (("Retry-After", str(max(1, math.ceil(wait)))),)
            return await self._refuse(asked, writer, "rate_limited", 429, "slow down", retry)
        inst = await self._identify(asked, writer)
        if inst is None:
            return
        if req.expects_continue:
            writer.write(CONTINUE)
            body = await self._read_body(asked, req, reader, writer)
            if body is None:
                return
        await self._forward(asked, req, inst, body, writer)

    async def _forward(self, asked: Asked, req: Request, inst: Instance, body: bytes, writer):
        s = self.settings
        request = backend_request(req, inst, s.secret, s.backend.host_field) + body
        try:
            status = await relay(s.backend, request, writer, asked.head_only)
        except BackendError as e:
            return await self._refuse(asked, writer, "backend_errors", e.status, e.reason)
        except BodyCut as e:
            self.counters.bump("answered")
            self._note(asked, "body_cut", logging.WARNING, e.reason, count=False)
            return
        self.counters.bump("answered")
        what = f"{req.method} {req.target[:80]} -> {status} ({inst.port_name} {inst.device_id})"
        self._note(asked, "answered", logging.INFO, what, count=False)
        await self._drain(writer)

    async def _read_head(self, asked: Asked, reader, writer) -> Request | None:
        try:
            head = await asyncio.wait_for(
                reader.readuntil(b"\r\n\r\n"), asked.deadline - self.clock()
            )
            return parse_head(head)
        except HttpError as e:
            await self._refuse(asked, writer, "bad_requests", e.status, e.reason, e.headers)
        except asyncio.LimitOverrunError:
            await self._refuse(asked, writer, "bad_requests", 431, "request head too large")
        except asyncio.IncompleteReadError as e:
            what = f"closed after {len(e.partial)} bytes, before a whole request head"
            self._note(asked, "bad_requests", logging.INFO, what)
        except asyncio.TimeoutError:
            await self._refuse(asked, writer, "bad_requests", 408, "request head too slow")
        return None

    async def _identify(self, asked: Asked, writer) -> Instance | None:
        if asked.ofport is None:
            reason = f"{asked.peer} is not a VM port's address"
            await self._refuse(asked, writer, "refused_unknown_port", 404, reason)
            return None
        s = self.settings
        self.counters.bump("lookups")
        try:
            rows = await bridge_rows_with_ofport(s.ovsdb, s.bridge, asked.ofport, s.ovsdb_timeout)
        except OvsdbError as e:
            retry = (("Retry-After", "1"),)
            await self._refuse(asked, writer, "ovsdb_errors", 503, str(e), retry)
            return None
        who = identify(asked.ofport, rows)
        if isinstance(who, Refusal):
            await self._refuse(asked, writer, "refused_unknown_port", 404, who.reason)
            return None
        return who

    async def _read_body(self, asked: Asked, req: Request, reader, writer) -> bytes | None:
        if not req.content_length:
            return b""
        try:
            return await asyncio.wait_for(
                reader.readexactly(req.content_length), asked.deadline - self.clock()
            )
        except asyncio.IncompleteReadError as e:
            what = f"closed after {len(e.partial)} of {req.content_length} body bytes"
            self._note(asked, "bad_requests", logging.INFO, what)
        except asyncio.TimeoutError:
            await self._refuse(asked, writer, "bad_requests", 408, "request body too slow")
        return None

    async def _refuse(
        self, asked: Asked, writer, kind: str, status: int, reason: str, headers=()
    ) -> None:
        """Answer the VM ourselves: count `kind`, log through the gate, write and drain."""
        self._note(asked, kind, logging.WARNING, f"{status} {reason}")
        writer.write(error_response(status, reason, tuple(headers), asked.head_only))
        await self._drain(writer)

    async def _drain(self, writer) -> None:
        """Until the VM has taken the answer, within the request timeout."""
        await asyncio.wait_for(writer.drain(), self.settings.request_timeout)

    def _note(self, asked: Asked, kind: str, level: int, what: str, count=True, **kw) -> None:
        """Count `kind` (if it is a counter) and log one line, unless the gate says this
        port already had its line of this kind within the interval."""
        if count and hasattr(self.counters, kind):
            self.counters.bump(kind)
        quiet = self.gate.allow(asked.key, kind, self.clock())
        if quiet is not None:
            more = f" (and {quiet} like it since the last line)" if quiet else ""
            LOG.log(level, "%s: %s%s", asked.who, what, more, **kw)


LINGER = 1.0  # seconds a closing connection waits for the VM to stop sending
LINGER_BYTES = 2 * 1024 * 1024


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then read and drop what the VM still sends (the body of a request
    refused on its head) until it closes too: closing a socket with unread data resets
    the connection, and a reset can destroy the answer before the VM has read it. Bounded
    in time and bytes; a VM that keeps sending after that gets its reset."""
    if writer.can_write_eof():
        writer.write_eof()
    drain = asyncio.ensure_future(_discard(reader))
    await asyncio.wait({drain}, timeout=LINGER)
    drain.cancel()


async def _discard(reader: asyncio.StreamReader) -> None:
    """Until EOF; a reset ends it as well as EOF (the VM has closed: what lingering waits
    for)."""
    dropped = 0
    with contextlib.suppress(ConnectionError):
        while dropped < LINGER_BYTES:
            chunk = await reader.read(65536)
            if not chunk:
                return
            dropped += len(chunk)
