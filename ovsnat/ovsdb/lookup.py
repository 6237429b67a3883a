"""The metadata proxy's question to OVSDB, asked afresh for every request: which VM port
of the bridge has OpenFlow port P (ovsnat-metadata-proxy, docs/metadata.md).

No IDL and no cache: a port that moved, was renumbered or lost its keys a moment ago is
seen as it is now, and nothing can go stale. A lookup is one short JSON-RPC exchange (RFC
7047 `transact` with `select`s) over a connection of its own, on asyncio so a slow OVSDB
blocks no other VM's request; on a local unix socket it costs well under a millisecond,
and the proxy's rate limit (keyed on the port, before any lookup) bounds how often a VM
can make it ask.

An ofport is unique per bridge only, so the rows are narrowed to the Interfaces of the
bridge's own Ports: a second transaction, only when some row has that ofport.

Each row comes with its `_uuid`, so the proxy can ask again, just before it hands Nova's
answer to the VM, whether that same row still has that ofport (`row_by_uuid`): an ofport
freed by a deleted port and given to a new one meanwhile would otherwise carry the first
VM's metadata to the second. One select by uuid, one transaction.

These connections are not pooled and not limited here; the proxy bounds how many it
opens at once (ovsnat.metadata.server), so many VMs together cannot swamp ovsdb-server.
"""

from __future__ import annotations

import asyncio
import codecs
import json
from dataclasses import dataclass, field

from ovsnat.ovsdb.values import atom, map_of, optional, set_of

DATABASE = "Open_vSwitch"
MAX_REPLY = 4 * 1024 * 1024  # a select of a few rows is a few KiB; more is a broken server
COLUMNS = ["_uuid", "name", "external_ids", "ofport"]


class OvsdbError(RuntimeError):
    """OVSDB could not be asked or answered with an error; the message says which."""


@dataclass(frozen=True)
class Remote:
    """Where OVSDB listens: `unix:PATH` or `tcp:HOST:PORT` (ovs-vsctl's --db syntax)."""

    kind: str
    path: str = ""
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> Remote:
        kind, _, rest = text.partition(":")
        if kind == "unix" and rest:
            return cls("unix", path=rest)
        host, _, port = rest.rpartition(":")
        if kind == "tcp" and host and port.isdigit():
            return cls("tcp", host=host.strip("[]"), port=int(port))
        raise ValueError(f"OVSDB remote {text!r}: expected unix:PATH or tcp:HOST:PORT")

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.kind == "unix":
            return await asyncio.open_unix_connection(self.path, limit=MAX_REPLY)
        return await asyncio.open_connection(self.host, self.port, limit=MAX_REPLY)

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


@dataclass(frozen=True)
class PortRow:
    """One Interface row: its name and external_ids (the contract's keys), its `_uuid`
    and its ofport (None when it has none)."""

    name: str
    external_ids: dict[str, str] = field(default_factory=dict)
    uuid: str = ""
    ofport: int | None = None

    @classmethod
    def of(cls, row: dict) -> PortRow:
        ids = {k: str(v) for k, v in map_of(row["external_ids"]).items()}
        return cls(row["name"], ids, atom(row["_uuid"]), optional(row["ofport"]))


async def bridge_rows_with_ofport(
    remote: Remote, bridge: str, ofport: int, timeout: float
) -> list[PortRow]:
    """The Interface rows of `bridge` whose ofport is `ofport` (normally one or none).
    Raises OvsdbError, naming what failed, when OVSDB cannot answer within `timeout`."""
    return await _within(remote, timeout, _ask(remote, bridge, ofport))


async def row_by_uuid(remote: Remote, uuid: str, timeout: float) -> PortRow | None:
    """The Interface row `uuid` as it is now; None once it is gone. Raises OvsdbError as
    bridge_rows_with_ofport does."""
    return await _within(remote, timeout, _ask_uuid(remote, uuid))


async def _within(remote: Remote, timeout: float, asking):
    try:
        return await asyncio.wait_for(asking, timeout)
    except asyncio.TimeoutError:
        raise OvsdbError(f"OVSDB at {remote} did not answer within {timeout:g}s") from None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        raise OvsdbError(f"OVSDB at {remote}: {e or type(e).__name__}") from None


async def _ask(remote: Remote, bridge: str, ofport: int) -> list[PortRow]:
    reader, writer = await remote.connect()
    try:
        rpc = _Rpc(reader, writer)
        ifaces, bridges = await rpc.transact(
            _select("Interface", [["ofport", "==", ofport]], COLUMNS),
            _select("Bridge", [["name", "==", bridge]], ["ports"]),
        )
        if not ifaces or not bridges:
            return []
        ports = set(set_of(bridges[0]["ports"]))
        owners = await rpc.transact(
            *(
                _select("Port", [["interfaces", "includes", row["_uuid"]]], ["_uuid"])
                for row in ifaces
            )
        )
        return [
            PortRow.of(row)
            for row, owner in zip(ifaces, owners, strict=True)
            if any(atom(p["_uuid"]) in ports for p in owner)
        ]
    finally:
        writer.close()


async def _ask_uuid(remote: Remote, uuid: str) -> PortRow | None:
    reader, writer = await remote.connect()
    try:
        (rows,) = await _Rpc(reader, writer).transact(
            _select("Interface", [["_uuid", "==", ["uuid", uuid]]], COLUMNS)
        )
        return PortRow.of(rows[0]) if rows else None
    finally:
        writer.close()


def _select(table: str, where: list, columns: list[str]) -> dict:
    return {"op": "select", "table": table, "where": where, "columns": columns}


class _Rpc:
    """One JSON-RPC connection: requests out, replies matched by id. OVSDB frames nothing:
    a message ends where its JSON value ends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.buffer, self.next_id = "", 0
        self.utf8 = codecs.getincrementaldecoder("utf-8")()  # a character may span reads

    async def transact(self, *ops: dict) -> list[list[dict]]:
        """Each op's rows, in order; an error of the transaction or of any op raises."""
        self.next_id += 1
        msg = {"method": "transact", "params": [DATABASE, *ops], "id": self.next_id}
        self.writer.write(json.dumps(msg).encode())
        await self.writer.drain()
        reply = await self._reply(self.next_id)
        if reply.get("error") is not None:
            raise OvsdbError(f"OVSDB refused a select: {reply['error']}")
        results = reply.get("result") or []
        failed = [r for r in results if isinstance(r, dict) and r.get("error")]
        if failed or len(results) != len(ops):
            raise OvsdbError(f"OVSDB refused a select: {failed or results}")
        return [r["rows"] for r in results]

    async def _reply(self, want: int) -> dict:
        while True:
            msg = await self._message()
            if msg.get("method") == "echo":  # the server's liveness probe: answer it
                echo = {"id": msg["id"], "result": msg["params"], "error": None}
                self.writer.write(json.dumps(echo).encode())
            elif msg.get("id") == want and "result" in msg:
                return msg

    async def _message(self) -> dict:
        decoder = json.JSONDecoder()
        while True:
            text = self.buffer.lstrip()
            if text:
                try:
                    msg, end = decoder.raw_decode(text)
                except json.JSONDecodeError:
                    pass  # incomplete: read on (MAX_REPLY bounds how far)
                else:
                    self.buffer = text[end:]
                    return msg
            chunk = await self.reader.read(65536)
            if not chunk:
                raise OvsdbError("OVSDB closed the connection before answering")
            self.buffer += self.utf8.decode(chunk)
            if len(self.buffer) > MAX_REPLY:
                raise OvsdbError(f"OVSDB's reply exceeds {MAX_REPLY} bytes")
