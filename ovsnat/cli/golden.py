"""Named scenarios whose compiled flows are kept in flows/<name>.flows.

`python -m ovsnat.cli.golden --write` (or `make golden`) regenerates them; tests/test_golden.py
fails when the compiler's output differs, so every pipeline change shows up as a reviewed
diff of flow text.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from ovsnat.compile import sg_flows
from ovsnat.compile.compiler import compile_state
from ovsnat.compile.flows import ofctl_text
from ovsnat.compile.host import host_flows
from ovsnat.compile.network import network_flows
from ovsnat.compile.pipeline import TABLES
from ovsnat.compile.punt_flows import METERS
from ovsnat.compile.vm import vm_flows
from ovsnat.core.state import HostState, build_state
from ovsnat.model import DesiredState, HostConfig, VmPort, routing
from ovsnat.model.secgroups import Group, Rule, parse_bridge

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLOWS_DIR = os.path.join(REPO, "flows")

BASE = {
    "bridge": "br-int",
    "uplink_port": "uplink",
    "uplink_ofport": 1,
    "internal_cidr": "10.0.0.0/24",
    "internal_gateway_ip": "10.0.0.1",
    "router_mac": "02:00:00:00:00:01",
    "external_cidr": "203.0.113.0/24",
    "external_gateway_ip": "203.0.113.1",
    "external_gateway_mac": "02:00:00:00:00:fe",
    "snat_ip": "203.0.113.11",
    "snat_port_min": 20000,
    "snat_port_max": 29999,
    "ct_zone": 65000,
    "fip_frag_ct_zone": 65001,
}


FABRIC = {"fabric_port": "fabric", "fabric_ofport": 2}
NET_A = {
    "ovsnat-network": "tenant-a",
    "ovsnat-cidr": "10.1.0.0/24",
    "ovsnat-gateway": "10.1.0.1",
    "ovsnat-vlan": "101",
}
NET_B = {**NET_A, "ovsnat-network": "tenant-b", "ovsnat-vlan": "102"}
FLAT = {"ovsnat-network": "flat", "ovsnat-cidr": "10.3.0.0/24", "ovsnat-gateway": "10.3.0.1"}


def port(
    n: int, fip: str | None = None, net: dict | None = None, ofport: int = 0, **keys: str
) -> VmPort:
    """VM n: MAC 02:00:0a:00:00:n, fixed IP .n of its network (the default one unless `net`
    names one), ofport n unless given; `keys`: more external_ids (ovsnat_sg: ovsnat-sg)."""
    prefix = net["ovsnat-cidr"].rsplit(".", 1)[0] if net else "10.0.0"
    ids = {
        "iface-id": f"vm{n}",
        "attached-mac": f"02:00:0a:00:00:{n:02x}",
        "ovsnat-fixed-ip": f"{prefix}.{n}",
        **(net or {}),
    }
    if fip:
        ids["ovsnat-fip"] = fip
    ids.update({k.replace("_", "-"): v for k, v in keys.items()})
    name = f"tapvm{n}" + (f"-{net['ovsnat-network']}" if net else "")
    return VmPort.from_external_ids(name, ofport or n, ids)


# name -> (description, option overrides, ports)
SCENARIOS = {
    "fip-only": ("One VM with a floating IP.", {}, [port(11, "203.0.113.10")]),
    "pat-only": ("One VM without a floating IP (PAT).", {}, [port(12)]),
    "mixed": ("A FIP VM and a PAT VM on one host.", {}, [port(11, "203.0.113.10"), port(12)]),
    "hairpin": (
        "Two FIP VMs and a PAT VM that reach each other's FIPs.",
        {},
        [port(11, "203.0.113.10"), port(12), port(13, "203.0.113.12")],
    ),
    "per-vm-pat-blocks": (
        "PAT with 64 ports per VM (pat_ports_per_vm=64).",
        {"pat_ports_per_vm": 64},
        [port(12), port(14), port(15, "203.0.113.15")],
    ),
    "gateway-by-arp": (
        "external_gateway_mac empty: the gateway's MAC is learned by ARP; "
        "until then nothing leaves the uplink.",
        {"external_gateway_mac": ""},
        [port(11, "203.0.113.10"), port(12)],
    ),
    "many-vms": (
        "20 VMs, every third with a FIP.",
        {},
        [port(n, f"203.0.113.{100 + n}" if n % 3 == 0 else None) for n in range(20, 40)],
    ),
    "networks": (
        "A fabric port; the default network and two VLAN networks with the same "
        "CIDR (10.1.0.0/24 in VLAN 101 and 102), each with a PAT VM at 10.1.0.11 and "
        "VLAN 101 with a FIP VM.",
        FABRIC,
        [
            port(11, "203.0.113.10"),
            port(11, net=NET_A, ofport=21),
            port(12, "203.0.113.12", net=NET_A, ofport=22),
            port(11, net=NET_B, ofport=31),
        ],
    ),
    "flat": (
        "No default network (internal_cidr empty): an untagged network 'flat' and a VLAN "
        "network on the fabric.",
        {**FABRIC, "internal_cidr": "", "internal_gateway_ip": ""},
        [port(11, "203.0.113.10", net=FLAT, ofport=11), port(11, net=NET_A, ofport=21)],
    ),
    "conn-limit": (
        "conn_limit 100: each PAT VM counts its connections in a zone of its own "
        "(conn_limit_zone_base 20000 + its ofport); a FIP VM has no limit.",
        {"conn_limit": 100},
        [port(11, "203.0.113.10"), port(12), port(13)],
    ),
    "handoff": (
        "PAT session handoff (handoff_vlan 4000): a resident PAT VM (vm12), one that "
        "arrived within its grace period (vm13), and one that left this host for "
        "another (vm14 of tenant-a); docs/handoff.md.",
        {**FABRIC, "handoff_vlan": 4000},
        [port(12), port(13)],
    ),
    "security-groups": (
        "Security groups (flows/pipeline.md): vm11 (FIP) and vm12 share Neutron's default "
        "group (egress open, ingress from the group's members); vm13 has a web group "
        "(TCP 80 and 8000-8099 from anywhere, ICMP echo from 198.51.100.0/24, SSH from "
        "the default group) and an allowed address pair; vm14 has port security off; vm15 "
        "is administratively down. Members of the default group: vm11, vm12 and 10.0.0.40 "
        "(on another host).",
        {},
        [
            port(11, "203.0.113.10", ovsnat_sg="default"),
            port(12, ovsnat_sg="default"),
            port(13, ovsnat_sg="web", ovsnat_allowed_pairs="10.0.0.100"),
            port(14, ovsnat_port_security="off"),
            port(15, ovsnat_sg="default", ovsnat_admin="down"),
        ],
    ),
    "unrouted": (
        "A network on no router (tenant-a: ovsnat-net-tenant-a router=-, docs/routers.md): "
        "its gateway's ARP is answered (the DHCP server's address) but nothing is routed, "
        "no PAT, and vm12's FIP is held inert; tenant-b, on router r1 with a gateway, is "
        "routed as before.",
        FABRIC,
        [
            port(11, net=NET_A, ofport=21),
            port(12, "203.0.113.12", net=NET_A, ofport=22),
            port(11, net=NET_B, ofport=31),
        ],
    ),
    "no-snat": (
        "Routers without PAT (docs/routers.md): tenant-a on router r1 with enable_snat "
        "off (its FIP VM vm12 still translated, its PAT VM vm11 reaches nothing outside), "
        "the untagged network flat on router r2 without gateway (vm13's FIP held inert).",
        {**FABRIC, "internal_cidr": "", "internal_gateway_ip": ""},
        [
            port(11, net=NET_A, ofport=21),
            port(12, "203.0.113.12", net=NET_A, ofport=22),
            port(13, "203.0.113.13", net=FLAT, ofport=13),
        ],
    ),
}
# Scenario name -> the bridge's keys (security groups, routers)
BRIDGE_KEYS = {
    "unrouted": {
        "ovsnat-net-tenant-a": "router=-",
        "ovsnat-net-tenant-b": "router=r1",
        "ovsnat-router-r1": "ext=public;snat=on",
    },
    "no-snat": {
        "ovsnat-net-tenant-a": "router=r1",
        "ovsnat-router-r1": "ext=public;snat=off",
        "ovsnat-net-flat": "router=r2",
        "ovsnat-router-r2": "ext=-;snat=off",
    },
    "security-groups": {
        "ovsnat-sg-default": "r1,in,4,any,-,g:default;r2,out,4,any,-,-;r3,out,6,any,-,-",
        "ovsnat-sgm-default": "10.0.0.11,10.0.0.12,10.0.0.40",
        "ovsnat-sg-web": (
            "w1,in,4,tcp,80,-;w2,in,4,tcp,8000-8099,p:0.0.0.0/0;w3,in,4,icmp,8,p:198.51.100.0/24;"
            "w4,in,4,tcp,22,g:default;w5,out,4,any,-,-"
        ),
    },
}
# Scenario name -> (ports that arrived after the controller's first view, ports that left)
HANDOFFS = {"handoff": (["tapvm13"], [port(14, net=NET_A, ofport=24)])}


def scenario_state(name: str) -> DesiredState:
    """A scenario's desired state: its host config, ports and bridge keys."""
    _, overrides, ports = SCENARIOS[name]
    keys = BRIDGE_KEYS.get(name, {})
    state = build_state(HostConfig.parse({**BASE, **overrides}), ports, routing.parse_bridge(keys))
    assert not state.rejected, state.rejected
    return replace(state, security=parse_bridge(keys))


def render(name: str) -> str:
    description, overrides, ports = SCENARIOS[name]
    state = scenario_state(name)
    cfg = state.config
    header = (
        f"# {name}: {description}\n# Regenerate with `make golden`; see pipeline.md.\n"
        + "".join(f"# meter (add first): {m.text()}\n" for m in METERS)
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
        "host-level (gateway MAC configured)": len(host_flows(cfg)),
        "host-level, with a fabric": len(host_flows(fabric)),
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
    if not os.path.exists(SAMPLE_CONF) or _read(SAMPLE_CONF) != sample_conf():
        stale.append("ovsnat.conf.sample")
        if args.write:
            with open(SAMPLE_CONF, "w") as f:
                f.write(sample_conf())
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
