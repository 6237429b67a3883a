"""Security groups and port security: Neutron's records in, the contract's keys out
(ovsnat.neutron.secgroups: pure, no Neutron needed). The inputs are shaped as Neutron 29's
own code returns them: ports as the ML2 plugin's get_ports, rules as
get_security_group_rules (normalized_cidr included), members as _select_ips_for_remote_group."""

from __future__ import annotations

import json
import os
import subprocess

from ovsnat.neutron import keys
from ovsnat.neutron import secgroups as sg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
G = "5f0c6f3e-0000-4000-8000-00000000000a"  # the project's default group
W = "5f0c6f3e-0000-4000-8000-00000000000b"  # a "web" group
MAC = "fa:16:3e:00:00:01"


def port(**kw) -> dict:
    base = {
        "id": "p1",
        "device_owner": "compute:nova",
        "mac_address": MAC,
        "admin_state_up": True,
        "port_security_enabled": True,
        "security_groups": [W, G],
        "allowed_address_pairs": [],
    }
    base.update(kw)
    return base


def rule(rid: str, direction: str = "ingress", ethertype: str = "IPv4", **kw) -> dict:
    base = {
        "id": rid,
        "security_group_id": G,
        "direction": direction,
        "ethertype": ethertype,
        "protocol": None,
        "port_range_min": None,
        "port_range_max": None,
        "remote_ip_prefix": None,
        "normalized_cidr": None,
        "remote_group_id": None,
        "remote_address_group_id": None,
    }
    base.update(kw)
    return base


# --- ports -----------------------------------------------------------------------------------
def test_a_port_with_groups_names_them_sorted_and_nothing_else():
    assert sg.port_sg_keys(port(), True) == {"ovsnat-sg": f"{G},{W}"}


def test_no_group_means_present_and_empty_nothing_in_nothing_out():
    assert sg.port_sg_keys(port(security_groups=[]), True) == {"ovsnat-sg": ""}


def test_groups_switched_off_in_neutron_no_sg_key_but_port_security_still_holds():
    """[securitygroup] enable_security_group = False: unfiltered (no key at all); port
    security off still turns anti-spoofing off, as in Neutron's OVS agent."""
    assert sg.port_sg_keys(port(), False) == {}
    assert sg.port_sg_keys(port(port_security_enabled=False, security_groups=[]), False) == {
        "ovsnat-port-security": "off"
    }


def test_port_security_off_means_no_groups_and_no_pairs():
    p = port(
        port_security_enabled=False,
        security_groups=[],
        allowed_address_pairs=[{"ip_address": "10.1.0.100", "mac_address": MAC}],
    )
    assert sg.port_sg_keys(p, True) == {"ovsnat-port-security": "off"}


def test_allowed_pairs_address_or_network_and_only_another_mac():
    """Neutron stores the port's own MAC in a pair that gave none: not written."""
    p = port(
        allowed_address_pairs=[
            {"ip_address": "10.1.0.100", "mac_address": MAC},
            {"ip_address": "10.1.0.101/32", "mac_address": MAC.upper()},
            {"ip_address": "10.1.2.0/24", "mac_address": MAC},
            {"ip_address": "10.1.0.102", "mac_address": "FA:16:3E:00:00:99"},
            {"ip_address": "2001:db8::5", "mac_address": MAC},
            {"ip_address": "10.1.0.100/32", "mac_address": MAC},
        ]
    )
    assert (
        sg.port_sg_keys(p, True)["ovsnat-allowed-pairs"]
        == "10.1.0.100,10.1.0.101,10.1.0.102@fa:16:3e:00:00:99,10.1.2.0/24,2001:db8::5"
    )


def test_allowed_pairs_do_not_depend_on_the_order_neutron_lists_them_in():
    """MariaDB lists a port's pairs by its primary key (MAC, then address): the pairs a
    user gave as A, B come back B, A when B's MAC sorts first, which depends on the port's
    own random MAC (the OpenStack lab's test failed on it once in two runs)."""
    pairs = [
        {"ip_address": "10.1.0.250", "mac_address": MAC},
        {"ip_address": "10.1.0.64/28", "mac_address": "fa:16:3e:aa:bb:cc"},
    ]
    one = sg.port_sg_keys(port(allowed_address_pairs=pairs), True)["ovsnat-allowed-pairs"]
    other = sg.port_sg_keys(port(allowed_address_pairs=pairs[::-1]), True)
    assert one == other["ovsnat-allowed-pairs"] == "10.1.0.250,10.1.0.64/28@fa:16:3e:aa:bb:cc"


