"""`ovsnat flows`: compile a host's flows offline from a config file and a ports file.

The ports file is JSON: a list of Interface rows as OVSDB holds them,
    [{"name": "tapvm1", "ofport": 2, "external_ids": {"iface-id": "vm1", ...}}, ...]
Rejected ports are reported on stderr with their reasons, exactly as the controller logs them.
"""

from __future__ import annotations

import argparse
import json
import sys

from ovsnat.compile.compiler import compile_state
from ovsnat.compile.flows import ofctl_text
from ovsnat.compile.punt_flows import METERS
from ovsnat.core.state import build_state
from ovsnat.model import ConfigError, HostConfig, PortError, Rejection, VmPort
from ovsnat.model.options import read_ini


def load_ports(path: str) -> list:
    with open(path) as f:
        rows = json.load(f)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of interface rows")
    ports = []
    for i, row in enumerate(rows):
        name = str(row.get("name", f"#{i}")) if isinstance(row, dict) else f"#{i}"
        try:
            if not isinstance(row, dict) or not isinstance(row.get("external_ids", {}), dict):
                raise PortError(f"port {name!r}: not an object with an external_ids object")
            ports.append(
                VmPort.from_external_ids(
                    row.get("name"), row.get("ofport"), row.get("external_ids", {})
                )
            )
        except PortError as e:
            ports.append(Rejection(name, str(e)))
    return ports


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ovsnat flows", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="ovsnat.conf ([ovsnat] section)")
    p.add_argument("--ports", required=True, help="JSON list of interface rows")
    p.add_argument(
        "--uplink-ofport",
        type=int,
        default=1,
        help="OpenFlow port of uplink_port (OVSDB knows it on a live host)",
    )
    a = p.parse_args(argv)
    try:
        options = read_ini(a.config)
        options["uplink_ofport"] = a.uplink_ofport
        cfg = HostConfig.parse(options)
        ports = load_ports(a.ports)
    except (ConfigError, ValueError, OSError) as e:
        print(f"ovsnat flows: {e}", file=sys.stderr)
        return 2
    state = build_state(cfg, ports)
    for r in state.rejected:
        print(f"rejected: {r.reason}", file=sys.stderr)
    sys.stdout.write("".join(f"# meter (add first): {m.text()}\n" for m in METERS))
    sys.stdout.write(ofctl_text(compile_state(state)))
    return 0
