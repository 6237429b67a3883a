"""`ovsnat dump|diff|status|trace --config ovsnat.conf`: read a live host."""

from __future__ import annotations

import argparse
import json
import sys

from ovsnat.cli import inspect as insp
from ovsnat.cli import status
from ovsnat.model import ConfigError


def main(cmd: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"ovsnat {cmd}")
    p.add_argument(
        "--config",
        default="/etc/ovsnat/ovsnat.conf",
        help="the host's ovsnat.conf (bridge, OVSDB, SNAT settings)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    if cmd == "trace":
        p.add_argument("source", help="a VM (port name, iface-id or fixed IP) or 'outside'")
        p.add_argument("dst", help="destination IPv4 address")
        p.add_argument("proto", nargs="?", default="tcp", choices=["tcp", "udp", "icmp"])
        p.add_argument("dport", nargs="?", type=int, default=80)
        p.add_argument(
            "--src-ip", default="198.51.100.10", help="source address of a packet from outside"
        )
        p.add_argument("--network", help="the source VM's network, when its fixed IP is in several")
    a = p.parse_args(argv)
    try:
        view = insp.load_view(a.config)
    except (insp.InspectError, ConfigError, ValueError, OSError, TimeoutError) as e:
        print(f"ovsnat {cmd}: {e}", file=sys.stderr)
        return 2
    if cmd == "dump":
        groups = insp.dump(view)
        print(json.dumps(groups, indent=1) if a.json else insp.format_dump(view, groups))
        return 0
    if cmd == "diff":
        d = insp.diff(view)
        if a.json:
            print(json.dumps(d, indent=1))
        else:
            for kind in ("missing", "stale", "foreign"):
                print(f"{kind} ({len(d[kind])}):")
                print("".join(f"  {line}\n" for line in d[kind]), end="")
        return 1 if d["missing"] or d["stale"] else 0
    if cmd == "status":
        from ovsnat.model.options import read_ini
        from ovsnat.runtime import dpctl

        target = dpctl.Target(read_ini(a.config).get("vswitchd_ctl") or "")
        answer = dpctl.appctl(
            target, "dpctl/dump-conntrack", f"zone={view.cfg.ct_zone}", timeout=60
        )
        if not answer.ok:
            print(f"ovsnat status: conntrack: {answer.error}", file=sys.stderr)
            return 2
        st = status.status(view, answer.out)
        print(json.dumps(st, indent=1) if a.json else status.format_status(st))
        return 0
    from ovsnat.cli import trace

    try:
        flow = trace.trace_flow(
            view, a.source, a.dst, a.proto, a.dport, src_ip=a.src_ip, network=a.network
        )
        output = trace.run_trace(view, flow)
    except insp.InspectError as e:
        print(f"ovsnat trace: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(trace.analyse(view, flow, output, a.proto), indent=1))
    else:
        print(trace.explain(view, flow, output, a.proto))
    return 0
