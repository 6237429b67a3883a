"""Security groups and port security from Neutron's API to the OVSDB contract (issue 25):
groups, rules, ports and address groups made through the API as the tenant makes them, servers
booted by Nova with those ports, and the keys ovsnat-neutron-agent writes (a port's
`ovsnat-sg`, `ovsnat-port-security`, `ovsnat-allowed-pairs`, `ovsnat-admin` on its Interface
row; each group's `ovsnat-sg-<id>` and `ovsnat-sgm-<id>` on the Bridge row of every host that
needs them), with the time from Neutron's answer to the key on the row: within 1 s.

Keys only: what the datapath does with them is tests/test_security_groups_lab.py, which
collects these cases too, so both run on one bring-up of the lab (this module is not
collected on its own). The lab's Neutron has its real default security-group rule
templates: its databases are made by each service's own migrations (MariaDB; Neutron's
c33da356b165 inserts the templates).

`make test` runs the cases that take seconds; the two that stop and restart Neutron's
services (about 30 s each) are marked `openstack_long` (`make test-openstack-long`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ovsnat.lab.openstack import servers
from ovsnat.lab.sh import wait_for
from tests.openstack_lab import (
    boot,
    port_status,
    row_ids,
    unique,
    wait_active,
    wait_key,
)

pytestmark = [pytest.mark.lab, pytest.mark.openstack]

TIMES: dict[str, float] = {}
LIMIT = 1.0  # s: the bound, from Neutron's answer to the key on the row


def unlimited_groups(cl) -> None:
    """The tenant may make as many groups and rules as the tests need (Neutron's default
    quota is 10 groups and 100 rules), set by the admin through the API."""
    cl.admin.network.update_quota(cl.topo.project, security_groups=-1, security_group_rules=-1)


# --- helpers ---------------------------------------------------------------------------------
def bridge_ids(cl, host: str) -> dict[str, str]:
    out = cl.lab.hosts[host].vsctl(
        "--format=json", "--columns=external_ids", "list", "Bridge", "br-int"
    )
    return dict(json.loads(out)["data"][0][0][1])


def wait_bridge(cl, host: str, cond, what: str, timeout: float = 10) -> float:
    """Poll the host's Bridge keys until cond(keys); returns when it first held."""
    wait_for(lambda: cond(bridge_ids(cl, host)), timeout, interval=0.01, what=what)
    return time.time()


def took(name: str, call, wait) -> float:
    """Make an API call, then wait (`wait()` returns the time the key was seen); records
    and returns the seconds from Neutron's answer to the key."""
    call()
    answered = time.time()
    elapsed = wait() - answered
    TIMES[name] = elapsed
    return elapsed


def members(keys: dict, group: str) -> set[str]:
    value = keys.get(f"ovsnat-sgm-{group}")
    return set(value.split(",")) - {""} if value is not None else set()


def rules(keys: dict, group: str) -> list[str] | None:
    value = keys.get(f"ovsnat-sg-{group}")
    return None if value is None else [r for r in value.split(";") if r]


def new_group(cl, name: str, self_ingress: bool = False, **kw):
    """A group of the tenant's; Neutron gives it the templates' egress rules. With
    self_ingress, also ingress from its own members (as the default group has)."""
    group = cl.tenant.network.create_security_group(name=unique(name), **kw)
    if self_ingress:
        cl.tenant.network.create_security_group_rule(
            security_group_id=group.id,
            direction="ingress",
            ether_type="IPv4",
            remote_group_id=group.id,
        )
    return group


def new_port(cl, name: str, **port_kw):
    """A port of the tenant's network made by the tenant with `port_kw` (its groups,
    pairs, port security), as a user makes one to boot a server with."""
    return cl.tenant.network.create_port(
        network_id=cl.topo.tenant_net, name=unique(name), **port_kw
    )


def boot_with(cl, host: str, lease: bool = False, **port_kw) -> servers.Server:
    """A server Nova boots on `host` with a port the tenant made with `port_kw`; returns
    once Nova says ACTIVE (the port is, too: Nova waited for network-vif-plugged)."""
    port = new_port(cl, "port", **port_kw)
    return servers.boot(cl, unique("vm"), host, port=port.id, lease=lease)


def entry(rule) -> str:
    """A rule of the API as the contract writes it (for rules without ports)."""
    remote = f"g:{rule.remote_group_id}" if rule.remote_group_id else "-"
    return (
        f"{rule.id},{'in' if rule.direction == 'ingress' else 'out'},"
        f"{rule.ether_type[-1]},{rule.protocol or 'any'},-,{remote}"
    )


