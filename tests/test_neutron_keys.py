"""The contract's keys for a Neutron port (ovsnat.neutron.keys: pure, no Neutron needed)."""

from __future__ import annotations

from ovsnat.neutron.keys import (
    MANAGED_KEYS,
    KeyDiff,
    PortFacts,
    Segment,
    diff_keys,
    format_routes,
    owner,
    port_keys,
)

SUBNET = {
    "cidr": "10.1.0.0/24",
    "gateway_ip": "10.1.0.1",
    "dns_nameservers": ["198.51.100.53", "2001:db8::53"],
    "host_routes": [
        {"destination": "10.9.0.0/16", "nexthop": "10.1.0.254"},
        {"destination": "2001:db8:1::/64", "nexthop": "2001:db8::1"},
    ],
}
V6 = {"cidr": "2001:db8::/64", "gateway_ip": "2001:db8::1"}


def facts(**kw) -> PortFacts:
    base = dict(
        port_id="p1",
        network_id="n1",
        fixed_ips=(("s4", "10.1.0.5"),),
        subnets={"s4": SUBNET, "s6": V6},
        segment=Segment("vlan", "fabric", 123),
        mtu=1450,
        floating_ips=(("10.1.0.5", "203.0.113.20"),),
    )
    base.update(kw)
    return PortFacts(**base)


def test_every_key_from_neutron_facts_and_only_ipv4_values():
    assert port_keys(facts()) == {
        "ovsnat-fixed-ip": "10.1.0.5",
        "ovsnat-network": "n1",
        "ovsnat-cidr": "10.1.0.0/24",
        "ovsnat-gateway": "10.1.0.1",
        "ovsnat-fip": "203.0.113.20",
        "ovsnat-vlan": "123",
        "ovsnat-dns": "198.51.100.53",
        "ovsnat-mtu": "1450",
        "ovsnat-routes": "10.9.0.0/16>10.1.0.254",
    }


def test_flat_network_no_fip_no_gateway_leaves_those_keys_out():
    keys = port_keys(
        facts(
            segment=Segment("flat", "fabric"),
            floating_ips=(),
            subnets={
                "s4": {**SUBNET, "gateway_ip": None, "dns_nameservers": [], "host_routes": []}
            },
        )
    )
    assert set(keys) == {"ovsnat-fixed-ip", "ovsnat-network", "ovsnat-cidr", "ovsnat-mtu"}


def test_fip_of_another_fixed_ip_is_not_this_ports():
    assert "ovsnat-fip" not in port_keys(facts(floating_ips=(("10.1.0.9", "203.0.113.9"),)))


def test_a_port_ovsnat_could_only_half_serve_gets_no_keys_at_all():
    """Never NAT for part of a port: IPv6 only, dual stack, two IPv4 addresses, none (the
    driver refuses such ports at binding; this is a binding made before that rule)."""
    for fixed in (
        (("s6", "2001:db8::5"),),
        (("s6", "2001:db8::5"), ("s4", "10.1.0.5")),
        (("s4", "10.1.0.5"), ("s4", "10.1.0.6")),
        (),
    ):
        assert port_keys(facts(fixed_ips=fixed)) == {}, fixed


def test_a_subnet_without_dhcp_turns_ovsnats_off_and_routes_need_a_neighbour():
    keys = port_keys(
        facts(
            subnets={
                "s4": {
                    **SUBNET,
                    "enable_dhcp": False,
                    "host_routes": [
                        {"destination": "10.9.0.0/16", "nexthop": "10.1.0.254"},
                        {"destination": "10.8.0.0/16", "nexthop": "10.2.0.254"},
                    ],
                }
            }
        )
    )
    assert keys["ovsnat-dhcp"] == "off" and keys["ovsnat-routes"] == "10.9.0.0/16>10.1.0.254"
    assert "ovsnat-dhcp" not in port_keys(facts(subnets={"s4": {**SUBNET, "enable_dhcp": True}}))


def test_the_agent_writes_the_keys_the_controller_reads():
    """Every key the agent manages is one the controller's model reads, the security keys
    (issue 25) included, and the security prefixes of the bridge are the model's."""
    from ovsnat import model
    from ovsnat.model import dhcp_keys, networks, ports
    from ovsnat.model import secgroups as model_sg
    from ovsnat.neutron import keys, secgroups

    core = {model.KEY_FIXED_IP, model.KEY_FIP, *networks.NETWORK_KEYS, *dhcp_keys.PORT_KEYS}
    # known to the model, read by the metadata proxy alone (issue 29)
    proxy = {ports.KEY_DEVICE_ID, ports.KEY_PROJECT}
    assert set(ports.PROXY_KEYS) == proxy == {keys.DEVICE_ID, keys.PROJECT}
    security = {
        model_sg.KEY_GROUPS,
        model_sg.KEY_PORT_SECURITY,
        model_sg.KEY_PAIRS,
        model_sg.KEY_ADMIN,
        model_sg.KEY_PAIR_FIPS,
    }
    assert set(secgroups.PORT_KEYS) == security
    assert set(keys.MANAGED_KEYS) <= core | security | proxy
    assert proxy <= set(keys.MANAGED_KEYS) and not proxy & (core | security)
    assert (secgroups.GROUP_PREFIX, secgroups.MEMBERS_PREFIX) == (
        model_sg.GROUP_PREFIX,
        model_sg.MEMBERS_PREFIX,
    )


