"""A bare OpenFlow 1.3 client on a lab bridge's management socket (`<rundir>/br-int.mgmt`,
where ovs-ofctl connects), for tests that need the switch's own bytes: it sends ovsnat's
packed messages unchanged and returns the raw flow stats entries (ovs-ofctl prints text)."""

from __future__ import annotations

import os
import socket
import struct
import time

from ovsnat.openflow import blobs, codec, messages
from ovsnat.openflow.digest import stats_digest

OFPT_ERROR, OFPT_BARRIER_REPLY, OFPT_MULTIPART_REPLY = 1, 21, 19


class OfClient:
    def __init__(self, rundir: str, bridge: str = "br-int", timeout: float = 20.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(os.path.join(rundir, f"{bridge}.mgmt"))
        self.buf = b""
        self.sock.sendall(struct.pack("!BBHI", 4, 0, 8, 1))  # hello, 1.3 only

    def close(self) -> None:
        self.sock.close()

    def _message(self) -> tuple[int, int, bytes]:
        while len(self.buf) < 8 or len(self.buf) < struct.unpack_from("!H", self.buf, 2)[0]:
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError("the switch closed the connection")
            self.buf += data
        length = struct.unpack_from("!H", self.buf, 2)[0]
        msg, self.buf = self.buf[:length], self.buf[length:]
        return msg[1], struct.unpack_from("!I", msg, 4)[0], msg

    def _until(self, xid: int, kind: int) -> list[bytes]:
        """Messages answering `xid` up to the one of type `kind`; an error raises."""
        out, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline:
            msg_type, got, msg = self._message()
            if got != xid:
                continue
            if msg_type == OFPT_ERROR:
                raise RuntimeError(f"OpenFlow error {msg[8:12].hex()} for xid {xid}")
            out.append(msg)
            if msg_type == kind and not (
                kind == OFPT_MULTIPART_REPLY and struct.unpack_from("!H", msg, 10)[0] & 1
            ):
                return out
        raise TimeoutError(f"no answer to xid {xid}")

    def install(self, packed: list[bytes], bundle_id: int = 1) -> None:
        """Packed flow_mods in one atomic bundle, as ovsnat sends them, then a barrier."""
        xid, parts = 100, [messages.bundle_ctrl(bundle_id, codec.BUNDLE_OPEN, 100)]
        for msg in packed:
            xid += 1
            parts.append(messages.bundle_add(bundle_id, blobs.with_xid(msg, xid)))
        parts += [
            messages.bundle_ctrl(bundle_id, codec.BUNDLE_COMMIT, xid + 1),
            messages.barrier(xid + 2),
        ]
        self.sock.sendall(b"".join(parts))
        self._until(xid + 2, OFPT_BARRIER_REPLY)

    def apply(self, msg: bytes) -> None:
        """One message (its xid kept), then a barrier: an error about it raises."""
        xid = struct.unpack_from("!I", msg, 4)[0]
        self.sock.sendall(msg + messages.barrier(xid + 1))
        for msg_type, got, reply in iter(self._message, None):
            if got == xid and msg_type == OFPT_ERROR:
                raise RuntimeError(f"OpenFlow error {reply[8:12].hex()} for xid {xid}")
            if got == xid + 1 and msg_type == OFPT_BARRIER_REPLY:
                return

    def group_desc(self) -> list[bytes]:
        """The switch's group description reply, as its raw multipart messages."""
        self.sock.sendall(messages.group_desc_request(8))
        return self._until(8, OFPT_MULTIPART_REPLY)

    def dump(self) -> dict[tuple[int, int], int]:
        """(table, cookie) -> body digest of every flow on the bridge."""
        self.sock.sendall(messages.flow_stats_request(7, 0, 0))
        entries = {}
        for msg in self._until(7, OFPT_MULTIPART_REPLY):
            offset = 16
            while offset < len(msg):
                length, table = struct.unpack_from("!HB", msg, offset)
                cookie = struct.unpack_from("!Q", msg, offset + 24)[0]
                entries[(table, cookie)] = stats_digest(msg, offset, length)
                offset += length
        return entries
