"""Named scenarios whose compiled flows are kept in flows/<name>.flows.

`python -m ovsnat.cli.golden --write` (or `make golden`) regenerates them; tests/test_golden.py
fails when the compiler's output differs, so every pipeline change shows up as a reviewed
diff of flow text.
"""

from __future__ import annotations

import argparse
import os
import sys

from ovsnat.cli.scenarios import (
    BASE,
    FABRIC,
    HANDOFFS,
    NET_A,
    SCENARIOS,
    port,
    scenario_state,
)
from ovsnat.cli.scenarios import FLAT as FLAT
from ovsnat.cli.scenarios import NET_B as NET_B
from ovsnat.cli.scenarios import build_state as build_state
from ovsnat.compile import eastwest, routed_flows, sg_flows
from ovsnat.compile.compiler import compile_state
from ovsnat.compile.flows import ofctl_text
from ovsnat.compile.host import host_flows
from ovsnat.compile.network import network_flows
from ovsnat.compile.punt_flows import METERS
from ovsnat.compile.tables import TABLES
from ovsnat.compile.vm import vm_flows
from ovsnat.core.state import HostState
from ovsnat.model import HostConfig, routing
from ovsnat.model.secgroups import Group, Rule

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLOWS_DIR = os.path.join(REPO, "flows")


def render(name: str) -> str:
    description, overrides, ports = SCENARIOS[name]
    state = scenario_state(name)
    cfg = state.config
    group = routed_flows.group(cfg)
    header = (
        f"# {name}: {description}\n# Regenerate with `make golden`; see pipeline.md.\n"
        + "".join(f"# meter (add first): {m.text()}\n" for m in METERS)
        + (f"# group (add first): {group.text()}\n" if group else "")
    )
    if name in HANDOFFS:
        return header + ofctl_text(_with_handoffs(cfg, ports, *HANDOFFS[name]))
    return header + ofctl_text(compile_state(state))


def _with_handoffs(cfg: HostConfig, ports, arrived, departed) -> list:
    host = HostState(cfg)
    for p in ports:
        host.update(p.name, p)
    for name in arrived:
        host.set_arrived(name, True)
    for p in departed:
        host.depart(p.name, p)
    return host.all_flows()


PIPELINE_MD = os.path.join(FLOWS_DIR, "pipeline.md")
BEGIN, END = "<!-- generated:begin (make golden) -->", "<!-- generated:end -->"


def flow_counts() -> dict[str, int]:
    """Flows per object of each kind, from the compiler itself."""
    cfg = HostConfig.parse(BASE)
    blocks = HostConfig.parse({**BASE, "pat_ports_per_vm": 64})
    fabric = HostConfig.parse({**BASE, **FABRIC})
    meta = HostConfig.parse({**BASE, "metadata_port": "ovsnat-meta", "metadata_ofport": 3})
    vlan = port(11, net=NET_A).network
    ssh = Group("g", (Rule("r", True, 6, 22, 22),))
    return {
        "FIP VM": len(vm_flows(cfg, port(11, "203.0.113.10"), cfg.default_network)),
        "PAT VM": len(vm_flows(cfg, port(12), cfg.default_network)),
        "PAT VM with pat_ports_per_vm > 0": len(vm_flows(blocks, port(12), blocks.default_network)),
        "FIP VM, with a fabric": len(
            vm_flows(fabric, port(11, "203.0.113.10"), fabric.default_network)
        ),
        "PAT VM, with a fabric": len(vm_flows(fabric, port(12), fabric.default_network)),
        "untagged network (the default one), with a fabric": len(
            network_flows(fabric, fabric.default_network)
        ),
        "VLAN network, with a fabric": len(network_flows(fabric, vlan)),
        "filtered port (security groups), besides its FIP or PAT flows": len(
            vm_flows(cfg, port(12, ovsnat_sg="g"), cfg.default_network)
        )
        - len(vm_flows(cfg, port(12), cfg.default_network)),
        "security profile, per stateful rule (TCP 22)": len(sg_flows.profile_flows(1, 1, (ssh,))),
        "security profile, per rule naming a remote group": len(
            sg_flows.profile_flows(1, 1, (Group("g", (Rule("r", True, remote_group="g"),)),))
        ),
        "remote group member address, per direction a rule names its group in": len(
            sg_flows.member_flows(1, "10.0.0.5", [("g", True, True)])
        ),
        **_east_west_counts(fabric, vlan),
        "port, with metadata (metadata_port), besides its other flows": len(
            vm_flows(meta, port(12), meta.default_network)
        )
        - len(vm_flows(cfg, port(12), cfg.default_network)),
        "host-level, with metadata, besides the rest": len(host_flows(meta)) - len(host_flows(cfg)),
        "host-level (gateway MAC configured)": len(host_flows(cfg)),
        "host-level, with a fabric": len(host_flows(fabric)),
    }


