"""The mechanism driver's refusals at binding (ovsnat.neutron.binding: pure, Neutron's dicts in,
a reason out) and the shared validation they rest on (ovsnat.model.validate): a port the controller
would refuse is refused at binding, with the controller's own reason. Through Neutron's API:
tests/refusal_cases.py."""

from __future__ import annotations

import pytest

from ovsnat.cli.golden import BASE, FABRIC
from ovsnat.model import HostConfig, VmPort
from ovsnat.model.portcheck import check_alone, keys_problem
from ovsnat.model.validate import HostLimits
from ovsnat.neutron.binding import refusal, tap_name
from ovsnat.neutron.keys import PortFacts, Segment, port_keys

NET = {"id": "net-1", "mtu": 1500}
SEG = {"id": "seg-1", "network_type": "vlan", "physical_network": "fabric", "segmentation_id": 120}
SUB = {
    "id": "sub-1",
    "ip_version": 4,
    "cidr": "10.1.0.0/24",
    "gateway_ip": "10.1.0.1",
    "segment_id": None,
    "dns_nameservers": [],
    "host_routes": [],
    "enable_dhcp": True,
}
V6 = {
    "id": "sub-6",
    "ip_version": 6,
    "cidr": "2001:db8::/64",
    "gateway_ip": "2001:db8::1",
    "segment_id": None,
}
HOST = HostConfig.parse(
    {**BASE, **FABRIC, "internal_cidr": "", "internal_gateway_ip": "", "snat_ip": ""}
)  # a Neutron-driven host: no default network


def port(*ips: tuple[str, str], pid: str = "5a1c0de0-1111-2222-3333-444455556666") -> dict:
    return {
        "id": pid,
        "network_id": "net-1",
        "mac_address": "fa:16:3e:00:00:05",
        "fixed_ips": [{"subnet_id": s, "ip_address": a} for s, a in ips],
    }


def judge(p=None, subnets=(SUB,), segment=SEG, bindable=None, network=NET, limits=HOST.limits):
    return refusal(
        p or port(("sub-1", "10.1.0.5")),
        network,
        list(subnets),
        segment,
        bindable if bindable is not None else [segment],
        limits,
    )


def test_a_port_ovsnat_can_serve_binds():
    assert judge() is None
    assert judge(segment={**SEG, "network_type": "flat", "segmentation_id": None}) is None


@pytest.mark.parametrize(
    "ips, subnets, why",
    [
        ((), (SUB,), "it has no fixed IP"),
        ((("sub-6", "2001:db8::5"),), (V6,), "fixed IP 2001:db8::5 is not IPv4"),
        (
            (("sub-1", "10.1.0.5"), ("sub-6", "2001:db8::5")),
            (SUB, V6),
            "fixed IP 2001:db8::5 is not IPv4: ovsnat serves IPv4 only",
        ),
        (
            (("sub-1", "10.1.0.5"), ("sub-1", "10.1.0.6")),
            (SUB,),
            "it has 2 fixed IPs (10.1.0.5, 10.1.0.6): ovsnat serves one IPv4 address per port",
        ),
    ],
)
def test_a_port_ovsnat_could_only_half_serve_is_refused(ips, subnets, why):
    assert why in judge(port(*ips), subnets)


def test_a_subnet_without_gateway_is_refused():
    assert "has no gateway (created with --gateway none)" in judge(
        subnets=({**SUB, "gateway_ip": None},)
    )


def test_a_port_holding_the_gateway_address_is_refused_with_the_controllers_reason():
    why = judge(port(("sub-1", "10.1.0.1")))
    assert (
        why == f"port '{tap_name(port()['id'])}' ({port()['id']}): fixed IP 10.1.0.1 is "
        "the VMs' gateway address"
    )


def test_two_ipv4_subnets_on_the_bound_segment_are_refused_but_a_routed_networks_are_not():
    second = {**SUB, "id": "sub-2", "cidr": "10.2.0.0/24", "gateway_ip": "10.2.0.1"}
    assert "has 2 IPv4 subnets (10.1.0.0/24, 10.2.0.0/24): ovsnat serves one IPv4 subnet" in judge(
        subnets=(SUB, second, V6)
    )
    routed = [{**SUB, "segment_id": "seg-1"}, {**second, "segment_id": "seg-2"}]
    assert judge(subnets=routed) is None


def test_a_network_with_two_segments_on_this_hosts_physnets_is_refused():
    other = {**SEG, "id": "seg-2", "segmentation_id": 121}
    assert "has 2 segments this host reaches (vlan:fabric:120, vlan:fabric:121)" in judge(
        bindable=[SEG, other]
    )
    assert judge(bindable=[SEG]) is None  # the other segment is on another physnet


def test_the_keys_carry_the_bound_segments_vlan():
    facts = PortFacts(
        port_id="p",
        network_id="net-1",
        fixed_ips=(("sub-1", "10.1.0.5"),),
        subnets={"sub-1": SUB},
        segment=Segment("vlan", "fabric", 121),
    )
    assert port_keys(facts)["ovsnat-vlan"] == "121"


