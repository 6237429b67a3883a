"""Tenant networks in the host state (pure): who belongs where, what is rejected and why, and
that a rejected port never harms another. The clash rule is the one for addresses: the port
with the smaller iface-id wins, whatever order the rows arrive in."""

from __future__ import annotations

import itertools

import pytest

from ovsnat.cli.golden import BASE, FABRIC, NET_A, NET_B
from ovsnat.core.state import HostState, build_state
from ovsnat.model import HostConfig, PortError, VmPort

CFG = HostConfig.parse({**BASE, **FABRIC, "fip_activation": "immediate"})
NO_DEFAULT = HostConfig.parse({**BASE, **FABRIC, "internal_cidr": "", "internal_gateway_ip": ""})


def with_ids(n: int, ofport: int, name: str = "", **ids) -> VmPort:
    base = {
        "iface-id": f"vm{n}",
        "attached-mac": f"02:00:0a:00:01:{n:02x}",
        "ovsnat-fixed-ip": f"10.1.0.{n}",
        **NET_A,
    }
    return VmPort.from_external_ids(name or f"p{n}", ofport, {**base, **ids})


def reasons(cfg, ports) -> dict[str, str]:
    return {r.name: r.reason for r in build_state(cfg, ports).rejected}


def test_equal_fixed_ips_and_macs_in_two_networks_are_both_accepted():
    a = with_ids(11, 21)
    b = with_ids(11, 31, name="b11", **NET_B)  # same IP and MAC, VLAN 102
    d = VmPort.from_external_ids(
        "d",
        41,
        {"iface-id": "d", "attached-mac": "02:00:0a:00:01:0b", "ovsnat-fixed-ip": "10.0.0.11"},
    )
    state = build_state(CFG, [a, b, d])
    assert not state.rejected and len(state.vms) == 3


def test_the_same_fixed_ip_twice_in_one_network_keeps_the_smaller_iface_id():
    first = with_ids(11, 21)
    second = with_ids(
        11, 22, name="late", **{"iface-id": "zz", "attached-mac": "02:00:0a:00:01:99"}
    )
    got = reasons(CFG, [second, first])
    assert list(got) == ["late"]
    assert "fixed IP 10.1.0.11 is already used by port 'p11' (vm11)" in got["late"]


@pytest.mark.parametrize(
    "key,value,why",
    [
        ("ovsnat-cidr", "10.9.0.0/24", "network tenant-a is defined as 10.1.0.0/24"),
        (
            "ovsnat-gateway",
            "10.1.0.254",
            "network tenant-a is defined as 10.1.0.0/24 gateway 10.1.0.1",
        ),
        ("ovsnat-vlan", "105", "VLAN 101"),
    ],
)
def test_a_port_that_defines_its_network_differently_loses_to_the_smaller_iface_id(key, value, why):
    good = with_ids(11, 21)
    moved = (
        {"ovsnat-fixed-ip": "10.9.0.12", "ovsnat-gateway": "10.9.0.1"}
        if key == "ovsnat-cidr"
        else {}
    )
    odd = with_ids(12, 22, **{key: value, "iface-id": "zz-late", **moved})
    for order in itertools.permutations([good, odd]):
        got = reasons(CFG, order)
        assert list(got) == ["p12"], got
        assert why in got["p12"] and "port 'p11' (vm11), which wins the tie" in got["p12"]


def test_two_networks_on_one_vlan_the_later_iface_id_loses():
    a = with_ids(11, 21)
    other = with_ids(12, 22, **{"ovsnat-network": "tenant-x", "iface-id": "zz"})
    got = reasons(CFG, [other, a])
    assert list(got) == ["p12"] and "VLAN 101 is network tenant-a's" in got["p12"]


def test_a_second_untagged_network_beside_the_default_one_is_rejected():
    flat = with_ids(11, 21, **{"ovsnat-vlan": ""})
    got = reasons(CFG, [flat])
    assert (
        "network tenant-a is untagged, but the fabric's untagged segment is this host's "
        "default network" in got["p11"]
    )


def test_without_a_default_network_one_untagged_network_is_fine_and_a_bare_port_is_not():
    flat = with_ids(11, 21, **{"ovsnat-vlan": ""})
    bare = VmPort.from_external_ids(
        "bare",
        9,
        {"iface-id": "bare", "attached-mac": "02:00:0a:00:00:09", "ovsnat-fixed-ip": "10.0.0.9"},
    )
    got = reasons(NO_DEFAULT, [flat, bare])
    assert list(got) == ["bare"]
    assert (
        "external_ids:ovsnat-network is missing and this host has no default network" in got["bare"]
    )


