"""Writing to OVSDB: a VM's contract keys for `ovsnat bind` / `unbind`.

The rare, interactive writes use the python-ovs IDL (transactions with retries are what it
is good at); the controller's own small writes (the installed marker) go through the
watcher's session instead (ovsnat.ovsdb.watcher).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import ovs.db.idl
import ovs.jsonrpc
import ovs.poller
import ovs.stream

DATABASE = "Open_vSwitch"


def fetch_schema(remote: str, timeout: float = 10) -> dict:
    """The Open_vSwitch schema from the server itself (no schema file needed)."""
    error, stream = ovs.stream.Stream.open_block(
        ovs.stream.Stream.open(remote), timeout=int(timeout * 1000)
    )
    if error:
        raise ConnectionError(f"cannot connect to OVSDB at {remote}: {error}")
    rpc = ovs.jsonrpc.Connection(stream)
    try:
        error, reply = rpc.transact_block(
            ovs.jsonrpc.Message.create_request("get_schema", [DATABASE])
        )
    finally:
        rpc.close()
    if error or reply.error:
        raise ConnectionError(f"get_schema from {remote} failed: {error or reply.error}")
    return reply.result


class IfaceNotFound(LookupError):
    """No Interface row carries the requested external_ids:iface-id."""


def set_iface_external_ids(
    remote: str,
    iface_id: str,
    set_keys: dict[str, str],
    remove_keys: list[str] | tuple = (),
    check: Callable[[str, int | None, dict], None] | None = None,
    timeout: float = 10,
) -> dict[str, dict]:
    """Set and remove external_ids keys on every Interface row whose external_ids:iface-id is
    `iface_id`, in one OVSDB transaction; returns {interface name: external_ids after}.

    The keys are written as map mutations of single keys, so the keys other writers own
    (os-vif's, Neutron's) are never rewritten, even when they change meanwhile.
    `check(name, ofport, external_ids_after)` runs on each row before anything is sent and
    may raise to abort without writing. Raises IfaceNotFound, ConnectionError or
    TimeoutError."""
    if set(set_keys) & set(remove_keys):
        raise ValueError(f"keys both set and removed: {sorted(set(set_keys) & set(remove_keys))}")
    Txn = ovs.db.idl.Transaction
    deadline = time.monotonic() + timeout
    helper = ovs.db.idl.SchemaHelper(schema_json=fetch_schema(remote, timeout))
    helper.register_columns("Interface", ["name", "ofport", "external_ids"])
    idl = ovs.db.idl.Idl(remote, helper, leader_only=False)

    def wait(txn=None) -> None:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"OVSDB at {remote}: no answer within {timeout:g} s")
        poller = ovs.poller.Poller()
        idl.wait(poller)
        if txn is not None:
            txn.wait(poller)
        poller.timer_wait(100)
        poller.block()

    try:
        seqno = None  # the IDL contents the last attempt was built on
        while True:
            idl.run()
            while idl.state != idl.IDL_S_MONITORING or idl.change_seqno == seqno:
                wait()
                idl.run()
            seqno = idl.change_seqno
            rows = [
                r
                for r in idl.tables["Interface"].rows.values()
                if dict(r.external_ids).get("iface-id") == iface_id
            ]
            if not rows:
                raise IfaceNotFound(
                    f"no Interface has external_ids:iface-id={iface_id!r} (OVSDB {remote})"
                )
            after = {}
            for row in sorted(rows, key=lambda r: r.name):
                ids = dict(row.external_ids)
                ids.update({key: str(value) for key, value in set_keys.items()})
                for key in remove_keys:
                    ids.pop(key, None)
                if check is not None:
                    check(row.name, row.ofport[0] if row.ofport else None, ids)
                after[row.name] = ids
            txn = Txn(idl)
            for row in rows:
                present = dict(row.external_ids)
                for key in remove_keys:
                    if key in present:
                        row.delkey("external_ids", key)
                for key, value in set_keys.items():
                    if present.get(key) != str(value):
                        row.setkey("external_ids", key, str(value))
            status = txn.commit()
            while status == Txn.INCOMPLETE:
                idl.run()
                status = txn.commit()
                if status == Txn.INCOMPLETE:
                    wait(txn)
            if status in (Txn.SUCCESS, Txn.UNCHANGED):
                return after
            if status != Txn.TRY_AGAIN:
                raise ConnectionError(f"OVSDB {remote}: transaction failed: {txn.get_error()}")
            # TRY_AGAIN (connection dropped, or a row went away): wait for fresh contents.
    finally:
        idl.close()