@pytest.mark.parametrize(
    "cidr, gateway, why",
    [
        ("203.0.113.0/25", "203.0.113.1", "overlaps external_cidr 203.0.113.0/24"),
        (
            "240.0.0.0/24",
            "240.0.0.1",
            "overlaps transit_cidr 240.0.0.0/10 (addresses used inside ovsnat's datapath",
        ),
        ("10.0.0.0/8", "10.0.0.1", "is larger than a /12"),
    ],
)
def test_a_network_overlapping_what_the_host_reserves_is_refused(cidr, gateway, why):
    sub = {**SUB, "cidr": cidr, "gateway_ip": gateway}
    assert why in judge(port(("sub-1", cidr.replace(".0/", ".5/").split("/")[0])), (sub,))


def test_without_the_hosts_report_only_its_ranges_go_unchecked():
    sub = {**SUB, "cidr": "240.0.0.0/24", "gateway_ip": "240.0.0.1"}
    assert judge(port(("sub-1", "240.0.0.5")), (sub,), limits=None) is None
    assert "gateway address" in judge(port(("sub-1", "10.1.0.1")), limits=None)


@pytest.mark.parametrize(
    "change, why",
    [
        (
            {"gateway_ip": "10.9.0.1"},
            "external_ids:ovsnat-gateway 10.9.0.1 is not a host "
            "address of network net-1 10.1.0.0/24",
        ),
        ({"cidr": "10.1.0.0/31", "gateway_ip": "10.1.0.1"}, "is too small (at most /30)"),
    ],
)
def test_what_the_controllers_parser_refuses_is_refused(change, why):
    assert why in judge(subnets=({**SUB, **change},))


def test_an_mtu_the_controller_refuses_is_refused():
    assert "external_ids:ovsnat-mtu" in judge(network={**NET, "mtu": 500})


def test_host_limits_travel_through_the_agents_report():
    limits = HostConfig.parse({**BASE, **FABRIC, "handoff_vlan": 7}).limits
    back = HostLimits.from_report(limits.to_report())
    assert back == limits and back.handoff_vlan == 7
    assert str(back.default_cidr) == BASE["internal_cidr"]
    for bad in (
        "x",
        {"reserved": {"transit_cidr": "240.0.0.1/10"}},
        {"reserved": {"a": "not-a-cidr"}},
        {"handoff_vlan": 5000},
    ):
        with pytest.raises(ValueError):
            HostLimits.from_report(bad)


CASES = [
    {},
    {"ovsnat-fixed-ip": "10.1.0.1"},  # the gateway
    {"ovsnat-fixed-ip": "10.1.0.255"},  # broadcast
    {
        "ovsnat-cidr": "240.1.0.0/24",
        "ovsnat-gateway": "240.1.0.1",
        "ovsnat-fixed-ip": "240.1.0.5",
    },  # in the transit range
    {
        "ovsnat-cidr": "203.0.113.0/24",
        "ovsnat-gateway": "203.0.113.1",
        "ovsnat-fixed-ip": "203.0.113.5",
    },  # the external network
    {
        "ovsnat-cidr": "10.0.0.0/8",
        "ovsnat-gateway": "10.0.0.1",
        "ovsnat-fixed-ip": "10.0.0.5",
    },  # too large for a VLAN network
    {"ovsnat-vlan": "7"},  # the handoff VLAN
    {"ovsnat-vlan": ""},  # untagged beside a default network
    {"ovsnat-routes": "10.9.0.0/16>10.2.0.1"},  # next hop off the network
]


@pytest.mark.parametrize("change", CASES)
@pytest.mark.parametrize("options", [{}, {"internal_cidr": "", "internal_gateway_ip": ""}])
def test_the_driver_and_the_controller_reach_the_same_verdict_with_the_same_reason(change, options):
    """One shared validation: for each port, what the driver says before the row exists
    (portcheck.keys_problem with the limits the agent reports) is what the controller says
    of the row (check_alone)."""
    cfg = HostConfig.parse({**BASE, **FABRIC, "handoff_vlan": 7, **options})
    ids = {
        "iface-id": "p1",
        "attached-mac": "fa:16:3e:00:00:05",
        "ovsnat-fixed-ip": "10.1.0.5",
        "ovsnat-network": "net-1",
        "ovsnat-cidr": "10.1.0.0/24",
        "ovsnat-gateway": "10.1.0.1",
        "ovsnat-vlan": "120",
        **change,
    }
    ids = {k: v for k, v in ids.items() if v != ""}
    driver = keys_problem("tapp1", ids, HostLimits.from_report(cfg.limits.to_report()))
    controller = check_alone(cfg, VmPort.from_external_ids("tapp1", 9, ids))
    assert driver == controller
    untagged_alone = change == {"ovsnat-vlan": ""} and options  # no default network
    assert (driver is None) == (change == {} or bool(untagged_alone)), driver