def test_admin_down_on_any_port_and_neutrons_own_ports_are_never_filtered():
    assert sg.port_sg_keys(port(admin_state_up=False), True) == {
        "ovsnat-admin": "down",
        "ovsnat-sg": f"{G},{W}",
    }
    assert sg.port_sg_keys(port(device_owner="network:router_interface"), True) == {}
    assert sg.port_sg_keys(port(device_owner="network:dhcp", admin_state_up=False), True) == {
        "ovsnat-admin": "down"
    }


def test_a_port_without_the_port_security_extension_is_secured():
    p = port()
    del p["port_security_enabled"]
    assert sg.port_sg_keys(p, True) == {"ovsnat-sg": f"{G},{W}"}


def test_the_agent_manages_the_security_keys_with_the_others():
    assert set(sg.PORT_KEYS) <= set(keys.MANAGED_KEYS)
    row = {"iface-id": "p1", "ovsnat-fixed-ip": "10.1.0.5", "ovsnat-sg": G, "ovsnat-admin": "down"}
    diff = keys.diff_keys(row, {"ovsnat-fixed-ip": "10.1.0.5", "ovsnat-sg": f"{G},{W}"})
    assert diff == keys.KeyDiff({"ovsnat-sg": f"{G},{W}"}, ("ovsnat-admin",))
    assert sg.port_groups({"ovsnat-sg": f"{G},{W}"}) == {G, W}
    assert sg.port_groups({"ovsnat-sg": ""}) == set() == sg.port_groups(None)


# --- groups ----------------------------------------------------------------------------------
def test_neutrons_default_group_as_neutron_makes_it_from_its_templates():
    """The four rules Neutron copies from the templates of migration c33da356b165 into a
    project's default group (remote_group_id PARENT -> the group itself)."""
    rules = [
        rule("r4", "ingress", "IPv6", remote_group_id=G),
        rule("r1", "egress", "IPv4"),
        rule("r2", "egress", "IPv6"),
        rule("r3", "ingress", "IPv4", remote_group_id=G),
    ]
    value = sg.group_value(True, rules)
    assert value.value == (
        f"r1,out,4,any,-,-;r2,out,6,any,-,-;r3,in,4,any,-,g:{G};r4,in,6,any,-,g:{G}"
    )
    assert value.remotes == (G,) and value.refused == ()


def test_rules_with_ports_prefixes_and_icmp():
    rules = [
        rule(
            "a",
            protocol="tcp",
            port_range_min=22,
            port_range_max=22,
            remote_ip_prefix="198.51.100.7/24",
            normalized_cidr="198.51.100.0/24",
        ),
        rule("b", protocol="udp", port_range_min=5000, port_range_max=5100),
        rule("c", protocol="icmp", port_range_min=8, port_range_max=0),
        rule("d", protocol="icmp", port_range_min=3),
        rule("e", protocol="icmp"),
        rule("f", protocol="6", port_range_min=80, port_range_max=80),
        rule("g", protocol="132", port_range_min=9, port_range_max=9),
        rule("h", protocol="vrrp", remote_ip_prefix="10.1.0.0/24"),
        rule("i", "egress", protocol="any", remote_ip_prefix="0.0.0.0/0"),
        rule("j", "ingress", "IPv6", protocol="ipv6-icmp", port_range_min=128),
        rule("k", "ingress", "IPv6", protocol="icmp"),
        rule("l", protocol="17"),
    ]
    assert sg.group_value(True, rules).value.split(";") == [
        "a,in,4,tcp,22,p:198.51.100.0/24",
        "b,in,4,udp,5000-5100,-",
        "c,in,4,icmp,8/0,-",
        "d,in,4,icmp,3,-",
        "e,in,4,icmp,-,-",
        "f,in,4,tcp,80,-",
        "g,in,4,132,9,-",
        "h,in,4,112,-,p:10.1.0.0/24",
        "i,out,4,any,-,p:0.0.0.0/0",
        "j,in,6,58,128,-",
        "k,in,6,58,-,-",
        "l,in,4,udp,-,-",
    ]


def test_stateless_groups_are_flagged_and_an_empty_group_allows_nothing():
    assert sg.group_value(False, [rule("a", protocol="tcp")]).value == "stateless;a,in,4,tcp,-,-"
    assert sg.group_value(True, []).value == "" and sg.group_value(False, []).value == "stateless"


