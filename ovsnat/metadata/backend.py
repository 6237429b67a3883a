"""Nova's metadata API, asked on the VM's behalf from the hypervisor's own namespace.

One connection per request (Nova's metadata answers are small and cloud-init asks a few
dozen times per boot), so nothing pools or goes stale across a Nova restart. Failures are
the VM's to retry, never the proxy's to die of: no connection is 502, no answer within
the timeout is 504, and a broken answer is 502. Once Nova's head has been relayed the
status is the VM's; a failure later only cuts the body short (and is logged).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from ovsnat.metadata.headers import MAX_RESPONSE_HEAD, response_head

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


async def relay(
    backend: Backend, request: bytes, client: asyncio.StreamWriter, head_only: bool = False
) -> int:
    """Send `request` (head and body; `head_only` for HEAD) to Nova and relay its answer
    to `client`; returns Nova's status. Raises BackendError before anything was written
    to `client`, BodyCut after."""
    reader, writer = await _connect(backend)
    try:
        writer.write(request)
        head = await _within(backend, _answer_head(reader, writer))
        try:
            answer = response_head(head, head_only)
        except ValueError as e:
            raise BackendError(502, f"{backend} answered garbage: {e}") from None
        client.write(answer.head)
        try:
            await _copy(backend, reader, client, answer.length)
        except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            cut = f"{backend}: body cut short: {e or type(e).__name__}"
            raise BodyCut(answer.status, cut) from None
        return answer.status
    finally:
        writer.close()


async def _answer_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    await writer.drain()
    return await reader.readuntil(b"\r\n\r\n")


async def _connect(backend: Backend) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(
                backend.host, backend.port, ssl=backend.tls, limit=MAX_RESPONSE_HEAD
            ),
            backend.timeout,
        )
    except asyncio.TimeoutError:
        raise BackendError(504, f"{backend}: no connection within {backend.timeout:g}s") from None
    except OSError as e:  # refused, unreachable, TLS handshake (ssl.SSLError is an OSError)
        raise BackendError(502, f"{backend}: {e.strerror or e}") from None


async def _within(backend: Backend, answer) -> bytes:
    """Nova's response head (the coroutine `answer`), within the backend timeout."""
    try:
        return await asyncio.wait_for(answer, backend.timeout)
    except asyncio.TimeoutError:
        raise BackendError(504, f"{backend}: no answer within {backend.timeout:g}s") from None
    except asyncio.LimitOverrunError:
        raise BackendError(502, f"{backend}: response head over {MAX_RESPONSE_HEAD}") from None
    except asyncio.IncompleteReadError:
        raise BackendError(502, f"{backend} closed the connection without answering") from None
    except OSError as e:
        raise BackendError(502, f"{backend}: {e.strerror or e}") from None


async def _copy(
    backend: Backend, reader: asyncio.StreamReader, client: asyncio.StreamWriter, length
) -> None:
    """The body: `length` bytes, or (None) until Nova closes; each read and each write
    within the timeout. A body shorter than its Content-Length is IncompleteReadError."""
    left = length
    while left is None or left > 0:
        want = CHUNK if left is None else min(CHUNK, left)
        chunk = await asyncio.wait_for(reader.read(want), backend.timeout)
        if not chunk:
            if left is None:
                return
            raise asyncio.IncompleteReadError(b"", left)
        client.write(chunk)
        await asyncio.wait_for(client.drain(), backend.timeout)
        if left is not None:
            left -= len(chunk)