def test_a_vip_fip_goes_to_the_ports_with_that_pair():
    from ovsnat.neutron import secgroups

    port = {"allowed_address_pairs": [{"ip_address": "10.1.0.250"}, {"ip_address": "10.2.0.0/24"}]}
    assert secgroups.single_pairs(port) == {"10.1.0.250"}
    fips = [("10.1.0.250", "203.0.113.40"), ("10.1.0.9", "203.0.113.41")]
    assert secgroups.pair_fips_value({"10.1.0.250"}, fips) == "10.1.0.250=203.0.113.40"
    assert secgroups.single_pairs({**port, "port_security_enabled": False}) == set()


def test_routes_format():
    assert (
        format_routes(
            [
                {"destination": "0.0.0.0/0", "nexthop": "10.0.0.1"},
                {"destination": "10.2.0.0/16", "nexthop": "10.0.0.2"},
            ]
        )
        == "0.0.0.0/0>10.0.0.1,10.2.0.0/16>10.0.0.2"
    )


def test_diff_touches_only_managed_keys():
    current = {
        "iface-id": "p1",
        "attached-mac": "fa:16:3e:00:00:01",
        "ovsnat-installed": "true",
        "ovsnat-fip": "203.0.113.20",
        "ovsnat-fixed-ip": "10.1.0.5",
    }
    diff = diff_keys(current, {"ovsnat-fixed-ip": "10.1.0.5", "ovsnat-mtu": "1500"})
    assert diff == KeyDiff({"ovsnat-mtu": "1500"}, ("ovsnat-fip",))
    assert not diff_keys(current, {"ovsnat-fixed-ip": "10.1.0.5", "ovsnat-fip": "203.0.113.20"})
    assert "ovsnat-installed" not in MANAGED_KEYS and "iface-id" not in MANAGED_KEYS


def test_unknown_port_loses_all_managed_keys():
    current = {"iface-id": "p1", "ovsnat-fixed-ip": "10.1.0.5", "ovsnat-vlan": "123"}
    assert diff_keys(current, {}) == KeyDiff({}, ("ovsnat-fixed-ip", "ovsnat-vlan"))


# --- the instance and project, for the metadata proxy (issue 29) ------------------------------
def test_the_ports_instance_and_project_go_with_its_other_keys():
    keys = port_keys(facts(device_id="9c0d6a7e-inst", project="f00dproj"))
    assert keys["ovsnat-device-id"] == "9c0d6a7e-inst" and keys["ovsnat-project"] == "f00dproj"
    assert {k: v for k, v in keys.items() if k not in ("ovsnat-device-id", "ovsnat-project")} == (
        port_keys(facts())
    )
    assert {"ovsnat-device-id", "ovsnat-project"} <= set(MANAGED_KEYS)


def test_an_empty_instance_or_project_leaves_its_key_out():
    """An unattached port (no device_id) or one without a project: absent, never empty."""
    assert "ovsnat-device-id" not in port_keys(facts(project="f00dproj"))
    assert "ovsnat-project" not in port_keys(facts(device_id="9c0d6a7e-inst"))
    assert not {"ovsnat-device-id", "ovsnat-project"} & set(port_keys(facts()))


def test_a_port_ovsnat_does_not_serve_gets_no_instance_either():
    """No keys at all for a port ovsnat cannot serve, these two included (as its security
    keys): the proxy only answers VMs the controller routes."""
    assert port_keys(facts(device_id="i", project="p", fixed_ips=(("s6", "2001:db8::5"),))) == {}


def test_the_project_is_project_id_else_tenant_id():
    """Neutron's port dicts carry both names (same value); an older or trimmed dict may have
    only tenant_id."""
    port = {"device_id": "i1", "project_id": "p-new", "tenant_id": "p-old"}
    assert owner(port) == {"device_id": "i1", "project": "p-new"}
    assert owner({"device_id": "i1", "tenant_id": "p-old"})["project"] == "p-old"
    assert owner({"device_id": "i1", "project_id": "", "tenant_id": "p-old"})["project"] == "p-old"
    assert owner({"device_id": None}) == {"device_id": "", "project": ""}
    assert port_keys(facts(**owner(port)))["ovsnat-project"] == "p-new"


def test_a_new_instance_replaces_the_old_and_a_gone_one_is_removed():
    """The agent writes only the diff: a port moved to another instance gets the new
    device_id, a detached port (device_id cleared) loses the key, a port Neutron no longer
    knows loses both."""
    row = {
        "iface-id": "p1",
        "vm-uuid": "i1",  # os-vif's, never touched
        "ovsnat-fixed-ip": "10.1.0.5",
        "ovsnat-device-id": "i1",
        "ovsnat-project": "proj",
    }
    moved = {"ovsnat-fixed-ip": "10.1.0.5", "ovsnat-device-id": "i2", "ovsnat-project": "proj"}
    assert diff_keys(row, moved) == KeyDiff({"ovsnat-device-id": "i2"}, ())
    detached = {"ovsnat-fixed-ip": "10.1.0.5", "ovsnat-project": "proj"}
    assert diff_keys(row, detached) == KeyDiff({}, ("ovsnat-device-id",))
    assert diff_keys(row, {}) == KeyDiff(
        {}, ("ovsnat-fixed-ip", "ovsnat-device-id", "ovsnat-project")
    )