# --- tests -----------------------------------------------------------------------------------
def test_neutrons_default_group_reaches_the_row_and_the_bridge(cl):
    """A port of the tenant gets the project's default group; its rules are Neutron's real
    defaults (egress IPv4 and IPv6, ingress from the group itself) and reach the host's
    Bridge with the group's members; the binding says the port is filtered."""
    inst = boot(cl, "hv1", lease=False)
    port = cl.admin.network.get_port(inst.port_id)  # vif_details: the admin's
    assert port.binding_vif_details["port_filter"] is True
    (default,) = port.security_group_ids
    assert cl.tenant.network.get_security_group(default).name == "default"
    api_rules = list(cl.tenant.network.security_group_rules(security_group_id=default))
    assert sorted((r.direction, r.ether_type, r.remote_group_id or "") for r in api_rules) == [
        ("egress", "IPv4", ""),
        ("egress", "IPv6", ""),
        ("ingress", "IPv4", default),
        ("ingress", "IPv6", default),
    ]
    wait_key(cl, inst, "ovsnat-sg", default)
    keys = bridge_ids(cl, "hv1")
    assert rules(keys, default) == sorted(entry(r) for r in api_rules)
    assert inst.fixed_ip in members(keys, default)
    ids = row_ids(cl, "hv1", inst.tap)
    assert not {"ovsnat-port-security", "ovsnat-allowed-pairs", "ovsnat-admin"} & set(ids)


def test_a_new_groups_rules_and_a_rule_added_and_removed_within_1s(cl):
    """A new group has the templates' egress rules only; a rule (TCP 22 from a prefix) is on
    the Bridge within 1 s of Neutron's answer, and gone within 1 s of its removal."""
    group = new_group(cl, "web")
    inst = boot_with(cl, "hv1", security_group_ids=[group.id])
    wait_key(cl, inst, "ovsnat-sg", group.id)
    assert sorted("".join(r.split(",")[1:3]) for r in rules(bridge_ids(cl, "hv1"), group.id)) == [
        "out4",
        "out6",
    ]
    made = []
    added = took(
        "rule added: on the bridge",
        lambda: made.append(
            cl.tenant.network.create_security_group_rule(
                security_group_id=group.id,
                direction="ingress",
                ether_type="IPv4",
                protocol="tcp",
                port_range_min=22,
                port_range_max=22,
                remote_ip_prefix="198.51.100.7/24",
            )
        ),
        lambda: wait_bridge(
            cl,
            "hv1",
            lambda k: any(r.startswith(made[0].id) for r in rules(k, group.id) or []),
            "the new rule",
        ),
    )
    want = f"{made[0].id},in,4,tcp,22,p:198.51.100.0/24"
    assert want in rules(bridge_ids(cl, "hv1"), group.id)
    removed = took(
        "rule removed: off the bridge",
        lambda: cl.tenant.network.delete_security_group_rule(made[0].id),
        lambda: wait_bridge(
            cl, "hv1", lambda k: want not in (rules(k, group.id) or []), "the rule gone"
        ),
    )
    assert len(rules(bridge_ids(cl, "hv1"), group.id)) == 2
    assert added < LIMIT and removed < LIMIT, (added, removed)


def test_a_member_on_another_host_reaches_every_holder_within_1s(cl):
    """Group G lets its own members in. A on hv1 is in G: hv1 holds G's rules and members.
    A port of G the tenant makes (not bound yet) is a member on hv1 within 1 s of Neutron's
    answer (Neutron counts a port as a member from its creation, wherever it is); a server
    booted on hv2 with it makes hv2 hold G too. The server deleted (Nova unbinds the port,
    the tenant's, and keeps it), hv2 drops G's keys (no local port needs them); the port
    deleted, it leaves hv1's members within 1 s."""
    group = new_group(cl, "members", self_ingress=True)
    a = boot_with(cl, "hv1", security_group_ids=[group.id])
    wait_bridge(cl, "hv1", lambda k: members(k, group.id) == {a.fixed_ip}, "A a member")
    made = []
    joined = took(
        "member created (unbound): on hv1's bridge",
        lambda: made.append(new_port(cl, "b", security_group_ids=[group.id])),
        lambda: wait_bridge(
            cl, "hv1", lambda k: len(members(k, group.id)) == 2, "the new member on hv1"
        ),
    )
    b_ip = made[0].fixed_ips[0]["ip_address"]
    assert members(bridge_ids(cl, "hv1"), group.id) == {a.fixed_ip, b_ip}
    b = servers.boot(cl, unique("vm"), "hv2", port=made[0].id, lease=False)
    wait_key(cl, b, "ovsnat-sg", group.id)
    keys = bridge_ids(cl, "hv2")
    assert members(keys, group.id) == {a.fixed_ip, b_ip} and rules(keys, group.id)
    servers.delete(cl, b)
    wait_bridge(
        cl,
        "hv2",
        lambda k: f"ovsnat-sg-{group.id}" not in k and f"ovsnat-sgm-{group.id}" not in k,
        "G's keys gone from hv2",
    )
    assert members(bridge_ids(cl, "hv1"), group.id) == {a.fixed_ip, b_ip}  # still a port
    left = took(
        "member deleted: off hv1's bridge",
        lambda: cl.tenant.network.delete_port(made[0].id),
        lambda: wait_bridge(
            cl, "hv1", lambda k: members(k, group.id) == {a.fixed_ip}, "the member gone on hv1"
        ),
    )
    assert joined < LIMIT and left < LIMIT, (joined, left)


