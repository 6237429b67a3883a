"""Security groups as flows (docs/security-groups.md): stateful filtering at the port
boundaries, each port in a conntrack zone of its own.

Three kinds of owner, so that a host's flows grow as rules + members, never rules x members:
- a *profile* (the sorted groups of one or more ports: ports with the same groups share it)
  owns its rules' flows in sg_out and sg_in, matched on reg9 = the profile's id;
- a *member* (one IPv4 address that is a member of a remote group some local rule names)
  owns one flow per direction carrying every conjunction that names a group it is in;
- the host owns the generic flows (conntrack lookups, invalid, established, handed replies).
A port loads its profile (reg9), zone (reg10) and ofport (reg11) where it is classified, or
where it is delivered to, and owns a drop flow per direction that counts what its groups
refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from ovsnat.compile.flows import COOKIE_SG_MEMBER, COOKIE_SG_PROFILE, Conjunction, Ct, \
    CtClear, Flow, Goto, Match, OutputReg, make_flow, owner_cookie
from ovsnat.compile.pipeline import HANDED, SG_IN, SG_IN_CT, SG_OUT, SG_OUT_CT, VM_ROUTE, flag
from ovsnat.model.secgroups import Group, Rule, port_ranges

ALLOW_PRIO, CONJ_PRIO, DROP_PRIO = 100, 100, 1
NEW = "+new+trk"
PROTO_NAMES = {None: "ip", 1: "icmp", 6: "tcp", 17: "udp", 132: "sctp"}


@dataclass(frozen=True)
class Profile:
    """The groups of some ports, as this host enforces them. `conj`: the conjunction id of
    each (rule id, ingress) whose remote is a group."""

    id: int
    groups: tuple[Group, ...]
    conj: tuple[tuple[tuple[str, bool], int], ...] = ()

    @property
    def stateful(self) -> bool:
        return all(g.stateful for g in self.groups)

    def rules(self):
        seen = set()
        for g in self.groups:
            for r in g.rules:
                if r.applied and (r.id, r.ingress) not in seen:
                    seen.add((r.id, r.ingress))
                    yield r


def allow(ingress: bool, stateful: bool) -> list:
    """What an allowed new connection does: committed in the port's zone (stateful), then
    on its way: to the VM (ingress: the port in reg11) or to routing and switching."""
    commit = [Ct(zone="reg10", commit=True)] if stateful else []
    return commit + ([OutputReg("reg11")] if ingress else [Goto(VM_ROUTE)])


def host_flows(c: int) -> list[Flow]:
    """The conntrack lookups, and what every profile shares: invalid dropped, established
    and related on their way, replies handed over the handoff VLAN (only connections the
    source host's conntrack holds come that way) committed and delivered."""
    flows = []
    for ct_table, table, ingress in ((SG_OUT_CT, SG_OUT, False), (SG_IN_CT, SG_IN, True)):
        lookup = ([CtClear()] if ingress else []) + [Ct(zone="reg10", table=table)]
        flows += [
            make_flow(c, ct_table, 100, Match.of(proto="ip"), lookup),
            make_flow(c, ct_table, 0, Match(), []),
            make_flow(c, table, 200, Match.of(ct_state="+inv+trk", proto="ip"), []),
            make_flow(c, table, 150, Match.of(ct_state="+est+trk", proto="ip"),
                      allow(ingress, False)),
            make_flow(c, table, 150, Match.of(ct_state="+rel+trk", proto="ip"),
                      allow(ingress, False)),
            make_flow(c, table, 0, Match(), []),
        ]
    flows.append(make_flow(c, SG_IN, 160, Match.of(ct_state="+new+trk", proto="ip",
                                                   reg5=flag(HANDED)), allow(True, True)))
    return flows


def profile_flows(p: Profile) -> list[Flow]:
    c = owner_cookie(COOKIE_SG_PROFILE, p.id)
    conj = dict(p.conj)
    flows = []
    for rule in p.rules():
        cid = conj.get((rule.id, rule.ingress))
        table = SG_IN if rule.ingress else SG_OUT
        actions = [Conjunction(cid, 1, 2)] if cid is not None else \
            allow(rule.ingress, p.stateful)
        for match in rule_matches(p, rule):
            flows.append(make_flow(c, table, CONJ_PRIO if cid else ALLOW_PRIO, match, actions))
        if cid is not None:
            flows.append(make_flow(c, table, CONJ_PRIO, Match.of(conj_id=cid, proto="ip"),
                                   allow(rule.ingress, p.stateful)))
    return _unique(flows)


def rule_matches(p: Profile, rule: Rule) -> list[Match]:
    """One rule of the profile as matches: its protocol, ports (a range as aligned masked
    blocks) or ICMP type and code, and remote prefixes (the remote group is the
    conjunction's other dimension)."""
    base = {"reg9": f"{p.id:#x}", **({"ct_state": NEW} if p.stateful else {})}
    proto = PROTO_NAMES.get(rule.proto)
    if proto is None:
        base.update(proto="ip", nw_proto=rule.proto)
    else:
        base["proto"] = proto
    ports: list[dict] = [{}]
    if rule.proto in (6, 17) and rule.lo is not None:
        ports = [{"tp_dst": v if m == 0xFFFF else f"{v:#x}/{m:#x}"}
                 for v, m in port_ranges(rule.lo, rule.hi)]
    elif rule.proto == 1 and rule.lo is not None:
        ports = [{"icmp_type": rule.lo, **({"icmp_code": rule.hi} if rule.hi is not None
                                             else {})}]
    side = "nw_src" if rule.ingress else "nw_dst"
    remotes = [{side: str(n)} for n in rule.prefixes if n.prefixlen] or [{}]
    return [Match.of(**base, **port, **remote) for port in ports for remote in remotes]


def member_flows(ip: str, conj_in: list[int], conj_out: list[int]) -> list[Flow]:
    """One member address's side of the conjunctions that name groups it is in."""
    c = owner_cookie(COOKIE_SG_MEMBER, int.from_bytes(bytes(int(b) for b in ip.split(".")),
                                                      "big"))
    flows = []
    for table, ids, side in ((SG_IN, conj_in, "nw_src"), (SG_OUT, conj_out, "nw_dst")):
        if ids:
            flows.append(make_flow(c, table, CONJ_PRIO, Match.of(proto="ip", **{side: ip}),
                                   [Conjunction(i, 2, 2) for i in sorted(ids)]))
    return flows


def port_drops(c: int, ofport: int) -> list[Flow]:
    """What the port's groups refused, counted per port and direction."""
    return [make_flow(c, SG_OUT, 1, Match.of(in_port=ofport), []),
            make_flow(c, SG_IN, 1, Match.of(reg11=f"{ofport:#x}"), [])]


def _unique(flows: list[Flow]) -> list[Flow]:
    seen, out = set(), []
    for f in flows:
        key = (f.table, f.priority, f.match)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out
