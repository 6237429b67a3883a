"""Security groups on Neutron's side: the ports' security keys, the groups' values over RPC,
and the pushes that tell agents which groups changed.

Everything Neutron-specific is read with Neutron's own code, so its semantics are
Neutron's: the rules as its API lists them (normalized_cidr included), the members of a
remote group from the ML2 plugin's `_select_ips_for_remote_group` (the query behind
Neutron's `sg_member_ips`: every fixed IP and allowed-address-pair address of every port
in the group, whatever its host or status), an address group's addresses from
`_select_ips_for_remote_address_group`, the stateful flag from `_get_sgs_stateful_flag`,
and whether groups exist at all from `is_firewall_enabled()` (the same switch with which
ML2 drops the security-group API: `disable_security_group_extension_by_config`).
ovsnat.neutron.secgroups turns them into the contract's values.

Pushes carry ids, never values, like the driver's other casts. Which Neutron callbacks
fire (neutron/db/securitygroups_db.py, address_group_db.py, ml2/plugin.py, Neutron 29):
- SECURITY_GROUP_RULE AFTER_CREATE (states[0] the rule, also once per rule of a bulk
  create) and AFTER_DELETE (metadata security_group_id): the group's rules changed.
- SECURITY_GROUP AFTER_UPDATE: only `stateful` matters (Neutron refuses to change it
  while a port uses the group). AFTER_DELETE: the group's rules and members are gone,
  and rules of other groups naming it as remote went with it (ON DELETE CASCADE): the
  agents re-read the groups naming it.
- PORT AFTER_CREATE / AFTER_UPDATE / AFTER_DELETE: a group's members changed when a port
  joined or left it, or a member's fixed IPs or allowed address pairs changed. Neutron's
  own member notification (securitygroups_rpc_base._notify_sg_on_port_change) skips
  address-pair changes; the OVS agent learns those from its pushed port objects.
- ADDRESS_GROUP AFTER_UPDATE (addresses added or removed): the groups whose rules name it.
A port's own keys (its groups, port security, pairs, admin state) need nothing more: ML2
already casts `port_update` for each of those changes (update_port: the security groups,
address pairs, port_security_enabled and admin_state_up set need_port_update_notify), and
the agent re-reads the port's keys on it. Neutron's legacy topic
q-agent-notifier-security_group-update is not used: it misses address-pair and address
group changes and deleted groups, and ovsnat's casts cover every case.
"""

from __future__ import annotations

import oslo_messaging
from neutron.agent import securitygroups_rpc as sg_rpc
from neutron.objects import securitygroup as sg_obj
from neutron_lib import context as n_context
from neutron_lib import rpc as n_rpc
from neutron_lib.callbacks import events, registry, resources
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory
from oslo_log import log

from ovsnat.neutron import constants as c
from ovsnat.neutron import secgroups as sg

LOG = log.getLogger(__name__)

# What of a port its groups' members depend on (securitygroups_rpc_base: fixed IPs and
# allowed address pairs of the ports bound to the group).
MEMBER_FIELDS = ("fixed_ips", "allowed_address_pairs", "security_groups")


def groups_enabled() -> bool:
    """Neutron's [securitygroup] enable_security_group, read where Neutron reads it."""
    return sg_rpc.is_firewall_enabled()


def add_port_keys(result: dict, ports: list[dict]) -> None:
    """Add the security keys to get_ports' answer (port id -> {"keys": ...}) for the ports
    that get keys at all (a port ovsnat does not serve here gets none of these either)."""
    enabled = groups_enabled()
    served = [p for p in ports if (result.get(p["id"]) or {}).get("keys")]
    fips = _vip_fips(served)
    for port in served:
        keys = result[port["id"]]["keys"]
        keys.update(_port_sg_keys(port, enabled))
        value = sg.pair_fips_value(sg.single_pairs(port), fips.get(port["network_id"], ()))
        if value:
            keys[sg.PAIR_FIPS] = value


def _vip_fips(ports: list[dict]) -> dict[str, list[tuple[str, str]]]:
    """network id -> (fixed address, floating address) of the FIPs on another port of that
    network whose fixed address is one of these ports' allowed pairs (a keepalived VIP's
    port, which no VM binds: its FIP follows the VM that holds the VIP)."""
    vips = sorted({ip for p in ports for ip in sg.single_pairs(p)})
    l3 = directory.get_plugin(plugin_constants.L3)
    if not vips or l3 is None:
        return {}
    ctx = n_context.get_admin_context()
    fips = l3.get_floatingips(ctx, filters={"fixed_ip_address": vips})
    port_ids = sorted({f["port_id"] for f in fips if f.get("port_id")})
    nets = (
        {
            p["id"]: p["network_id"]
            for p in directory.get_plugin().get_ports(ctx, filters={"id": port_ids})
        }
        if port_ids
        else {}
    )
    out: dict[str, list[tuple[str, str]]] = {}
    for f in fips:
        net = nets.get(f.get("port_id"))
        if net is not None:
            out.setdefault(net, []).append((f["fixed_ip_address"], f["floating_ip_address"]))
    return out


