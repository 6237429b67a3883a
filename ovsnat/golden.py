"""Named scenarios whose compiled flows are kept in flows/<name>.flows.

`python -m ovsnat.golden --write` (or `make golden`) regenerates them; tests/test_golden.py
fails when the compiler's output differs, so every pipeline change shows up as a reviewed
diff of flow text.
"""

from __future__ import annotations

import argparse
import os
import sys

from ovsnat.compiler import METERS, compile_state, host_flows, vm_flows
from ovsnat.flows import ofctl_text
from ovsnat.model import HostConfig, VmPort, build_state
from ovsnat.pipeline import TABLES

FLOWS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "flows")

BASE = {
    "bridge": "br-int", "uplink_port": "uplink", "uplink_ofport": 1,
    "internal_cidr": "10.0.0.0/24", "internal_gateway_ip": "10.0.0.1",
    "router_mac": "02:00:00:00:00:01", "external_cidr": "203.0.113.0/24",
    "external_gateway_ip": "203.0.113.1", "external_gateway_mac": "02:00:00:00:00:fe",
    "snat_ip": "203.0.113.11", "snat_port_min": 20000, "snat_port_max": 29999,
    "ct_zone": 65000, "fip_frag_ct_zone": 65001,
}


def port(n: int, fip: str | None = None) -> VmPort:
    ids = {"iface-id": f"vm{n}", "attached-mac": f"02:00:0a:00:00:{n:02x}",
           "ovsnat-fixed-ip": f"10.0.0.{n}"}
    if fip:
        ids["ovsnat-fip"] = fip
    return VmPort.from_external_ids(f"tapvm{n}", n, ids)


# name -> (description, option overrides, ports)
SCENARIOS = {
    "fip-only": ("One VM with a floating IP.", {}, [port(11, "203.0.113.10")]),
    "pat-only": ("One VM without a floating IP (PAT).", {}, [port(12)]),
    "mixed": ("A FIP VM and a PAT VM on one host.", {},
              [port(11, "203.0.113.10"), port(12)]),
    "hairpin": ("Two FIP VMs and a PAT VM that reach each other's FIPs.", {},
                [port(11, "203.0.113.10"), port(12), port(13, "203.0.113.12")]),
    "per-vm-pat-blocks": ("PAT with 64 ports per VM (pat_ports_per_vm=64).",
                          {"pat_ports_per_vm": 64}, [port(12), port(14), port(15, "203.0.113.15")]),
    "gateway-by-arp": ("external_gateway_mac empty: the gateway's MAC is learned by ARP; "
                       "until then nothing leaves the uplink.", {"external_gateway_mac": ""},
                       [port(11, "203.0.113.10"), port(12)]),
    "many-vms": ("20 VMs, every third with a FIP.", {},
                 [port(n, f"203.0.113.{100 + n}" if n % 3 == 0 else None)
                  for n in range(20, 40)]),
}


def render(name: str) -> str:
    description, overrides, ports = SCENARIOS[name]
    cfg = HostConfig.parse({**BASE, **overrides})
    state = build_state(cfg, ports)
    assert not state.rejected, state.rejected
    header = (f"# {name}: {description}\n# Regenerate with `make golden`; see pipeline.md.\n"
              + "".join(f"# meter (add first): {m.text()}\n" for m in METERS))
    return header + ofctl_text(compile_state(state))


PIPELINE_MD = os.path.join(FLOWS_DIR, "pipeline.md")
BEGIN, END = "<!-- generated:begin (make golden) -->", "<!-- generated:end -->"


def flow_counts() -> dict[str, int]:
    """Flows per VM of each kind, from the compiler itself."""
    cfg = HostConfig.parse(BASE)
    blocks = HostConfig.parse({**BASE, "pat_ports_per_vm": 64})
    return {"FIP VM": len(vm_flows(cfg, port(11, "203.0.113.10"))),
            "PAT VM": len(vm_flows(cfg, port(12))),
            "PAT VM with pat_ports_per_vm > 0": len(vm_flows(blocks, port(12))),
            "host-level (gateway MAC configured)": len(host_flows(cfg))}


def pipeline_section() -> str:
    """The generated part of flows/pipeline.md: the declared tables and flow counts."""
    rows = ["| table | name | purpose | may match | goes to |", "|---|---|---|---|---|"]
    for t in TABLES:
        goes = ", ".join(str(n) for n in sorted(t.next_tables)) or "(output or drop)"
        rows.append(f"| {t.id} | `{t.name}` | {t.purpose} | {', '.join(sorted(t.matches))} "
                    f"| {goes} |")
    counts = [f"| {kind} | {n} |" for kind, n in flow_counts().items()]
    return "\n".join([BEGIN, "", *rows, "", "Flows per object (from the compiler):", "",
                      "| object | flows |", "|---|---|", *counts, "", END])


def pipeline_md(current: str) -> str:
    head, _, rest = current.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + pipeline_section() + tail


def path(name: str) -> str:
    return os.path.join(FLOWS_DIR, f"{name}.flows")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite flows/*.flows")
    args = parser.parse_args(argv)
    stale = []
    for name in SCENARIOS:
        text = render(name)
        current = open(path(name)).read() if os.path.exists(path(name)) else None
        if current != text:
            stale.append(name)
            if args.write:
                with open(path(name), "w") as f:
                    f.write(text)
    current = open(PIPELINE_MD).read()
    if pipeline_md(current) != current:
        stale.append("pipeline.md")
        if args.write:
            with open(PIPELINE_MD, "w") as f:
                f.write(pipeline_md(current))
    verb = "rewrote" if args.write else "differ"
    print(f"{verb}: {' '.join(stale)}" if stale else "golden flows are up to date")
    return 0 if args.write or not stale else 1


if __name__ == "__main__":
    sys.exit(main())