def _east_west_counts(fabric: HostConfig, vlan) -> dict[str, int]:
    """East-west routing's costs (docs/routers.md), with a fabric."""
    keys = routing.parse_bridge(
        {
            "ovsnat-net-tenant-a": "router=r1;cidr=10.1.0.0/24;gw=10.1.0.1;vlan=101",
            "ovsnat-router-r1": "ext=-;snat=off",
            "ovsnat-host": "hv1",
            "ovsnat-hostmac-hv1": "fa:16:3f:00:00:01",
            "ovsnat-hostmac-hv2": "fa:16:3f:00:00:02",
            "ovsnat-nb-tenant-a": "10.1.0.20=02:00:0a:01:00:14@hv2",
        }
    )
    route = keys.of("tenant-a")
    own = len(network_flows(fabric, vlan, route, route.tag)) - len(
        network_flows(fabric, vlan, route)
    )
    dest = eastwest.dest_flows(fabric, route, (), keys.hosts.mac)
    neighbours = eastwest.dest_flows(fabric, route, keys.neighbours["tenant-a"], keys.hosts.mac)
    return {
        "network routed east-west with a port here, besides its own flows": own,
        "network reachable east-west (each network of a router with a network here)": len(dest),
        "remote neighbour (an `ovsnat-nb-*` entry)": len(neighbours) - len(dest),
        "host with a routed MAC (ovsnat-hostmac-*; this host's own: a drop)": 1,
    }


def pipeline_section() -> str:
    """The generated part of flows/pipeline.md: the declared tables and flow counts."""
    rows = ["| table | name | purpose | may match | goes to |", "|---|---|---|---|---|"]
    for t in TABLES:
        goes = ", ".join(str(n) for n in sorted(t.next_tables)) or "(output or drop)"
        rows.append(
            f"| {t.id} | `{t.name}` | {t.purpose} | {', '.join(sorted(t.matches))} | {goes} |"
        )
    counts = [f"| {kind} | {n} |" for kind, n in flow_counts().items()]
    return "\n".join(
        [
            BEGIN,
            "",
            *rows,
            "",
            "Flows per object (from the compiler):",
            "",
            "| object | flows |",
            "|---|---|",
            *counts,
            "",
            END,
        ]
    )


def pipeline_md(current: str) -> str:
    head, _, rest = current.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + pipeline_section() + tail


SAMPLE_CONF = os.path.join(REPO, "etc", "ovsnat.conf.sample")


def sample_conf() -> str:
    """etc/ovsnat.conf.sample, generated from the option table so it never drifts."""
    import textwrap

    from ovsnat.model.options import OPTIONS

    out = [
        "# ovsnat host configuration: copy to /etc/ovsnat/ovsnat.conf and adjust.",
        "# Start with: ryu-manager --config-file /etc/ovsnat/ovsnat.conf ovsnat.app",
        "# Option names are a stable contract; a bad value stops startup with one message.",
        "# Generated by `make golden` from ovsnat/model/options.py.",
        "",
        "[ovsnat]",
    ]
    for o in OPTIONS:
        out += [f"# {line}" for line in textwrap.wrap(o.help, 96, break_on_hyphens=False)]
        out += [
            "snat_ip = 203.0.113.11"
            if o.name == "snat_ip"
            else f"#{o.name} = {'' if o.default is None else o.default}",
            "",
        ]
    return "\n".join(out)


BGP_CONF = os.path.join(REPO, "etc", "frr", "ovsnat-bgp.conf.sample")
FRR_SAMPLE = os.path.join(REPO, "etc", "frr", "frr.conf.sample")


def frr_sample() -> str:
    """etc/frr/frr.conf.sample: what `ovsnat bgp render` makes of the bgp sample."""
    from ovsnat.cli.bgp import settings_from
    from ovsnat.compile.frr_conf import render as render_frr
    from ovsnat.model.options import read_ini

    return render_frr(settings_from(read_ini(BGP_CONF)), "hv1")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def path(name: str) -> str:
    return os.path.join(FLOWS_DIR, f"{name}.flows")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite flows/*.flows")
    args = parser.parse_args(argv)
    stale = []
    for name in SCENARIOS:
        text = render(name)
        current = _read(path(name)) if os.path.exists(path(name)) else None
        if current != text:
            stale.append(name)
            if args.write:
                with open(path(name), "w") as f:
                    f.write(text)
    for sample, text in ((SAMPLE_CONF, sample_conf()), (FRR_SAMPLE, frr_sample())):
        if not os.path.exists(sample) or _read(sample) != text:
            stale.append(os.path.basename(sample))
            if args.write:
                with open(sample, "w") as f:
                    f.write(text)
    current = _read(PIPELINE_MD)
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