def pair_holders(fip_states: list[dict]) -> list[str]:
    """The ports that have a changed FIP's fixed address as an allowed pair, in the FIP
    port's network: their keys carry it (ovsnat-pair-fips)."""
    wanted = {
        (s["port_id"], s["fixed_ip_address"])
        for s in fip_states
        if s.get("port_id") and s.get("fixed_ip_address")
    }
    if not wanted:
        return []
    plugin = directory.get_plugin()
    ctx = n_context.get_admin_context()
    fip_ports = {
        p["id"]: p["network_id"]
        for p in plugin.get_ports(ctx, filters={"id": sorted({w[0] for w in wanted})})
    }
    out = set()
    for net in set(fip_ports.values()):
        vips = {fixed for pid, fixed in wanted if fip_ports.get(pid) == net}
        for port in plugin.get_ports(ctx, filters={"network_id": [net]}):
            if sg.single_pairs(port) & vips:
                out.add(port["id"])
    return sorted(out)


def _port_sg_keys(port: dict, enabled: bool) -> dict[str, str]:
    """An allowed address pair Neutron validated cannot be unreadable; if one were, the
    port gets its keys without its pairs (pairs only add what the port may send from) and
    the reason is logged, rather than failing the whole batch."""
    try:
        return sg.port_sg_keys(port, enabled)
    except ValueError as e:
        LOG.error(
            "ovsnat: port %s: unreadable allowed address pairs %s (%s); written without them",
            port["id"],
            port.get("allowed_address_pairs"),
            e,
        )
        return sg.port_sg_keys({**port, "allowed_address_pairs": []}, enabled)


class SecurityGroupRpc:
    """Served by neutron-rpc-server on ovsnat's topic, in its own namespace."""

    target = oslo_messaging.Target(namespace=sg.RPC_NAMESPACE, version=sg.RPC_VERSION)

    def get_security_groups(
        self, context, host: str, group_ids=(), member_ids=(), known=()
    ) -> dict:
        """{"groups": group id -> {"value": `ovsnat-sg-<id>`, "remotes": [group ids its
        rules name]}, "members": group id -> `ovsnat-sgm-<id>`} for `group_ids`, and the
        members of `member_ids` and of every remote group of `group_ids` not in `known`
        (the agent holds those already): one round trip for a new group and its remotes,
        and a rule change does not resend a 1,000-member list. A group Neutron does not
        know (deleted meanwhile) has no rules and no members: "" for both, which allow
        nothing."""
        ctx = n_context.get_admin_context()
        plugin = directory.get_plugin()
        groups = self._groups(ctx, plugin, sorted(set(group_ids)))
        remotes = {r for g in groups.values() for r in g["remotes"]} - set(known)
        answer = {
            "groups": groups,
            "members": self._members(ctx, plugin, sorted(set(member_ids) | remotes)),
        }
        LOG.debug(
            "ovsnat: %d groups, %d member lists requested by %s",
            len(answer["groups"]),
            len(answer["members"]),
            host,
        )
        return answer

    @staticmethod
    def _groups(ctx, plugin, ids: list[str]) -> dict:
        if not ids:
            return {}
        stateful = plugin._get_sgs_stateful_flag(ctx, ids)
        rules = plugin.get_security_group_rules(ctx, filters={"security_group_id": ids})
        ag_ids = sorted(
            {r["remote_address_group_id"] for r in rules if r.get("remote_address_group_id")}
        )
        addresses = {
            ag: [ip for ip, _ in ips]
            for ag, ips in plugin._select_ips_for_remote_address_group(ctx, ag_ids).items()
        }
        by_group: dict[str, list[dict]] = {gid: [] for gid in ids}
        for rule in rules:
            by_group.setdefault(rule["security_group_id"], []).append(rule)
        out = {}
        for gid in ids:
            if gid not in stateful:
                out[gid] = {"value": "", "remotes": []}
                continue
            group = sg.group_value(bool(stateful[gid]), by_group[gid], addresses)
            for rule_id, why in group.refused:
                LOG.warning("ovsnat: security group %s rule %s left out: %s", gid, rule_id, why)
            out[gid] = {"value": group.value, "remotes": list(group.remotes)}
        return out

    @staticmethod
    def _members(ctx, plugin, ids: list[str]) -> dict:
        if not ids:
            return {}
        ips = plugin._select_ips_for_remote_group(ctx, ids)
        out = {}
        for gid in ids:
            try:
                out[gid] = sg.members_value(ip for ip, _ in ips.get(gid, ()))
            except ValueError as e:  # Neutron validated them: not expected
                LOG.error(
                    "ovsnat: security group %s: unreadable member address (%s); "
                    "its members are written as none",
                    gid,
                    e,
                )
                out[gid] = ""
        return out


