"""Which security-group owners a host has, kept one change at a time (ovsnat.compile.sg_flows
says what each owner's flows are).

A port uses the profile of its groups; a profile lives while a port uses it. A remote group
has flows while some live profile's rule names it, and so do its members' addresses. A
change of the bridge's group keys recompiles the profiles whose groups changed and the
members whose groups changed, nothing else; a port event touches only its profile's owners
when the profile appears or goes. Owners are ("sgp", profile id), ("sgg", group id) and
("sgm", address), each with a cookie of its own kind (ovsnat.compile.flows).
"""

from __future__ import annotations

from collections import Counter

from ovsnat.compile import sg_flows
from ovsnat.compile.flows import (
    COOKIE_SG_GROUP,
    COOKIE_SG_MEMBER,
    COOKIE_SG_PROFILE,
    Flow,
    owner_cookie,
)
from ovsnat.model.secgroups import NO_GROUPS, Group, HostSecurity

Owner = tuple[str, object]


class SecurityOwners:
    def __init__(self, security: HostSecurity = NO_GROUPS):
        self.security = security
        self.used: dict[str, tuple[str, ...]] = {}  # port name -> its groups (filtered ports)
        self.refs: Counter = Counter()  # groups tuple -> ports using that profile
        self.by_id: dict[int, tuple[str, ...]] = {}  # live profile id -> its groups
        # remote group some live profile's rule names -> (ingress, stateful) of those rules
        self.named: dict[str, tuple[tuple[bool, bool], ...]] = {}
        # address -> (named group it is in, ingress, stateful) of the rules naming it
        self.members: dict[str, tuple[tuple[str, bool, bool], ...]] = {}
        self.zones: dict[str, tuple[int, str]] = {}  # port name -> (its zone, fixed IP)
        # (zone, ct-tuple) to flush: a zone its port left (its ofport may come back as
        # another port's). A rule change needs none: ovsnat.compile.sg_flows.host_flows.
        self.flushes: list[tuple[int, str]] = []

    # --- changes: each returns the owners to recompile -------------------------------------
    def use(
        self, name: str, groups: tuple[str, ...] | None, zone: int = 0, ip: str = ""
    ) -> list[Owner]:
        """Port `name` now uses the profile of `groups` (None: no profile, unfiltered), in
        conntrack zone `zone` with fixed IP `ip`."""
        old, where = self.used.pop(name, None), self.zones.pop(name, None)
        if groups is not None:
            self.zones[name] = (zone, ip)
        if where is not None and (groups is None or where != (zone, ip)):
            self.flushes.append((where[0], ""))  # a zone nobody uses starts empty
        if old == groups:
            if groups is not None:
                self.used[name] = groups
            return []
        touched = []
        if old is not None:
            self.refs[old] -= 1
            if not self.refs[old]:
                del self.refs[old]
                self.by_id.pop(sg_flows.profile_id(old), None)
                touched.append(("sgp", sg_flows.profile_id(old)))
        if groups is not None:
            self.used[name] = groups
            self.refs[groups] += 1
            if self.refs[groups] == 1:
                self.by_id[sg_flows.profile_id(groups)] = groups
                touched.append(("sgp", sg_flows.profile_id(groups)))
        return touched + (self._renamed() if touched else [])

    def set_security(self, security: HostSecurity) -> list[Owner]:
        """The bridge's group keys changed."""
        old, self.security = self.security, security
        changed = {
            gid
            for gid in set(old.groups)
            | set(security.groups)
            | set(old.broken)
            | set(security.broken)
            if old.groups.get(gid) != security.groups.get(gid)
            or old.broken.get(gid) != security.broken.get(gid)
        }
        touched = [("sgp", sg_flows.profile_id(p)) for p in self.refs if changed & set(p)]
        return touched + self._renamed()

    def take_flushes(self) -> list[tuple[int, str]]:
        out, self.flushes = self.flushes, []
        return out

    def _renamed(self) -> list[Owner]:
        """Re-derive the named remote groups and their members; the owners that changed."""
        sides = {
            (r.remote_group, r.ingress, sg_flows.stateful(groups))
            for groups in map(self.groups, self.refs)
            for r in sg_flows.applied_rules(groups)
            if r.remote_group is not None
        }
        named = {g: tuple(sorted(s[1:] for s in sides if s[0] == g)) for g, _, _ in sides}
        members: dict[str, list[tuple[str, bool, bool]]] = {}
        for side in sorted(sides):
            for ip in self.security.members.get(side[0], ()):
                members.setdefault(str(ip), []).append(side)
        new = {ip: tuple(gs) for ip, gs in members.items()}
        touched: list[Owner] = [
            ("sgg", g)
            for g in sorted(set(named) | set(self.named))
            if named.get(g) != self.named.get(g)
        ]
        touched += [
            ("sgm", ip)
            for ip in sorted(set(new) | set(self.members))
            if new.get(ip) != self.members.get(ip)
        ]
        self.named, self.members = named, new
        return touched

    # --- queries -----------------------------------------------------------------------------
    def groups(self, profile: tuple[str, ...]) -> tuple[Group, ...]:
        """A profile's groups as the bridge has them. A group whose key is malformed fails the
        profile closed: no rule of any of its groups applies."""
        return _Groups(self.security).of(profile)

    def status(self) -> dict:
        """What `ovsnat status` shows: each group the host's ports use, how many ports, its
        rules applied and those not applied (and why), and the malformed groups."""
        groups: dict[str, dict] = {}
        for profile, n in self.refs.items():
            for gid in profile:
                entry = groups.setdefault(gid, {"ports": 0})
                entry["ports"] += n
        for gid, entry in groups.items():
            g = self.security.groups.get(gid)
            if gid in self.security.broken:
                entry["error"] = self.security.broken[gid]
            elif g is None:
                entry["error"] = "no ovsnat-sg-<id> key on the bridge: nothing allowed"
            else:
                entry["stateful"] = g.stateful
                entry["rules"] = sum(r.applied for r in g.rules)
                entry["not_applied"] = [
                    {"rule": r.id, "reason": r.not_applied} for r in g.rules if not r.applied
                ]
        return {
            "filtered_ports": len(self.used),
            "profiles": len(self.refs),
            "groups": dict(sorted(groups.items())),
            "remote_groups": len(self.named),
            "remote_members": len(self.members),
            "broken": dict(self.security.broken),
        }

    def explain(self, owner: Owner, table: int, cookie: int) -> str:
        """Which group and rule made a flow (for `ovsnat trace`): a profile's flow is
        recompiled rule by rule until one gives the same (table, cookie)."""
        kind, key = owner
        if kind == "sgg":
            return f"remote group {key} (a rule naming it allowed this)"
        if kind == "sgm":
            groups = sorted({side[0] for side in self.members.get(key, ())})
            return f"member {key} of remote group(s) {', '.join(groups)}"
        profile = self.by_id.get(key)
        groups = self.groups(profile) if profile is not None else ()
        c = owner_cookie(COOKIE_SG_PROFILE, key)
        for g in groups:
            for rule in g.rules:
                one = (Group(g.id, (rule,), g.stateful),)
                if any(
                    (f.table, f.cookie) == (table, cookie)
                    for f in sg_flows.profile_flows(c, key, one)
                ):
                    return f"security group {g.id} rule {rule.id}"
        return f"security profile {key:#x} ({', '.join(profile or ())})"

    def owners(self) -> list[Owner]:
        return (
            [("sgp", sg_flows.profile_id(p)) for p in sorted(self.refs)]
            + [("sgg", g) for g in sorted(self.named)]
            + [("sgm", ip) for ip in sorted(self.members)]
        )

    def flows(self, owner: Owner) -> list[Flow]:
        kind, key = owner
        if kind == "sgp":
            p = self.by_id.get(key)
            c = owner_cookie(COOKIE_SG_PROFILE, key)
            return sg_flows.profile_flows(c, key, self.groups(p)) if p is not None else []
        if kind == "sgg":
            c = owner_cookie(COOKIE_SG_GROUP, sg_flows.conj_id(key, True, True))
            return sg_flows.group_flows(c, key, self.named[key]) if key in self.named else []
        sides = self.members.get(key)
        if not sides:
            return []
        c = owner_cookie(COOKIE_SG_MEMBER, int.from_bytes(bytes(map(int, key.split("."))), "big"))
        return sg_flows.member_flows(c, key, sides)


class _Groups:
    def __init__(self, security: HostSecurity):
        self.security = security

    def of(self, profile: tuple[str, ...]) -> tuple[Group, ...]:
        sec = self.security
        if any(g in sec.broken for g in profile):
            return ()
        return tuple(sec.groups[g] for g in profile if g in sec.groups)