@pytest.mark.parametrize(
    "ids,why",
    [
        (
            {"ovsnat-fixed-ip": "10.2.0.5"},
            "fixed IP 10.2.0.5 is not a host address of network tenant-a 10.1.0.0/24",
        ),
        ({"ovsnat-fixed-ip": "10.1.0.1"}, "is the VMs' gateway address"),
        (
            {"ovsnat-cidr": "10.1.0.0/33"},
            "external_ids:ovsnat-cidr: '10.1.0.0/33' is not an IPv4 CIDR",
        ),
        (
            {"ovsnat-gateway": "10.2.0.1"},
            "external_ids:ovsnat-gateway 10.2.0.1 is not a host address of network tenant-a",
        ),
        ({"ovsnat-vlan": "4095"}, "external_ids:ovsnat-vlan '4095' is not a VLAN (1-4094)"),
        ({"ovsnat-vlan": "ten"}, "external_ids:ovsnat-vlan 'ten' is not a VLAN"),
        ({"ovsnat-network": "two words"}, "is not a network name"),
        ({"ovsnat-cidr": ""}, "external_ids:ovsnat-cidr is missing (network tenant-a)"),
        (
            {
                "ovsnat-cidr": "203.0.113.0/24",
                "ovsnat-gateway": "203.0.113.1",
                "ovsnat-fixed-ip": "203.0.113.5",
            },
            "overlaps external_cidr",
        ),
        (
            {
                "ovsnat-cidr": "10.0.0.0/11",
                "ovsnat-gateway": "10.0.0.1",
                "ovsnat-fixed-ip": "10.0.0.5",
            },
            "is larger than a /12",
        ),
    ],
)
def test_a_bad_network_value_rejects_the_port_with_one_precise_line(ids, why):
    try:
        bad = with_ids(13, 23, **ids)
    except PortError as e:
        assert why in str(e) and str(e).startswith("port 'p13'")
        return
    got = reasons(CFG, [bad, with_ids(11, 21)])
    assert list(got) == ["p13"] and why in got["p13"], got


def test_network_keys_without_a_network_name_are_an_error():
    with pytest.raises(
        PortError, match="external_ids:ovsnat-vlan is set but external_ids:ovsnat-network is not"
    ):
        VmPort.from_external_ids(
            "p",
            3,
            {
                "iface-id": "x",
                "attached-mac": "02:00:00:00:00:03",
                "ovsnat-fixed-ip": "10.0.0.3",
                "ovsnat-vlan": "7",
            },
        )


def test_a_networks_flows_come_with_its_first_port_and_go_with_its_last():
    host = HostState(CFG)
    a1, a2 = with_ids(11, 21), with_ids(12, 22)
    host.update(a1.name, a1)
    assert ("net", "tenant-a") in host.wire
    delta = host.update(a2.name, a2)
    assert not [k for k in delta.add if (k.cookie >> 56) == 0xA3]  # already there
    host.update(a1.name, None)
    assert ("net", "tenant-a") in host.wire
    delta = host.update(a2.name, None)
    assert ("net", "tenant-a") not in host.wire
    assert {c >> 56 for _, c in delta.delete} == {0xA3, 0xA4}
    assert ("net", "") in host.wire  # the default network stays


def test_the_loser_of_a_network_clash_wins_once_the_winner_leaves():
    good, odd = with_ids(11, 21), with_ids(12, 22, **{"ovsnat-vlan": "105", "iface-id": "zz"})
    host = HostState(CFG)
    host.update(odd.name, odd)
    host.update(good.name, good)
    assert "p12" in host.lost
    host.update(good.name, None)
    assert "p12" not in host.lost and host.nets["tenant-a"].vlan == 105


def test_pat_blocks_of_equal_offsets_in_two_networks_do_not_collide():
    """Blocks follow the offset in the network (RFC 7422 style); two networks' VMs at one
    offset would share a block, so the later iface-id is rejected rather than mixed."""
    cfg = HostConfig.parse({**BASE, **FABRIC, "pat_ports_per_vm": 64})
    a = with_ids(11, 21)
    b = with_ids(11, 31, name="b11", **{**NET_B, "iface-id": "zz"})
    c = with_ids(12, 32, name="b12", **{**NET_B, "iface-id": "zy"})
    got = reasons(cfg, [b, a, c])
    assert list(got) == ["b11"]
    assert "PAT block 20704 is already used by port 'p11' (vm11)" in got["b11"]


def test_golden_network_ports_are_all_accepted():
    from ovsnat.cli.golden import SCENARIOS

    for name in ("networks", "flat"):
        _, overrides, ports = SCENARIOS[name]
        assert not build_state(HostConfig.parse({**BASE, **overrides}), ports).rejected
