"""Security groups as flows (flows/pipeline.md "Security groups"): stateful filtering at the
port boundaries, each filtered port in a conntrack zone of its own (SG_ZONE_BASE + ofport).

Owners, so that a host's flows grow as rules + members, never rules x members:
- a *profile* (the sorted groups of one or more ports: ports with the same groups share it)
  owns its rules' flows in sg_out and sg_in, matched on reg9 = the profile's id;
- a *member* (one IPv4 address in a remote group some local rule names) owns one flow per
  direction carrying the conjunctions of every group it is in: a rule naming a remote group
  is one flow (its first dimension), whatever the group's size;
- a *remote group* owns the flows its conjunctions end in (conj_id = the group's, per
  direction and statefulness), shared by every profile naming it;
- the host owns the conntrack lookups and what every profile shares (invalid dropped,
  established and related on their way, replies handed over the handoff VLAN).
A port loads its profile (reg9), zone (reg10) and ofport (reg11) where it is classified and
where it is delivered, and owns a drop flow per direction that counts what its groups refuse.
"""

from __future__ import annotations

import zlib

from ovsnat.compile.actions import Conjunction, Ct, CtClear, Goto, OutputReg
from ovsnat.compile.flows import Flow, Match, make_flow
from ovsnat.compile.pipeline import (
    HANDED,
    OUTSIDE,
    SG_IN,
    SG_IN_CT,
    SG_OUT,
    SG_OUT_CT,
    VM_ROUTE,
    flag,
    no_flag,
)
from ovsnat.model.secgroups import Group, Rule, port_ranges

TABLES = (SG_OUT_CT, SG_OUT, SG_IN_CT, SG_IN)  # their misses are dropped (host.DROPPED)
ALLOW_PRIO, CONJ_PRIO, KILL_PRIO, PORT_DROP_PRIO = 100, 90, 5, 1
NEW = "+new+trk"
PROTO_NAMES = {None: "ip", 1: "icmp", 6: "tcp", 17: "udp"}


def profile_id(groups: tuple[str, ...]) -> int:
    """A profile's id (reg9, and its flows' cookie owner): a hash of its sorted groups, so
    a restarted controller finds the same ids in the switch. Never 0 (0: not filtered)."""
    return zlib.crc32(",".join(groups).encode()) or 1


def conj_id(group: str, ingress: bool, stateful: bool) -> int:
    """The conjunction a remote group's rules end in, per direction and statefulness."""
    return zlib.crc32(f"{group}/{'in' if ingress else 'out'}/{int(stateful)}".encode()) or 1


def stateful(groups: tuple[Group, ...]) -> bool:
    """Neutron refuses stateful and stateless groups on one port; a mix is enforced as
    stateful (the safer reading: replies pass, nothing else more)."""
    return not groups or any(g.stateful for g in groups)


def applied_rules(groups: tuple[Group, ...]):
    seen = set()
    for g in groups:
        for r in g.rules:
            if r.applied and (r.id, r.ingress) not in seen:
                seen.add((r.id, r.ingress))
                yield r


DEAD = 0x2  # ct_mark bit in a port's zone: a change stopped allowing this connection
EST_ORIG, NOT_REPLY = "+est-rpl+trk", "-rpl+trk"


def host_flows(c: int) -> list[Flow]:
    """The conntrack lookups (sg_in's after a ct_clear: the packet may come from the PAT or
    a network's zone), and what every profile shares. Replies and related packets pass;
    every packet in a connection's original direction meets the rules again, not only its
    first, so a rule removed stops the next one (OSSN-0020): one no rule allows any more
    marks its connection dead (ct_mark), and a dead connection's packets are dropped both
    ways, so neither side can take it up again as new."""
    flows = []
    for ct_table, table, ingress in ((SG_OUT_CT, SG_OUT, False), (SG_IN_CT, SG_IN, True)):
        lookup = ([CtClear()] if ingress else []) + [Ct(zone="reg10", table=table)]
        flows += [
            make_flow(c, ct_table, 100, Match.of(proto="ip"), lookup),
            make_flow(c, table, 200, Match.of(ct_state="+inv+trk", proto="ip"), []),
            make_flow(
                c,
                table,
                155,
                Match.of(ct_state="+trk", ct_mark=f"{DEAD:#x}/{DEAD:#x}", proto="ip"),
                [],
            ),
            make_flow(c, table, 150, Match.of(ct_state="+est+rpl+trk", proto="ip"), pass_(ingress)),
            make_flow(c, table, 150, Match.of(ct_state="+rel+trk", proto="ip"), pass_(ingress)),
            make_flow(
                c,
                table,
                KILL_PRIO,
                Match.of(ct_state=EST_ORIG, proto="ip"),
                [Ct(zone="reg10", commit=True, mark=DEAD)],
            ),
        ]
    # A reply the host a VM left hands over the handoff VLAN: a session that host's
    # conntrack holds (ovsnat.core.handoff), new only to this host's zone.
    handed = Match.of(ct_state=NOT_REPLY, proto="ip", reg5=flag(HANDED))
    return flows + [make_flow(c, SG_IN, 160, handed, allow(True))]


def pass_(ingress: bool) -> list:
    return [OutputReg("reg11")] if ingress else [Goto(VM_ROUTE)]


def allow(ingress: bool) -> list:
    """A new connection allowed: committed in the port's zone, then on its way."""
    return [Ct(zone="reg10", commit=True), *pass_(ingress)]


