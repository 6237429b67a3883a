"""Issue 25 item 7, flows per host: ovsnat's compiler (ovsnat.compile.compiler.compile_state)
on the configuration of bench.sgconfig, against Neutron's OVS firewall driver's count for the
same configuration (bench.neutron_fw, a formula from its code; bench.neutron_check runs the
driver itself to check it), and how both grow when the rules or the members double.

ovsnat's security-group flows are the host's flows with the keys less the same host's
without them (same ports, unfiltered): the anti-spoofing classify flows are in both, so the
difference is what filtering costs. Neutron's count is every flow of its firewall tables,
anti-spoofing included (it has no other). One network; Neutron's member flows are per
network (bench.neutron_fw), ovsnat's per host.
"""

from __future__ import annotations

import time
from collections import Counter

from bench import neutron_fw
from bench.common import Result, say
from bench.sgconfig import desired_state
from ovsnat.compile.compiler import compile_state
from ovsnat.compile.flows import (
    COOKIE_SG_GROUP,
    COOKIE_SG_MEMBER,
    COOKIE_SG_PROFILE,
)

PORTS, RULES, MEMBERS = 200, 20, 1000
KINDS = {COOKIE_SG_PROFILE: "rules", COOKIE_SG_GROUP: "remote groups", COOKIE_SG_MEMBER: "members"}


def ovsnat_count(ports: int, profiles: int, rules: int, members: int) -> dict:
    """ovsnat's flows for the configuration: with and without the keys, and the filtering
    share by owner kind (the flows' cookies: ovsnat.compile.flows)."""
    t0 = time.process_time()
    flows = compile_state(desired_state(ports, profiles, rules, members))
    cpu = time.process_time() - t0
    plain = compile_state(desired_state(ports, groups=False))
    kinds = Counter(KINDS.get(f.cookie >> 56, "host and ports") for f in flows)
    plain_kinds = Counter(KINDS.get(f.cookie >> 56, "host and ports") for f in plain)
    return {
        "with_groups": len(flows),
        "without": len(plain),
        "filtering": len(flows) - len(plain),
        "by_kind": {k: kinds[k] - plain_kinds[k] for k in sorted(kinds)},
        "compile_cpu_s": round(cpu, 3),
    }


def neutron_count(ports: int, profiles: int, rules: int, members: int) -> dict:
    state = desired_state(ports, profiles, rules, members)
    return neutron_fw.count([vm.security.groups for vm in state.vms], state.security).as_dict()


def measure(ports: int = PORTS, rules: int = RULES, members: int = MEMBERS) -> dict:
    """Both counts for 1 profile and one per port, each at (rules, members), twice the
    rules, twice the members and twice both."""
    out = {}
    for profiles in (1, ports):
        for name, r, m in (
            ("base", rules, members),
            ("2x rules", 2 * rules, members),
            ("2x members", rules, 2 * members),
            ("2x both", 2 * rules, 2 * members),
        ):
            key = f"{profiles} profiles, {name}"
            out[key] = {
                "ports": ports,
                "profiles": profiles,
                "rules_per_group": r,
                "members": m,
                "ovsnat": ovsnat_count(ports, profiles, r, m),
                "neutron": neutron_count(ports, profiles, r, m),
            }
            o, n = out[key]["ovsnat"], out[key]["neutron"]
            say(
                f"  {key}: ovsnat {o['filtering']} filtering flows ({o['with_groups']} in "
                f"all, {o['without']} without groups), Neutron {n['total']}"
            )
    return out


def interaction(counts: dict, profiles: int, side: str) -> int:
    """f(2r, 2m) - f(2r, m) - f(r, 2m) + f(r, m): 0 when the flows grow as rules + members,
    positive when a rule is multiplied by the members."""
    f = {
        name: (
            counts[f"{profiles} profiles, {name}"][side]["filtering"]
            if side == "ovsnat"
            else counts[f"{profiles} profiles, {name}"][side]["total"]
        )
        for name in ("base", "2x rules", "2x members", "2x both")
    }
    return f["2x both"] - f["2x rules"] - f["2x members"] + f["base"]


def results(counts: dict, ports: int = PORTS, rules: int = RULES, members: int = MEMBERS):
    out = []
    for profiles in (1, ports):
        label = (
            f"sg flows {ports} ports x 3 groups x {rules} rules, {members} members, "
            f"{profiles} profile{'s' if profiles > 1 else ''}"
        )

        def get(name, side, what):
            return counts[f"{profiles} profiles, {name}"][side][what]

        base = counts[f"{profiles} profiles, base"]
        out.append(
            Result(
                label,
                "filtering flows per host: ovsnat (with - without keys) / Neutron OVS firewall",
                get("base", "ovsnat", "filtering"),
                get("base", "neutron", "total"),
                "flows",
                "",
                base,
            )
        )
        for name, added, what in (
            ("2x rules", 3 * rules, f"rule added ({rules} -> {2 * rules} per group)"),
            ("2x members", members, f"member added ({members} -> {2 * members})"),
        ):
            flows = {
                side: [get(n, side, key) for n in ("base", name)]
                for side, key in (("ovsnat", "filtering"), ("neutron", "total"))
            }
            out.append(
                Result(
                    label,
                    f"flows per {what}, ovsnat / Neutron",
                    (flows["ovsnat"][1] - flows["ovsnat"][0]) / added,
                    (flows["neutron"][1] - flows["neutron"][0]) / added,
                    "flows",
                    "",
                    {
                        "flows": flows,
                        "growth": {k: round(v[1] / v[0], 3) for k, v in flows.items()},
                    },
                )
            )
        out.append(
            Result(
                label,
                "rules x members interaction f(2r,2m)-f(2r,m)-f(r,2m)+f(r,m), ovsnat",
                interaction(counts, profiles, "ovsnat"),
                None,
                "flows",
                "value <= 0",
                {"neutron": interaction(counts, profiles, "neutron")},
            )
        )
    return out


def sgflows(ports: int = PORTS, rules: int = RULES, members: int = MEMBERS) -> list[Result]:
    counts = measure(ports, rules, members)
    return results(counts, ports, rules, members)