def test_a_ports_group_changed_within_1s_and_the_old_groups_keys_go(cl):
    old, new = new_group(cl, "old", self_ingress=True), new_group(cl, "new")
    inst = boot_with(cl, "hv1", security_group_ids=[old.id])
    wait_key(cl, inst, "ovsnat-sg", old.id)
    assert rules(bridge_ids(cl, "hv1"), old.id) and members(bridge_ids(cl, "hv1"), old.id)
    changed = took(
        "port's group changed: on its row",
        lambda: cl.tenant.network.update_port(inst.port_id, security_group_ids=[new.id]),
        lambda: wait_key(cl, inst, "ovsnat-sg", new.id),
    )
    assert rules(bridge_ids(cl, "hv1"), new.id)  # the group's keys came first
    wait_bridge(
        cl,
        "hv1",
        lambda k: rules(k, old.id) is None and f"ovsnat-sgm-{old.id}" not in k,
        "the old group's keys gone",
    )
    assert changed < LIMIT, changed


def test_port_security_off_and_on_within_1s(cl):
    """Off (Neutron wants no group and no pair on such a port): `ovsnat-port-security=off`
    and no `ovsnat-sg`; on again with a group: the group, no off."""
    group = new_group(cl, "psec")
    inst = boot_with(
        cl,
        "hv2",
        security_group_ids=[group.id],
        allowed_address_pairs=[{"ip_address": "10.1.0.240"}],
    )
    wait_key(cl, inst, "ovsnat-allowed-pairs", "10.1.0.240")
    off = took(
        "port security off: on its row",
        lambda: cl.tenant.network.update_port(
            inst.port_id,
            security_group_ids=[],
            allowed_address_pairs=[],
            is_port_security_enabled=False,
        ),
        lambda: wait_key(cl, inst, "ovsnat-port-security", "off"),
    )
    ids = row_ids(cl, "hv2", inst.tap)
    assert "ovsnat-sg" not in ids and "ovsnat-allowed-pairs" not in ids
    on = took(
        "port security on: on its row",
        lambda: cl.tenant.network.update_port(
            inst.port_id, is_port_security_enabled=True, security_group_ids=[group.id]
        ),
        lambda: wait_key(cl, inst, "ovsnat-sg", group.id),
    )
    assert "ovsnat-port-security" not in row_ids(cl, "hv2", inst.tap)
    assert off < LIMIT and on < LIMIT, (off, on)


def test_allowed_pairs_on_the_row_and_in_the_groups_members_elsewhere_within_1s(cl):
    """A pair (an address, a network with another MAC) is on the port's row, and its
    addresses are members of the port's group on another host holding it: Neutron counts
    pair addresses as members (its own member notification does not, for a pair change:
    ovsnat's driver casts it)."""
    group = new_group(cl, "pairs", self_ingress=True)
    a = boot_with(cl, "hv1", security_group_ids=[group.id])
    watcher = boot_with(cl, "hv2", security_group_ids=[group.id])
    wait_bridge(
        cl,
        "hv2",
        lambda k: members(k, group.id) == {a.fixed_ip, watcher.fixed_ip},
        "both members on hv2",
    )
    pairs = [
        {"ip_address": "10.1.0.250"},
        {"ip_address": "10.1.0.64/28", "mac_address": "fa:16:3e:aa:bb:cc"},
    ]
    cl.tenant.network.update_port(a.port_id, allowed_address_pairs=pairs)
    answered = time.time()
    row = (
        wait_key(cl, a, "ovsnat-allowed-pairs", "10.1.0.250,10.1.0.64/28@fa:16:3e:aa:bb:cc")
        - answered
    )
    elsewhere = wait_bridge(
        cl,
        "hv2",
        lambda k: {"10.1.0.250", "10.1.0.64/28"} <= members(k, group.id),
        "the pair addresses as members on hv2",
    )
    elsewhere -= answered
    cl.tenant.network.update_port(a.port_id, allowed_address_pairs=[])
    answered = time.time()
    gone = wait_bridge(
        cl,
        "hv2",
        lambda k: members(k, group.id) == {a.fixed_ip, watcher.fixed_ip},
        "the pair addresses gone on hv2",
    )
    gone -= answered
    TIMES.update(
        {
            "allowed pairs: on the row": row,
            "allowed pairs: in another host's members": elsewhere,
            "allowed pairs removed: off another host's members": gone,
        }
    )
    assert max(row, elsewhere, gone) < LIMIT, (row, elsewhere, gone)