def profile_flows(c: int, pid: int, groups: tuple[Group, ...]) -> list[Flow]:
    """A profile's rules, each as it matches a new connection (committed) and a later
    packet in the original direction (passed); stateless groups match every packet and
    commit nothing. A rule naming a remote group is the first dimension of the group's
    conjunction, one flow for both."""
    sf = stateful(groups)
    flows = [] if sf else _untracked(c, pid)
    for rule in applied_rules(groups):
        table = SG_IN if rule.ingress else SG_OUT
        if rule.remote_group is not None:
            cid = conj_id(rule.remote_group, rule.ingress, sf)
            variants = [(NOT_REPLY if sf else None, [Conjunction(cid, 1, 2)], CONJ_PRIO)]
        elif sf:
            variants = [
                (NEW, allow(rule.ingress), ALLOW_PRIO),
                (EST_ORIG, pass_(rule.ingress), ALLOW_PRIO),
            ]
        else:
            variants = [(None, pass_(rule.ingress), ALLOW_PRIO)]
        for state, actions, prio in variants:
            flows += [make_flow(c, table, prio, m, actions) for m in rule_matches(pid, rule, state)]
    return _merge(flows)


def _untracked(c: int, pid: int) -> list[Flow]:
    """A stateless profile's packets skip conntrack (its rules match every packet): a
    reply conntrack never saw the start of would be invalid (a SYN-ACK creates nothing)."""
    match = Match.of(proto="ip", reg9=f"{pid:#x}")
    return [
        make_flow(c, SG_OUT_CT, 110, match, [Goto(SG_OUT)]),
        make_flow(c, SG_IN_CT, 110, match, [CtClear(), Goto(SG_IN)]),
    ]


def rule_matches(pid: int, rule: Rule, state: str | None) -> list[Match]:
    """A rule as matches: its protocol, ports (a range as aligned masked blocks) or ICMP type
    and code, and remote prefixes (a remote group is the conjunction's other dimension)."""
    base = {"reg9": f"{pid:#x}", **({"ct_state": state} if state else {})}
    proto = PROTO_NAMES.get(rule.proto)
    base.update(proto=proto) if proto else base.update(proto="ip", nw_proto=rule.proto)
    ports: list[dict] = [{}]
    if rule.proto in (6, 17) and rule.lo is not None:
        ports = [
            {"tp_dst": v if m == 0xFFFF else f"{v:#x}/{m:#x}"}
            for v, m in port_ranges(rule.lo, rule.hi)
        ]
    elif rule.proto == 1 and rule.lo is not None:
        code = {"icmp_code": rule.hi} if rule.hi is not None else {}
        ports = [{"icmp_type": rule.lo, **code}]
    side = "nw_src" if rule.ingress else "nw_dst"
    remotes = [{side: str(n.cidr)} for n in rule.prefixes]
    if not remotes or any(not n.prefixlen for n in rule.prefixes):
        remotes = [{}]  # no prefix, or 0.0.0.0/0: anyone
    return [Match.of(**base, **port, **remote) for port in ports for remote in remotes]


def group_flows(c: int, group: str, sides) -> list[Flow]:
    """Where a remote group's conjunctions end (`sides`: (ingress, stateful) of the rules
    naming it): allowed, as a rule without a remote is."""
    flows = []
    for ingress, sf in sides:
        table = SG_IN if ingress else SG_OUT
        m = dict(conj_id=conj_id(group, ingress, sf), proto="ip")
        if not sf:
            flows.append(make_flow(c, table, CONJ_PRIO, Match.of(**m), pass_(ingress)))
            continue
        flows += [
            make_flow(c, table, CONJ_PRIO, Match.of(**m, ct_state=NEW), allow(ingress)),
            make_flow(c, table, CONJ_PRIO, Match.of(**m, ct_state=EST_ORIG), pass_(ingress)),
        ]
    return flows


def member_flows(c: int, ip: str, sides) -> list[Flow]:
    """One member address's side of the conjunctions of the remote groups it is in (`sides`:
    (group, ingress, stateful) of the rules naming them): the source of what a port
    receives, the destination of what it sends."""
    flows = []
    for table, ingress, side in ((SG_IN, True, "nw_src"), (SG_OUT, False, "nw_dst")):
        conj = [Conjunction(conj_id(g, i, sf), 2, 2) for g, i, sf in sorted(sides) if i == ingress]
        if conj:
            # From the uplink, a member's address is spoofed: a member reaches a port from
            # inside (its own fixed IP), never through a FIP or PAT from outside.
            outside = {"reg5": no_flag(OUTSIDE)} if ingress else {}
            match = Match.of(proto="ip", **outside, **{side: ip})
            flows.append(make_flow(c, table, CONJ_PRIO, match, conj))
    return flows


def port_drops(c: int, ofport: int) -> list[Flow]:
    """What the port's groups refused, counted per port and direction."""
    return [
        make_flow(c, SG_OUT, PORT_DROP_PRIO, Match.of(in_port=ofport), []),
        make_flow(c, SG_IN, PORT_DROP_PRIO, Match.of(reg11=f"{ofport:#x}"), []),
    ]


def _merge(flows: list[Flow]) -> list[Flow]:
    """Two rules of one profile with the same match (a duplicate, or two groups' equal
    rules) are one flow; conjunctions of the same match are gathered into it."""
    out: dict[tuple, Flow] = {}
    for f in flows:
        key = (f.table, f.priority, f.match)
        old = out.get(key)
        if old is None:
            out[key] = f
        elif all(isinstance(a, Conjunction) for a in (*old.actions, *f.actions)):
            acts = tuple(sorted(set(old.actions) | set(f.actions), key=lambda a: a.id))
            out[key] = make_flow(f.cookie, f.table, f.priority, f.match, list(acts))
    return list(out.values())