class GroupNotifier:
    """Casts to every ovsnat agent (fanout, as the driver's other casts): which groups'
    rules, and which groups' members, changed."""

    def __init__(self) -> None:
        target = oslo_messaging.Target(
            topic=c.AGENT_TOPIC, namespace=sg.RPC_NAMESPACE, version=sg.RPC_VERSION
        )
        self.client = n_rpc.get_client(target)

    def changed(self, context, rules=(), members=()) -> None:
        rules, members = sorted(set(rules)), sorted(set(members))
        if not rules and not members:
            return
        LOG.debug("ovsnat: security groups changed: rules %s, members %s", rules, members)
        try:  # retry=1: as AgentNotifier._cast (a broker outage must not hold the API)
            self.client.prepare(fanout=True, retry=1).cast(
                context, "security_groups_changed", rules=rules, members=members
            )
        except Exception:  # repaired by the agents' resync when they reach Neutron again
            LOG.exception("ovsnat: could not cast security group changes %s %s", rules, members)


def _port_groups(port: dict | None) -> set[str]:
    return set((port or {}).get("security_groups") or [])


def _member_view(port: dict) -> tuple:
    return tuple(repr(port.get(f)) for f in MEMBER_FIELDS[:2]) + (
        tuple(sorted(_port_groups(port))),
    )


class GroupPushes:
    """Neutron callbacks -> GroupNotifier casts (subscribed in every Neutron process: a
    callback fires where the request is served)."""

    def __init__(self, notifier: GroupNotifier) -> None:
        self.notifier = notifier

    def subscribe(self) -> None:
        for event in (events.AFTER_CREATE, events.AFTER_DELETE):
            registry.subscribe(self.rule_changed, resources.SECURITY_GROUP_RULE, event)
        for event in (events.AFTER_UPDATE, events.AFTER_DELETE):
            registry.subscribe(self.group_changed, resources.SECURITY_GROUP, event)
        for event in (events.AFTER_CREATE, events.AFTER_UPDATE, events.AFTER_DELETE):
            registry.subscribe(self.port_changed, resources.PORT, event)
        registry.subscribe(self.address_group_changed, resources.ADDRESS_GROUP, events.AFTER_UPDATE)

    def rule_changed(self, resource, event, trigger, payload) -> None:
        if event == events.AFTER_DELETE:
            gid = (payload.metadata or {}).get("security_group_id")
        else:
            gid = (payload.latest_state or {}).get("security_group_id")
        if gid:
            self.notifier.changed(payload.context, rules=[gid])

    def group_changed(self, resource, event, trigger, payload) -> None:
        if event == events.AFTER_DELETE:
            self.notifier.changed(
                payload.context, rules=[payload.resource_id], members=[payload.resource_id]
            )
            return
        states = [s for s in payload.states if isinstance(s, dict)]
        if len(states) == 2 and states[0].get("stateful") != states[1].get("stateful"):
            self.notifier.changed(payload.context, rules=[payload.resource_id])

    def port_changed(self, resource, event, trigger, payload) -> None:
        states = [s for s in payload.states if isinstance(s, dict)]
        if not states:
            return
        if (
            event == events.AFTER_UPDATE
            and len(states) == 2
            and _member_view(states[0]) == _member_view(states[1])
        ):
            return
        groups = set().union(*(_port_groups(s) for s in states))
        if groups:
            self.notifier.changed(payload.context, members=groups)

    def address_group_changed(self, resource, event, trigger, payload) -> None:
        states = [s for s in payload.states if isinstance(s, dict)]
        if len(states) == 2 and sorted(states[0].get("addresses") or []) == sorted(
            states[1].get("addresses") or []
        ):
            return  # a new name or description
        ctx = n_context.get_admin_context()
        groups = {
            r.security_group_id
            for r in sg_obj.SecurityGroupRule.get_objects(
                ctx, remote_address_group_id=payload.resource_id
            )
        }
        if groups:
            self.notifier.changed(payload.context, rules=groups)