def test_address_groups_are_expanded_per_ip_version_and_an_empty_one_is_left_out():
    ags = {"ag1": ["10.5.0.0/16", "198.51.100.9/32", "2001:db8::/64"], "ag2": ["2001:db8::1/128"]}
    rules = [
        rule("a", protocol="tcp", remote_address_group_id="ag1"),
        rule("b", "ingress", "IPv6", remote_address_group_id="ag1"),
        rule("c", remote_address_group_id="ag2"),
        rule("d", remote_address_group_id="unknown"),
    ]
    assert (
        sg.group_value(True, rules, ags).value
        == "a,in,4,tcp,-,a:10.5.0.0/16+198.51.100.9;b,in,6,any,-,a:2001:db8::/64"
    )


def test_a_rule_neutron_could_not_have_made_is_left_out_and_named():
    rules = [
        rule("a", protocol="bogus"),
        rule("b", protocol="300"),
        rule("c", direction="sideways"),
        rule("d", port_range_max=5, protocol="tcp"),
        rule("e", protocol="tcp", port_range_min=1, port_range_max=2),
    ]
    value = sg.group_value(True, rules)
    assert value.value == "e,in,4,tcp,1-2,-"
    assert [r for r, _ in value.refused] == ["a", "b", "c", "d"]
    assert "bogus" in dict(value.refused)["a"]


def test_members_ipv4_only_sorted_by_address_with_pair_networks():
    members = ["10.1.0.10", "10.1.0.9", "2001:db8::5", "10.1.0.9", "10.1.2.0/24", "10.1.0.100/32"]
    assert sg.members_value(members) == "10.1.0.9,10.1.0.10,10.1.0.100,10.1.2.0/24"
    assert sg.members_value([]) == ""


def test_a_1000_member_group_fits_in_16_kb():
    members = [f"10.{i // 250}.{i % 250}.{200 + i % 50}" for i in range(1000)]
    value = sg.members_value(members)
    assert value.count(",") == 999 and len(value) <= 16 * 1024, len(value)


def test_bridge_keys_and_which_keys_the_agent_owns():
    assert sg.bridge_keys({G: "r1,out,4,any,-,-"}, {G: "10.1.0.5"}) == {
        f"ovsnat-sg-{G}": "r1,out,4,any,-,-",
        f"ovsnat-sgm-{G}": "10.1.0.5",
    }
    assert sg.is_group_key(f"ovsnat-sg-{G}") and sg.is_group_key(f"ovsnat-sgm-{G}")
    assert not sg.is_group_key("ovsnat-snat-ip") and not sg.is_group_key("ovsnat-sg")


def test_protocol_table_is_neutrons():
    """The copy of neutron_lib's IP_PROTOCOL_MAP, compared with Neutron's own (in its
    virtualenv, which `make install` makes)."""
    python = os.path.join(
        os.environ.get("VENV_NEUTRON", os.path.join(REPO, ".venv-neutron")), "bin", "python"
    )
    out = subprocess.run(
        [
            python,
            "-c",
            "import json\nfrom neutron_lib import constants as c\n"
            "print(json.dumps([c.IP_PROTOCOL_MAP, c.IP_PROTOCOL_NAME_ALIASES]))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    table, aliases = json.loads(out)
    assert {**table, **{a: table[n] for a, n in aliases.items()}} == sg.PROTOCOL_NUMBERS


# --- what the agent fetches ------------------------------------------------------------------
def plan(own, held=None, known=(), rules=(), members=(), full=False) -> sg.Fetch:
    return sg.plan_fetch(
        set(own),
        {g: frozenset(r) for g, r in (held or {}).items()},
        set(known),
        set(rules),
        set(members),
        full,
    )


def test_a_new_group_is_fetched_with_its_remotes_members_unless_held():
    assert plan([G]) == sg.Fetch((G,), (), ())
    assert plan([G, W], held={G: [G]}, known=[G]) == sg.Fetch((W,), (), (G,))


def test_pushes_fetch_only_what_they_name_and_the_host_holds():
    held = {G: [G], W: [G]}
    assert not plan([G, W], held, known=[G])  # idle: nothing
    assert plan([G, W], held, known=[G], rules=[W]) == sg.Fetch((W,), (), (G,))
    assert plan([G, W], held, known=[G], members=[G]) == sg.Fetch((), (G,), ())
    assert not plan([G, W], held, known=[G], rules=["x"], members=["y"])  # not held here


def test_a_deleted_remote_group_refetches_the_groups_naming_it():
    """Neutron deletes the rules naming a deleted group with it (ON DELETE CASCADE)."""
    held = {W: ["gone"]}
    assert plan([W], held, known=["gone"], rules=["gone"], members=["gone"]) == sg.Fetch(
        (W,), ("gone",), ()
    )


def test_a_resync_fetches_everything_the_host_needs():
    held = {G: [G], W: [G]}
    assert plan([G, W], held, known=[G, "old"], full=True) == sg.Fetch((G, W), (G,), ("old",))
