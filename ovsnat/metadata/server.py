"""One VM request, from accept to answer: the proxy's connection handler (asyncio).

The order is the point. The asking port is known from the source address before a byte
is read, so its connection share and its token bucket are checked first: a flooding VM
costs accept, one bounded read and a 429, and never an OVSDB lookup or a request to Nova.
Only then is OVSDB asked who the port is now, and Nova asked on the port's behalf; before
Nova's answer goes back, OVSDB is asked again whether the port is still that one (an
ofport can be reused by a new port meanwhile). Lookups share a fixed number of places
(`--max-ovsdb-lookups`), so a thousand VMs booting at once cannot swamp ovsdb-server.

Every connection has one deadline from accept to close (limits.Deadlines), and every
outcome is counted, each in a counter named where it happens, and logged through a gate:
one line per port and kind per interval, and one per interval for what concerns the
host (Nova or OVSDB away, a full proxy, a bug), so an outage is not one line per VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ovsnat.metadata.backend import Backend, BackendError, BodyCut, ask
from ovsnat.metadata.counters import Counters
from ovsnat.metadata.headers import CONTINUE, backend_request, error_response
from ovsnat.metadata.identity import Instance, Refusal, identify, still_holds
from ovsnat.metadata.limits import HOST, Connections, Deadlines, LogGate, TokenBuckets
from ovsnat.metadata.request import HttpError, Request, parse_head
from ovsnat.model.metadata import decode
from ovsnat.ovsdb.lookup import OvsdbError, Remote, bridge_rows_with_ofport, row_by_uuid

LOG = logging.getLogger("ovsnat.metadata")
HOST_KINDS = frozenset({"backend_errors", "ovsdb_errors", "overloaded", "errors"})
RETRY = (("Retry-After", "1"),)
LINGER = 1.0  # seconds a closing connection waits for the VM to stop sending
LINGER_BYTES = 2 * 1024 * 1024


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
    request_timeout: float  # to receive a request's head and body, from accept
    ovsdb_timeout: float
    log_interval: float
    ovsdb_lookups: int = 16  # OVSDB lookups at once, for all connections together

    @property
    def connection_timeout(self) -> float:
        """The most a connection lasts, accept to close: each step's own bound, once
        (the request, the lookup and the recheck, Nova with the relay, the linger)."""
        return self.request_timeout + 2 * self.ovsdb_timeout + self.backend.timeout + LINGER


@dataclass
class Asked:
    """One connection: who asks (`key` 0 when the source is no port's address) and when."""

    peer: str
    ofport: int | None
    deadlines: Deadlines
    head_only: bool = False  # a HEAD request: answers carry no body

    @property
    def key(self) -> int:
        return self.ofport or 0

    @property
    def who(self) -> str:
        return f"port {self.ofport} ({self.peer})" if self.ofport else f"source {self.peer}"


class Proxy:
    """The connection handler and the state all connections share (limits, counters).
    It serves one event loop: its OVSDB semaphore belongs to the loop that first waits."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic):
        self.settings, self.clock = settings, clock
        self.counters = Counters()
        self.buckets = TokenBuckets(settings.rate, settings.burst)
        self.connections = Connections(settings.per_port, settings.total)
        self.gate = LogGate(settings.log_interval)
        self.lookup_slots = asyncio.Semaphore(settings.ovsdb_lookups)
        self.handlers: set[asyncio.Task] = set()
        self.stopping = False  # shutdown() has begun: its cancels end handlers quietly

    def gauges(self) -> dict[str, int]:
        """What is held right now (for the status file; the counters only grow)."""
        return {
            "connections_open": self.connections.held(),
            "ports_connected": self.connections.ports,
        }

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        s = self.settings
        peer = (writer.get_extra_info("peername") or ("?",))[0]
        deadlines = Deadlines.at_accept(self.clock(), s.request_timeout, s.connection_timeout)
        asked = Asked(peer, decode(peer), deadlines)
        self.counters.bump("requests")
        turned = self.connections.open(asked.key)
        if turned:
            self._note(asked, turned.kind, logging.WARNING, f"turned away: {turned.reason}")
            writer.transport.abort()
            return
        task = asyncio.current_task()
        self.handlers.add(task)
        try:
            await asyncio.wait_for(
                self._serve_and_linger(asked, reader, writer), s.connection_timeout
            )
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            # The stop's own cancel: end as any connection does (Python 3.11's stream
            # callback logs a traceback for a handler task that ends cancelled).
            self._note(asked, "stopped", logging.INFO, "ended by the stop", count=False)
        except ConnectionError as e:
            self._note(asked, "client_gone", logging.INFO, f"went away: {e or type(e).__name__}")
        except asyncio.TimeoutError:
            late = f"did not take its answer within its {s.connection_timeout:g}s"
            self._note(asked, "client_gone", logging.INFO, late)
        except Exception:
            self._note(asked, "errors", logging.ERROR, "unexpected error", exc_info=True)
        finally:
            self.connections.close(asked.key)
            self.handlers.discard(task)
            writer.close()

    async def shutdown(self, timeout: float) -> int:
        """Cancel every connection being served and wait for them to end (each closes
        its own): Python 3.12.1's Server.wait_closed waits for them, and SIGTERM must
        not wait for a slow VM. Returns how many did not end within `timeout`."""
        self.stopping = True
        tasks = set(self.handlers)
        for task in tasks:
            task.cancel()
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        return len(pending)

    async def _serve_and_linger(self, asked: Asked, reader, writer) -> None:
        await self._serve(asked, reader, writer)
        await _linger(reader, writer, asked.deadlines.left(self.clock(), LINGER))

    async def _serve(self, asked: Asked, reader, writer) -> None:
        wait = self.buckets.take(asked.key, self.clock())
        req = await self._read_head(asked, reader, writer)
        if req is None:
            return
        asked.head_only = req.method == "HEAD"
        # A body already on its way is read before any answer (closing on unread data
        # resets the connection, and the VM could lose the answer); one announced with
        # Expect: 100-continue is asked for only once the proxy means to forward it.
        within = asked.deadlines.request_left(self.clock())
        body = (
            b""
            if req.expects_continue
            else await self._read_body(asked, req, reader, writer, within)
        )
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
            within = asked.deadlines.left(self.clock(), self.settings.request_timeout)
            body = await self._read_body(asked, req, reader, writer, within)
            if body is None:
                return
        await self._forward(asked, req, inst, body, writer)

    async def _forward(self, asked: Asked, req: Request, inst: Instance, body: bytes, writer):
        s = self.settings
        request = backend_request(req, inst, s.secret, s.backend.host_field) + body
        try:
            reply = await ask(s.backend, request, asked.head_only, self._left(asked))
        except BackendError as e:
            return await self._refuse(asked, writer, "backend_errors", e.status, e.reason)
        try:
            if not await self._still_there(asked, inst, writer):
                return
            try:
                status = await reply.relay_to(writer)
            except BodyCut as e:
                self.counters.bump("answered")
                self._note(asked, "body_cut", logging.WARNING, e.reason)
                return
        finally:
            reply.close()
        self.counters.bump("answered")
        what = f"{req.method} {req.target[:80]} -> {status} ({inst.port_name} {inst.device_id})"
        self._note(asked, "answered", logging.INFO, what, count=False)
        await self._drain(asked, writer)

    async def _read_head(self, asked: Asked, reader, writer) -> Request | None:
        try:
            head = await asyncio.wait_for(
                reader.readuntil(b"\r\n\r\n"), asked.deadlines.request_left(self.clock())
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
            rows = await self._ask_ovsdb(
                asked, bridge_rows_with_ofport, s.ovsdb, s.bridge, asked.ofport
            )
        except OvsdbError as e:
            await self._refuse(asked, writer, "ovsdb_errors", 503, str(e), RETRY)
            return None
        who = identify(asked.ofport, rows)
        if isinstance(who, Refusal):
            await self._refuse(asked, writer, "refused_unknown_port", 404, who.reason)
            return None
        return who

    async def _still_there(self, asked: Asked, inst: Instance, writer) -> bool:
        """Whether the port Nova was asked about still holds the ofport the answer will
        be delivered by (else a 503, and Nova's answer is dropped)."""
        self.counters.bump("rechecks")
        try:
            row = await self._ask_ovsdb(asked, row_by_uuid, self.settings.ovsdb, inst.row_uuid)
        except OvsdbError as e:
            await self._refuse(asked, writer, "ovsdb_errors", 503, str(e), RETRY)
            return False
        if still_holds(inst, row):
            return True
        why = f"port {inst.port_name} changed or went while Nova answered: ask again"
        await self._refuse(asked, writer, "port_changed", 503, why, RETRY)
        return False

    async def _ask_ovsdb(self, asked: Asked, lookup, *args):
        """`lookup(*args, timeout)` once one of the lookup places is free, all within
        the OVSDB timeout (and the connection's deadline)."""
        loop = asyncio.get_running_loop()
        budget, start = self._left(asked, self.settings.ovsdb_timeout), loop.time()
        try:
            await asyncio.wait_for(self.lookup_slots.acquire(), budget)
        except asyncio.TimeoutError:
            places = self.settings.ovsdb_lookups
            raise OvsdbError(
                f"OVSDB busy: none of {places} lookups done within {budget:g}s"
            ) from None
        try:
            return await lookup(*args, max(0.0, budget - (loop.time() - start)))
        finally:
            self.lookup_slots.release()

    async def _read_body(self, asked: Asked, req: Request, reader, writer, within: float):
        if not req.content_length:
            return b""
        try:
            return await asyncio.wait_for(reader.readexactly(req.content_length), within)
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
        await self._drain(asked, writer)

    async def _drain(self, asked: Asked, writer) -> None:
        """Until the VM has taken the answer, by the connection's deadline."""
        await asyncio.wait_for(writer.drain(), self._left(asked))

    def _left(self, asked: Asked, at_most: float | None = None) -> float:
        return asked.deadlines.left(self.clock(), at_most)

    def _note(self, asked: Asked, kind: str, level: int, what: str, count=True, **kw) -> None:
        """Count `kind` (a counter's name, unless `count` is false) and log one line,
        unless the gate says this port (or, for HOST_KINDS, this host) already had its
        line of this kind within the interval."""
        if count:
            self.counters.bump(kind)
        key = HOST if kind in HOST_KINDS else asked.key
        quiet = self.gate.allow(key, kind, self.clock())
        if quiet is not None:
            more = f" (and {quiet} like it since the last line)" if quiet else ""
            LOG.log(level, "%s: %s%s", asked.who, what, more, **kw)


async def _linger(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seconds: float
) -> None:
    """Half-close, then read and drop what the VM still sends (the body of a request
    refused on its head) until it closes too: closing a socket with unread data resets
    the connection, and a reset can destroy the answer before the VM has read it. Bounded
    in time and bytes; a VM that keeps sending after that gets its reset."""
    if writer.can_write_eof():
        try:
            writer.write_eof()
        except OSError as e:  # ENOTCONN: the VM reset the connection first (it went away)
            if e.errno != errno.ENOTCONN:
                raise
            raise ConnectionResetError(e.errno, "the VM reset the connection") from e
    drain = asyncio.ensure_future(_discard(reader))
    try:
        done, _ = await asyncio.wait({drain}, timeout=seconds)
        if done:
            drain.result()  # what _discard did not expect is raised here, not lost
    finally:
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
