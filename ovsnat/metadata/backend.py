"""Nova's metadata API, asked on the VM's behalf from the hypervisor's own namespace.

One connection per request (Nova's metadata answers are small and cloud-init asks a few
dozen times per boot), so nothing pools or goes stale across a Nova restart. Failures are
the VM's to retry, never the proxy's to die of: no connection is 502, no answer within
the timeout is 504, and a broken answer is 502. Once Nova's head has been relayed the
status is the VM's; a failure later only cuts the body short (and is logged).

The timeout is one deadline for the whole exchange, not one per read or write: with a
fresh timeout per chunk, a VM that reads its answer a byte at a time would hold its
connection (and a slot of the proxy's) for as long as it liked. Asking (`ask`) and
relaying (`NovaReply.relay_to`) are two steps so that the proxy can check, between
them, that the port is still the one Nova was asked about.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from ovsnat.metadata.headers import MAX_RESPONSE_HEAD, Answer, response_head

CHUNK = 64 * 1024


class BackendError(Exception):
    """Nova could not be asked or did not answer properly: `status` is 502 or 504."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class BodyCut(Exception):
    """Nova's answer (`status`) was relayed in part: the VM sees a short body."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Backend:
    """Neutron's names: nova_metadata_host, _port, _protocol (and its TLS options, folded
    into `tls`, None for http)."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    timeout: float

    @property
    def host_field(self) -> str:
        """The Host field for Nova: the host (bracketed if IPv6) and the port."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host_field}"


def tls_context(
    insecure: bool, ca_file: str | None, cert: str | None, key: str | None
) -> ssl.SSLContext:
    """As Neutron's metadata agent (nova_metadata_insecure, auth_ca_cert, nova_client_cert,
    nova_client_priv_key): verify Nova's certificate against `ca_file` or the system's
    CAs unless `insecure`; present a client certificate when both halves are given."""
    ctx = ssl.create_default_context(cafile=ca_file if not insecure else None)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert and key:
        ctx.load_cert_chain(cert, key)
    return ctx


async def ask(
    backend: Backend, request: bytes, head_only: bool = False, budget: float | None = None
) -> NovaReply:
    """Send `request` (head and body; `head_only` for HEAD) to Nova and read its answer's
    head; the rest is the caller's to relay (`NovaReply.relay_to`) or drop (`close`).
    Everything, from connecting to the last byte relayed, has one deadline: the backend
    timeout, or `budget` (what is left of the VM's connection) if that is sooner. Raises
    BackendError (nothing has reached the VM yet)."""
    loop = asyncio.get_running_loop()
    seconds = backend.timeout if budget is None else min(backend.timeout, budget)
    end = loop.time() + seconds
    reader, writer = await _connect(backend, seconds)
    try:
        writer.write(request)
        head = await _within(backend, seconds, end, _answer_head(reader, writer))
        try:
            answer = response_head(head, head_only)
        except ValueError as e:
            raise BackendError(502, f"{backend} answered garbage: {e}") from None
    except BaseException:
        writer.close()
        raise
    return NovaReply(backend, answer, reader, writer, end)


async def relay(
    backend: Backend, request: bytes, client: asyncio.StreamWriter, head_only: bool = False
) -> int:
    """ask, then relay the whole answer to `client`; returns Nova's status. Raises
    BackendError before anything was written to `client`, BodyCut after."""
    reply = await ask(backend, request, head_only)
    try:
        return await reply.relay_to(client)
    finally:
        reply.close()


@dataclass
class NovaReply:
    """Nova's answer once its head is in: what the VM will get, and the connection its
    body still comes on, to relay by `end` (loop time) at the latest."""

    backend: Backend
    answer: Answer
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    end: float

    @property
    def status(self) -> int:
        return self.answer.status

    async def relay_to(self, client: asyncio.StreamWriter) -> int:
        """The head, then the body, to `client`, all by `end`: a VM that reads slowly
        gets a body cut short at the deadline, not a slot held for as long as it likes.
        Returns Nova's status; BodyCut if the body did not get through in full."""
        client.write(self.answer.head)
        try:
            await _copy(self.reader, client, self.answer.length, self.end)
        except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            what = "not relayed in full in time" if isinstance(e, asyncio.TimeoutError) else e
            cut = f"{self.backend}: body cut short: {what or type(e).__name__}"
            raise BodyCut(self.status, cut) from None
        return self.status

    def close(self) -> None:
        self.writer.close()


async def _answer_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    await writer.drain()
    return await reader.readuntil(b"\r\n\r\n")


async def _connect(
    backend: Backend, seconds: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(
                backend.host, backend.port, ssl=backend.tls, limit=MAX_RESPONSE_HEAD
            ),
            seconds,
        )
    except asyncio.TimeoutError:
        raise BackendError(504, f"{backend}: no connection within {seconds:g}s") from None
    except OSError as e:  # refused, unreachable, TLS handshake (ssl.SSLError is an OSError)
        raise BackendError(502, f"{backend}: {e.strerror or e}") from None


async def _within(backend: Backend, seconds: float, end: float, answer) -> bytes:
    """Nova's response head (the coroutine `answer`), by `end` (loop time), the end of
    the `seconds` Nova was given."""
    left = max(0.0, end - asyncio.get_running_loop().time())
    try:
        return await asyncio.wait_for(answer, left)
    except asyncio.TimeoutError:
        raise BackendError(504, f"{backend}: no answer within {seconds:g}s") from None
    except asyncio.LimitOverrunError:
        raise BackendError(502, f"{backend}: response head over {MAX_RESPONSE_HEAD}") from None
    except asyncio.IncompleteReadError:
        raise BackendError(502, f"{backend} closed the connection without answering") from None
    except OSError as e:
        raise BackendError(502, f"{backend}: {e.strerror or e}") from None


async def _copy(
    reader: asyncio.StreamReader, client: asyncio.StreamWriter, length: int | None, end: float
) -> None:
    """The body: `length` bytes, or (None) until Nova closes; every read and write by
    `end` (loop time). A body shorter than its Content-Length is IncompleteReadError."""
    loop = asyncio.get_running_loop()
    left = length
    while left is None or left > 0:
        want = CHUNK if left is None else min(CHUNK, left)
        chunk = await asyncio.wait_for(reader.read(want), max(0.0, end - loop.time()))
        if not chunk:
            if left is None:
                return
            raise asyncio.IncompleteReadError(b"", left)
        client.write(chunk)
        await asyncio.wait_for(client.drain(), max(0.0, end - loop.time()))
        if left is not None:
            left -= len(chunk)
