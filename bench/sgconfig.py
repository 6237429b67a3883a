"""The security-group configuration the issue-25 benchmarks measure, written as the contract
says (the keys ovsnat.model.secgroups reads): every port in three groups of `rules` rules
each, one rule per group naming the remote group, which has `members` addresses cloud-wide,
the local ports' among them.

The groups: `sg-r` (the remote group, self-referencing as Neutron's default group is) and,
per profile j, `sg-a<j>` and `sg-b<j>`; ports are dealt over `profiles` distinct triples
(sg-r, sg-a<j>, sg-b<j>). One profile is the common case (a tenant's VMs share their
groups); one profile per port is the worst case for ovsnat, which compiles a profile's rules
once for every port that has exactly its groups.

The rules mix what Neutron users write: TCP and UDP single ports and ranges, ICMP (any, a
type, a type and code), remote_ip_prefix on some, egress rules, and the one remote-group
rule. Port numbers differ per group and rule, so no two rules of a profile are the same flow
(neither ovsnat nor OVS could merge them).
"""

from __future__ import annotations

from dataclasses import replace

import netaddr

from ovsnat.cli.golden import BASE
from ovsnat.core.state import build_state
from ovsnat.lab import bulk
from ovsnat.model import DesiredState, HostConfig, VmPort
from ovsnat.model.secgroups import parse_bridge

REMOTE = "sg-r"
# Rule kinds after the remote-group rule, in turn: (direction, proto, ports or range, remote).
KINDS = (
    ("in", "tcp", "single", "-"),
    ("in", "tcp", "range", "-"),
    ("in", "udp", "single", "-"),
    ("in", "udp", "range", "-"),
    ("in", "icmp", "type", "-"),
    ("in", "tcp", "single", "prefix"),
    ("in", "icmp", "typecode", "prefix"),
    ("out", "tcp", "single", "prefix"),
    ("out", "udp", "range", "-"),
    ("in", "tcp", "range", "prefix"),
)
# The remote-group rule of each group: any protocol (Neutron's default group), SSH, MySQL.
REMOTE_RULES = ("in,4,any,-", "in,4,tcp,22", "in,4,tcp,3306")


def group_rules(gid: str, k: int, rules: int, role: int) -> str:
    """`ovsnat-sg-<gid>`'s value: `rules` rules (at most 64), the first naming the remote
    group. `role` (0 the remote group, 1 and 2 the others of a profile) keeps the ports,
    ICMP types and codes of a port's three groups apart; k (the group's number) moves its
    prefixes."""
    direction, ether, proto, ports = REMOTE_RULES[role].split(",")
    out = [f"{gid}-0,{direction},{ether},{proto},{ports},g:{REMOTE}"]
    for j in range(1, rules):
        direction, proto, shape, remote = KINDS[(j - 1) % len(KINDS)]
        idx = role * 64 + j
        if shape == "single":
            ports = str(1024 + idx * 7)
        elif shape == "range":
            lo = 20000 + idx * 128
            ports = f"{lo + j % 5}-{lo + 99 + j % 7}"  # 95-105 ports: several masked blocks
        elif shape == "type":
            ports = str(idx)
        else:
            ports = f"3/{idx}"
        if remote == "prefix":
            remote = f"p:10.{(k + j) % 250 + 1}.0.0/16"
        out.append(f"{gid}-{j},{direction},4,{proto},{ports},{remote}")
    return ";".join(out)


def members(ports: int, total: int) -> list[str]:
    """The remote group's addresses: the local ports' fixed IPs first (they are all in it),
    then addresses of VMs on other hosts of the same network."""
    net = netaddr.IPNetwork(bulk.INTERNAL_CIDR)
    return [str(netaddr.IPAddress(net.first + bulk.FIRST_HOST + i)) for i in range(total)]


def profile_groups(j: int) -> str:
    return ",".join(sorted((REMOTE, f"sg-a{j}", f"sg-b{j}")))


def bridge_keys(profiles: int, rules: int, member_count: int, ports: int) -> dict[str, str]:
    """The Bridge external_ids: every group's rules and the remote group's members."""
    keys = {f"ovsnat-sg-{REMOTE}": group_rules(REMOTE, 0, rules, 0)}
    for j in range(profiles):
        for n, prefix in ((1, "sg-a"), (2, "sg-b")):
            gid = f"{prefix}{j}"
            keys[f"ovsnat-sg-{gid}"] = group_rules(gid, 2 * j + n, rules, n)
    keys[f"ovsnat-sgm-{REMOTE}"] = ",".join(members(ports, member_count))
    return keys


def port_keys(i: int, profiles: int) -> dict[str, str]:
    """Port i's security key: its profile's groups (ports dealt over the profiles in turn)."""
    return {"ovsnat-sg": profile_groups(i % profiles)}


def host_config() -> HostConfig:
    """The golden files' host config with the scale benchmarks' addresses (bulk)."""
    return HostConfig.parse({**BASE, **bulk.scale_options(), "snat_ip": bulk.SNAT_IP})


def desired_state(
    ports: int, profiles: int = 1, rules: int = 20, member_count: int = 1000, groups: bool = True
) -> DesiredState:
    """`ports` VMs as the scale benchmarks make them (half FIP), with their groups when
    `groups` (else no security key at all: unfiltered, as before issue 25)."""
    vms = []
    for i in range(ports):
        spec = bulk.vm_spec(i)
        ids = {**spec.external_ids, **(port_keys(i, profiles) if groups else {})}
        vms.append(VmPort.from_external_ids(spec.name, i + 10, ids))
    state = build_state(host_config(), vms)
    if state.rejected:
        raise RuntimeError(f"bench ports rejected: {state.rejected[:3]}")
    keys = bridge_keys(profiles, rules, member_count, ports) if groups else {}
    return replace(state, security=parse_bridge(keys))
