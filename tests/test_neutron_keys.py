"""The contract's keys for a Neutron port (ovsnat.neutron.keys: pure, no Neutron needed)."""

from __future__ import annotations

from ovsnat.neutron.keys import (
    MANAGED_KEYS,
    KeyDiff,
    PortFacts,
    Segment,
    diff_keys,
    format_routes,
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
    from ovsnat.model import dhcp_keys, networks
    from ovsnat.model import secgroups as model_sg
    from ovsnat.neutron import keys, secgroups

    core = {model.KEY_FIXED_IP, model.KEY_FIP, *networks.NETWORK_KEYS, *dhcp_keys.PORT_KEYS}
    security = {
        model_sg.KEY_GROUPS,
        model_sg.KEY_PORT_SECURITY,
        model_sg.KEY_PAIRS,
        model_sg.KEY_ADMIN,
        model_sg.KEY_PAIR_FIPS,
    }
    assert set(secgroups.PORT_KEYS) == security
    assert set(keys.MANAGED_KEYS) <= core | security
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