def test_admin_down_drops_the_port_to_down_and_back_up_within_1s(cl):
    """admin_state_up False: `ovsnat-admin=down` within 1 s and the agent reports the port
    DOWN, as Neutron's OVS agent does; True: the key goes and the port is ACTIVE again."""
    inst = boot(cl, "hv2", lease=False)
    wait_active(cl, inst.port_id)
    down = took(
        "admin down: on the row",
        lambda: cl.tenant.network.update_port(inst.port_id, is_admin_state_up=False),
        lambda: wait_key(cl, inst, "ovsnat-admin", "down"),
    )
    t = time.time()
    wait_for(
        lambda: port_status(cl, inst.port_id) == "DOWN", 10, interval=0.05, what="the port DOWN"
    )
    TIMES["admin down: port DOWN (polled)"] = time.time() - t + down
    up = took(
        "admin up: off the row",
        lambda: cl.tenant.network.update_port(inst.port_id, is_admin_state_up=True),
        lambda: wait_key(cl, inst, "ovsnat-admin", None),
    )
    wait_active(cl, inst.port_id, timeout=10)
    assert down < LIMIT and up < LIMIT, (down, up)


def test_address_groups_are_expanded_and_follow_their_addresses_within_1s(cl):
    ag = cl.tenant.network.create_address_group(
        name=unique("ag"), addresses=["198.51.100.0/28", "2001:db8::/64"]
    )
    group = new_group(cl, "ag")
    rule = cl.tenant.network.create_security_group_rule(
        security_group_id=group.id,
        direction="ingress",
        ether_type="IPv4",
        protocol="tcp",
        remote_address_group_id=ag.id,
    )
    inst = boot_with(cl, "hv1", security_group_ids=[group.id])
    wait_key(cl, inst, "ovsnat-sg", group.id)
    assert f"{rule.id},in,4,tcp,-,a:198.51.100.0/28" in rules(bridge_ids(cl, "hv1"), group.id)
    want = f"{rule.id},in,4,tcp,-,a:198.51.100.0/28+198.51.100.77"
    grown = took(
        "address group grown: on the bridge",
        lambda: cl.tenant.network.add_addresses_to_address_group(ag, ["198.51.100.77/32"]),
        lambda: wait_bridge(
            cl, "hv1", lambda k: want in (rules(k, group.id) or []), "the new address"
        ),
    )
    assert grown < LIMIT, grown


def test_a_deleted_remote_group_leaves_the_bridge_as_neutron_has_it_within_1s(cl):
    """X lets in its members and Y's; Y (no port in it) is deleted. Neutron's database
    deletes the rules naming Y with it (ON DELETE CASCADE): within 1 s of Neutron's answer
    hv1's value for X is what Neutron's API then lists, without that rule, and Y's members
    key is gone (no local rule names Y any more)."""
    x, y = new_group(cl, "x", self_ingress=True), new_group(cl, "y")
    named = cl.tenant.network.create_security_group_rule(
        security_group_id=x.id, direction="ingress", ether_type="IPv4", remote_group_id=y.id
    )
    inst = boot_with(cl, "hv1", security_group_ids=[x.id])
    wait_key(cl, inst, "ovsnat-sg", x.id)
    keys = bridge_ids(cl, "hv1")
    assert f"{named.id},in,4,any,-,g:{y.id}" in rules(keys, x.id)
    assert keys[f"ovsnat-sgm-{y.id}"] == ""  # no member: written, and empty
    cl.tenant.network.delete_security_group(y.id)
    answered = time.time()
    listed = sorted(
        entry(r) for r in cl.tenant.network.security_group_rules(security_group_id=x.id)
    )
    assert not any(r.startswith(named.id) for r in listed), listed  # the cascade
    seen = wait_bridge(
        cl,
        "hv1",
        lambda k: rules(k, x.id) == listed and f"ovsnat-sgm-{y.id}" not in k,
        "X as Neutron lists it, Y's members gone",
    )
    TIMES["remote group deleted: the bridge as Neutron has it"] = seen - answered
    assert seen - answered < LIMIT, seen - answered


