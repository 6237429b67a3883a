"""The controller's own small OVSDB writes, as JSON-RPC requests for the watcher's session.

- The installed marker on a port's Interface row: single-key map mutations, so other
  writers' keys are never rewritten.
- A touch of the bridge's Controller rows once the switch is in sync, which makes
  ovs-vswitchd reconfigure the live connection (ovsnat.core.reconcile.Reconfigure says why).
  Open vSwitch 3.1 leaves external_ids changes and a bare next_cfg bump out of what makes
  it reconfigure (measured: a changed Controller other_config or Open_vSwitch external_ids
  key applied max_backoff; Bridge, Interface or Controller external_ids did not), so the
  touch sets other_config:ovsnat-reconfigured, a key ovs-vswitchd does not read, to the
  time: a new value each time, in the rows of ovsnat's own bridge only.
"""

from __future__ import annotations

import ovs.jsonrpc

DATABASE = "Open_vSwitch"
TOUCH_KEY = "ovsnat-reconfigured"


def _map_mutations(column: str, set_keys: dict, remove_keys=()) -> list:
    keys = sorted(set(set_keys) | set(remove_keys))
    mutations = [[column, "delete", ["set", keys]]]
    if set_keys:
        mutations.append(
            [column, "insert", ["map", [[k, str(v)] for k, v in sorted(set_keys.items())]]]
        )
    return mutations


def iface_keys(uuid: str, set_keys: dict, remove_keys=()) -> ovs.jsonrpc.Message:
    """Set and remove external_ids keys of one Interface row."""
    return ovs.jsonrpc.Message.create_request(
        "transact",
        [
            DATABASE,
            {
                "op": "mutate",
                "table": "Interface",
                "where": [["_uuid", "==", ["uuid", uuid]]],
                "mutations": _map_mutations("external_ids", set_keys, remove_keys),
            },
        ],
    )


def touch_controllers(uuids, value: str) -> ovs.jsonrpc.Message:
    """Set other_config:ovsnat-reconfigured=value on these Controller rows, and bump
    next_cfg as ovs-vsctl does: ovs-vswitchd sets cur_cfg to it once it has applied the
    change, so anyone can see when it did (`ovs-vsctl wait-until`, the tests)."""
    touches = [
        {
            "op": "mutate",
            "table": "Controller",
            "where": [["_uuid", "==", ["uuid", uuid]]],
            "mutations": _map_mutations("other_config", {TOUCH_KEY: value}),
        }
        for uuid in sorted(uuids)
    ]
    bump = {
        "op": "mutate",
        "table": "Open_vSwitch",
        "where": [],
        "mutations": [["next_cfg", "+=", 1]],
    }
    return ovs.jsonrpc.Message.create_request("transact", [DATABASE, *touches, bump])


def failure(msg) -> object:
    """The error of a write's reply, or None when it succeeded."""
    results = msg.result if msg.type == ovs.jsonrpc.Message.T_REPLY else None
    errors = [r for r in results or [] if isinstance(r, dict) and "error" in r]
    return msg.error or errors if msg.type != ovs.jsonrpc.Message.T_REPLY or errors else None
