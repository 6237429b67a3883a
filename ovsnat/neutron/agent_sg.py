"""The agent's security groups: the groups its local ports need, on the Bridge row.

A port's own keys (`ovsnat-sg`, `ovsnat-port-security`, `ovsnat-allowed-pairs`,
`ovsnat-admin`) come with its other keys (get_ports). The groups they name are stored once
per host on the Bridge (`ovsnat-sg-<id>`: the group's rules), with the members of every
group those rules name as remote (`ovsnat-sgm-<id>`), fetched from the driver's endpoint
(ovsnat.neutron.server_sg) and re-fetched when the server casts that a group's rules or
members changed. Which groups are needed follows from the ports' keys at every pass, so a
group's keys go as soon as no local port needs them any more.

Order of writes, so the controller never sees a port name a group it has no value for: the
group keys a pass needs are written before the ports' keys; a port whose groups could not
be fetched keeps its old keys until they are (covers()); keys no longer needed are removed
after the ports' keys, and only after a pass in which Neutron answered for every local port
and every row was written (nothing is removed on silence or errors, as for the ports).

A port whose admin_state_up is False is reported DOWN, as Neutron's OVS agent does
(ovs_neutron_agent._bind_devices puts it in devices_down and treat_vif_port calls
update_device_down), and up again once it is back up and its flows are in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import oslo_messaging
from oslo_log import log

from ovsnat.neutron import secgroups as sg
from ovsnat.neutron.agent_rpc import CALL_TIMEOUT, NamespacedApi
from ovsnat.neutron.keys import KeyDiff, unwritten

LOG = log.getLogger(__name__)
GET = "get_security_groups"


def admin_down(desired: dict[str, dict | None]) -> set[str]:
    """Ports whose keys say admin_state_up False: never reported up."""
    return {pid for pid, keys in desired.items() if keys and keys.get(sg.ADMIN) == "down"}


class GroupApi(NamespacedApi):
    """Client of server_sg.SecurityGroupRpc (ovsnat's server topic, its own namespace)."""

    def __init__(self) -> None:
        super().__init__(sg.RPC_NAMESPACE, sg.RPC_VERSION)

    def get_security_groups(
        self,
        context,
        host: str,
        group_ids: list[str],
        member_ids: list[str],
        known: list[str],
        timeout: float = CALL_TIMEOUT,
    ) -> dict:
        return self._call(
            context,
            "get_security_groups",
            timeout,
            host=host,
            group_ids=group_ids,
            member_ids=member_ids,
            known=known,
        )


class GroupPushEndpoint:
    """Receives the server's casts on ovsnat's agent topic (namespace ovsnat-sg)."""

    target = oslo_messaging.Target(namespace=sg.RPC_NAMESPACE, version=sg.RPC_VERSION)

    def __init__(self, mark) -> None:
        self._mark = mark

    def security_groups_changed(self, context, rules=(), members=()) -> None:
        self._mark(list(rules), list(members))


@dataclass(frozen=True)
class Group:
    """A group as the server gave it: its Bridge value and the remote groups it names."""

    value: str
    remotes: frozenset


class GroupSync:
    """The groups part of the agent's loop (called from its loop thread only, but for
    mark(), which RPC threads call)."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self.api = GroupApi()
        self.endpoint = GroupPushEndpoint(self.mark)
        self.lock = threading.Lock()
        self.rules_dirty: set[str] = set()
        self.members_dirty: set[str] = set()
        self.groups: dict[str, Group] = {}  # the groups local ports name
        self.members: dict[str, str] = {}  # the groups their rules name as remote
        self.wanted: dict[str, str] = {}  # the Bridge keys of the last pass

    def mark(self, rules: list[str], members: list[str]) -> None:
        self._requeue(rules, members)
        self.agent.wake.set()

    def _requeue(self, rules, members) -> None:
        """Ask again on the next pass, without waking the loop (a failed call is retried
        after the agent's retry interval, not at once)."""
        with self.lock:
            self.rules_dirty.update(rules)
            self.members_dirty.update(members)

    # --- what the host needs ---------------------------------------------------------------
    def own(self, local: set[str]) -> set[str]:
        """The groups named by the keys Neutron gave for the ports on the bridge."""
        return set().union(*(sg.port_groups(self.agent.desired.get(pid)) for pid in local))

    def remotes(self, own: set[str]) -> set[str]:
        return set().union(*(self.groups[g].remotes for g in own if g in self.groups))

    def covers(self, keys: dict | None) -> bool:
        """Every group these port keys name, and every remote group of theirs, is known
        (so it is on the Bridge by the time the port's keys are written)."""
        groups = sg.port_groups(keys)
        return all(g in self.groups for g in groups) and all(
            r in self.members for r in self.remotes(groups)
        )

    def on_bridge(self, snap) -> bool:
        """Every group key known here is on the Bridge as known (covers() trusts memory,
        which before_ports writes in the same pass; a port written before that needs this).
        A port that newly names a known group is written with the group's rules as known
        before an outage until this pass's fetch brings any change: pushes are not replayed,
        and the rules' change is written right after, in the same pass."""
        return not unwritten(snap.bridge_ids, self.wanted)

    # --- a pass ----------------------------------------------------------------------------
    def before_ports(self, snap, full: bool) -> bool:
        """Fetch what changed or is missing (one call: the server adds the members of the
        remote groups of the groups asked for, unless this host holds them already), then
        write the group keys that are new or changed (removals wait for after_ports)."""
        own = self.own(set(snap.rows))
        with self.lock:
            rules_dirty, self.rules_dirty = self.rules_dirty, set()
            members_dirty, self.members_dirty = self.members_dirty, set()
        plan = sg.plan_fetch(
            own,
            {g: v.remotes for g, v in self.groups.items()},
            set(self.members),
            rules_dirty,
            members_dirty,
            full,
        )
        ok = self._fetch(plan, rules_dirty, members_dirty)
        remotes = self.remotes(own)
        self.groups = {g: v for g, v in self.groups.items() if g in own}
        self.members = {g: v for g, v in self.members.items() if g in remotes}
        self.wanted = sg.bridge_keys({g: v.value for g, v in self.groups.items()}, self.members)
        changed = unwritten(snap.bridge_ids, self.wanted)
        complete = own <= set(self.groups) and remotes <= set(self.members)
        return self._write(KeyDiff(changed, ())) and ok and complete

    def after_ports(self, snap) -> bool:
        """Remove the group keys no local port needs any more. Called only after a pass in
        which Neutron answered and every row got its keys: a row still naming a group (an
        agent started while Neutron is away knows no port's groups yet) keeps it."""
        if any(pid not in self.agent.desired for pid in snap.rows):
            return False
        gone = tuple(k for k in snap.bridge_ids if sg.is_group_key(k) and k not in self.wanted)
        return self._write(KeyDiff({}, gone))

    def _fetch(self, plan: sg.Fetch, rules_dirty: set[str], members_dirty: set[str]) -> bool:
        if not plan:
            return True
        agent = self.agent
        # cut off (the ports' sync probes, not this), or held back after a server error
        if not agent.health.neutron_ok or agent._held(GET):
            self._requeue(rules_dirty, members_dirty)
            return False
        try:
            answer = self.api.get_security_groups(
                agent.context,
                agent.host,
                list(plan.groups),
                list(plan.members),
                list(plan.known),
                agent.health.call_timeout(),
            )
        except Exception as e:
            agent._failed(GET, e)
            self._requeue(rules_dirty, members_dirty)
            return False
        agent._answered(GET)
        for gid, group in answer.get("groups", {}).items():
            self.groups[gid] = Group(group["value"], frozenset(group["remotes"]))
        self.members.update(answer.get("members", {}))
        return True

    def _write(self, diff: KeyDiff) -> bool:
        ok = self.agent.ovsdb.write_bridge(
            diff, "security group", lambda keys: {k: len(v) for k, v in keys.items()}
        )
        self.agent.fast_retry |= not ok
        return ok