def test_a_stateless_group_is_flagged(cl):
    group = new_group(cl, "stateless", stateful=False)
    inst = boot_with(cl, "hv2", security_group_ids=[group.id])
    wait_key(cl, inst, "ovsnat-sg", group.id)
    value = bridge_ids(cl, "hv2")[f"ovsnat-sg-{group.id}"]
    assert value.split(";")[0] == "stateless" and len(value.split(";")) == 3, value


@pytest.mark.openstack_long  # stops and restarts Neutron's services: about 30 s
def test_an_agent_started_while_neutron_is_away_removes_no_group_key(cl):
    """hv1's agent restarts while neutron-rpc-server is down: it knows no port's groups, so
    it must remove none of the group keys its ports' rows name (the controller would drop
    their traffic). A rule deleted meanwhile (the API still answers) stays on the bridge
    until Neutron answers again, then goes."""
    group = new_group(cl, "outage", self_ingress=True)
    inst = boot_with(cl, "hv1", security_group_ids=[group.id])
    wait_key(cl, inst, "ovsnat-sg", group.id)

    def group_keys() -> dict:
        return {k: v for k, v in bridge_ids(cl, "hv1").items() if k.startswith("ovsnat-sg")}

    before = group_keys()
    rule = next(
        r
        for r in cl.tenant.network.security_group_rules(security_group_id=group.id)
        if r.remote_group_id == group.id
    )
    assert any(r.startswith(rule.id) for r in rules(before, group.id))
    cl.stack.stop_agent("hv1")
    cl.stack.stop("neutron-rpc")
    try:
        cl.stack.start_agent("hv1")
        cl.tenant.network.delete_security_group_rule(rule.id)
        # The restarted agent's first call waits out its 10 s timeout (the server's queue
        # outlives the server, so the call is not refused), a whole pass follows, then a
        # probe every 0.25 s: 16 s covers its start, that pass and a few probes.
        deadline = time.monotonic() + 16
        while time.monotonic() < deadline:
            assert group_keys() == before
            assert row_ids(cl, "hv1", inst.tap).get("ovsnat-sg") == group.id
            time.sleep(0.2)
    finally:
        t, restarted = time.monotonic(), time.time()
        cl.stack.start_rpc()
    wait_bridge(
        cl,
        "hv1",
        lambda k: (
            rules(k, group.id) is not None
            and not any(r.startswith(rule.id) for r in rules(k, group.id))
        ),
        "the rule deleted meanwhile gone",
        timeout=60,
    )
    TIMES["rpc-server back: group keys converged"] = time.monotonic() - t
    assert rules(bridge_ids(cl, "hv1"), group.id)
    cl.agents_alive(since=restarted)  # the next test binds ports on them


@pytest.mark.openstack_long  # stops and restarts Neutron's services: about 30 s
def test_groups_switched_off_in_neutron_no_group_keys_and_port_filter_false(cl):
    """[securitygroup] enable_security_group = False (Neutron's API then has no groups):
    a port bound then says port_filter false and gets no `ovsnat-sg`. Neutron's API and RPC
    server restart with the option, and again without it."""
    conf = os.path.join(cl.stack.paths.etc, "ml2_conf.ini")
    original = Path(conf).read_text()
    try:
        Path(conf).write_text(original + "\n[securitygroup]\nenable_security_group = false\n")
        restart_neutron(cl)
        inst = boot(cl, "hv1", lease=False)
        port = cl.admin.network.get_port(inst.port_id)  # vif_details: the admin's
        assert port.binding_vif_details["port_filter"] is False
        wait_key(cl, inst, "ovsnat-fixed-ip", inst.fixed_ip)
        assert "ovsnat-sg" not in row_ids(cl, "hv1", inst.tap)
    finally:
        Path(conf).write_text(original)
        restart_neutron(cl)
    control = boot(cl, "hv1", lease=False)  # on again: the same steps give the key
    wait_key(
        cl,
        control,
        "ovsnat-sg",
        ",".join(cl.tenant.network.get_port(control.port_id).security_group_ids),
    )


def restart_neutron(cl) -> None:
    t, restarted = time.monotonic(), time.time()
    cl.stack.stop_api()
    cl.stack.stop("neutron-rpc")
    cl.stack.start_api()
    cl.stack.start_rpc()
    cl.stack.wait_api()
    cl.agents_alive(since=restarted)  # Nova binds the next port only to an alive agent
    TIMES["Neutron restarted"] = time.monotonic() - t
