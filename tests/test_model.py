"""Validation scenarios for ovsnat.model: host options, VM ports and the desired state.

Every invalid input must raise exactly one error of the right type (ConfigError for a host
option, PortError for a VM port) whose message names the offending option or external_ids key
and shows the bad value or the reason, so an operator can fix it from the log line alone.
Pure unit tests: no root, no Open vSwitch.
"""

from __future__ import annotations

import math

import netaddr
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovsnat.cli.golden import BASE
from ovsnat.compile.host import host_flows
from ovsnat.core.state import build_state
from ovsnat.model import (
    ConfigError,
    DesiredState,
    HostConfig,
    PortError,
    Rejection,
    VmPort,
    mac_str,
)

MISSING = object()  # an override that removes the option / key

OPTIONS = BASE  # the valid host options of the golden scenarios


def options(**overrides) -> dict:
    raw = {**OPTIONS, **overrides}
    return {k: v for k, v in raw.items() if v is not MISSING}


def config(**overrides) -> HostConfig:
    return HostConfig.parse(options(**overrides))


def ids(n: int = 11, fip: str | None = None, **overrides) -> dict:
    raw = {
        "iface-id": f"vm{n}",
        "attached-mac": f"02:00:0a:00:00:{n:02x}",
        "ovsnat-fixed-ip": f"10.0.0.{n}",
        "ovsnat-fip": fip,
        **overrides,
    }
    return {k: v for k, v in raw.items() if v is not MISSING and v is not None}


def vm(
    n: int = 11,
    fip: str | None = None,
    name: str | None = None,
    ofport: int | None = None,
    **overrides,
) -> VmPort:
    return VmPort.from_external_ids(name or f"tapvm{n}", ofport or n, ids(n, fip, **overrides))


LONG = "x" * 10_000

# --- host config: the valid baseline ----------------------------------------------------------


def test_valid_options_parse_into_typed_values():
    cfg = config()
    assert cfg.bridge == "br-int" and cfg.uplink_ofport == 1
    assert cfg.internal_cidr == netaddr.IPNetwork("10.0.0.0/24")
    assert cfg.snat_ip == netaddr.IPAddress("203.0.113.11")
    assert mac_str(cfg.external_gateway_mac) == "02:00:00:00:00:fe"
    assert (cfg.snat_port_min, cfg.snat_port_max, cfg.pat_port_count) == (20000, 29999, 10000)
    assert (cfg.ct_zone, cfg.fip_frag_ct_zone, cfg.pat_ports_per_vm) == (65000, 65001, 0)
    assert cfg.mac_prefix == "02:5a"


def test_numbers_given_as_strings_with_spaces_are_accepted():
    cfg = config(snat_port_min=" 20000 ", ct_zone="65000", uplink_ofport="1")
    assert (cfg.snat_port_min, cfg.ct_zone, cfg.uplink_ofport) == (20000, 65000, 1)


@pytest.mark.parametrize("empty", ["", None, MISSING])
def test_empty_external_gateway_mac_means_resolve_by_arp(empty):
    assert config(external_gateway_mac=empty).external_gateway_mac is None


def test_fip_mac_is_prefix_plus_the_address_bytes():
    cfg = config()
    assert mac_str(cfg.ip_mac(netaddr.IPAddress("203.0.113.10"))) == "02:5a:cb:00:71:0a"
    assert mac_str(cfg.snat_mac) == "02:5a:cb:00:71:0b"
    assert (
        mac_str(config(mac_prefix="0A:BC").ip_mac(netaddr.IPAddress("203.0.113.10")))
        == "0a:bc:cb:00:71:0a"
    )


def test_dashed_mac_is_accepted_and_normalised_to_colons():
    # Current behaviour (checked, not assumed): netaddr's dashed form has the same length as
    # the colon form, so parse_mac accepts it; mac_str renders it the OVS way.
    assert mac_str(config(router_mac="02-00-00-00-00-01").router_mac) == "02:00:00:00:00:01"


def test_pat_block_without_per_vm_ports_is_the_whole_range():
    assert vm(12).pat_block(config()) == (20000, 29999)


@pytest.mark.parametrize(
    "n, block",
    [(0, (20000, 20063)), (2, (20128, 20191)), (12, (20768, 20831)), (155, (29920, 29983))],
)
def test_pat_block_is_offset_times_ports_per_vm(n, block):
    cfg = config(pat_ports_per_vm=64)
    port = VmPort.from_external_ids("tap", 5, ids(12, **{"ovsnat-fixed-ip": f"10.0.0.{n}"}))
    assert port.pat_block(cfg) == block


# --- host config: every bad option names itself -----------------------------------------------

BAD_OPTIONS = [
    # malformed or non-IPv4 addresses
    ("internal_gateway_ip", "::1", "'::1' is not an IPv4 address"),
    ("internal_gateway_ip", "10.0.0", "'10.0.0' is not an IPv4 address"),
    ("internal_gateway_ip", "10.0.0.256", "'10.0.0.256' is not an IPv4 address"),
    ("internal_gateway_ip", " ", "internal_cidr and internal_gateway_ip go together"),
    ("internal_gateway_ip", "010.0.0.1", "'010.0.0.1' is not an IPv4 address"),  # no octal
    ("external_gateway_ip", "2001:db8::1", "'2001:db8::1' is not an IPv4 address"),
    ("snat_ip", "203.0.113.300", "'203.0.113.300' is not an IPv4 address"),
    ("snat_ip", "3405803787", "'3405803787' is not an IPv4 address"),  # integer form
    # CIDRs
    ("internal_cidr", "10.0.0.1/24", "10.0.0.1/24 has host bits set (did you mean 10.0.0.0/24?)"),
    ("internal_cidr", "10.0.0.0", "'10.0.0.0' needs a prefix length"),
    ("internal_cidr", "10.0.0.0/31", "10.0.0.0/31 is too small"),
    ("internal_cidr", "10.0.0.0/32", "10.0.0.0/32 is too small"),
    ("internal_cidr", "10.0.0.0/-1", "'10.0.0.0/-1' is not an IPv4 CIDR"),
    ("external_cidr", "203.0.113.0/33", "'203.0.113.0/33' is not an IPv4 CIDR"),
    ("external_cidr", "203.0.113.0/abc", "'203.0.113.0/abc' is not an IPv4 CIDR"),
    ("external_cidr", "2001:db8::/64", "'2001:db8::' is not an IPv4 address"),
    ("external_cidr", "10.0.0.0/16", "10.0.0.0/16 overlaps internal_cidr 10.0.0.0/24"),
    # MACs
    ("router_mac", "02:00:00:00:01", "'02:00:00:00:01' is not a MAC address"),
    ("router_mac", "02:00:00:00:00:01:02", "'02:00:00:00:00:01:02' is not a MAC address"),
    ("router_mac", "02:00:00:00:00:0g", "'02:00:00:00:00:0g' is not a MAC address"),
    ("router_mac", "0200.0000.0001", "'0200.0000.0001' is not a MAC address"),
    ("router_mac", "01:00:5e:00:00:01", "01:00:5e:00:00:01 is a multicast MAC"),
    ("router_mac", "ff:ff:ff:ff:ff:ff", "ff:ff:ff:ff:ff:ff is a multicast MAC"),
    ("router_mac", "00:00:00:00:00:00", "00:00:00:00:00:00 is the zero MAC"),
    ("external_gateway_mac", "02-00-00:00:00:fe", "'02-00-00:00:00:fe' is not a MAC address"),
    ("external_gateway_mac", "01:00:00:00:00:fe", "01:00:00:00:00:fe is a multicast MAC"),
    # ports and ranges
    ("snat_port_min", "abc", "'abc' is not an integer"),
    ("snat_port_min", 0, "0 is outside 1-65535"),
    ("snat_port_max", 65536, "65536 is outside 1-65535"),
    ("snat_port_max", "", "required option is empty"),
    ("snat_port_min", 30000, "30000 is above snat_port_max 29999 (range reversed)"),
    ("snat_port_min", "20000.5", "'20000.5' is not an integer"),
    ("pat_ports_per_vm", 10001, "10001 is larger than the whole range 20000-29999"),
    ("pat_ports_per_vm", -1, "-1 is outside 0-65535"),
    # conntrack zones
    ("ct_zone", 65001, "65001 equals ct_zone"),
    ("ct_zone", 65536, "65536 is outside 0-65535"),
    # addresses against their networks
    ("snat_ip", "198.51.100.5", "198.51.100.5 is not a host address of external_cidr"),
    ("snat_ip", "203.0.113.1", "203.0.113.1 is the external gateway's address"),
    ("snat_ip", "203.0.113.0", "203.0.113.0 is not a host address of external_cidr"),
    ("snat_ip", "203.0.113.255", "203.0.113.255 is not a host address of external_cidr"),
    ("internal_gateway_ip", "10.0.1.1", "10.0.1.1 is not a host address of internal_cidr"),
    ("external_gateway_ip", "203.0.113.255", "203.0.113.255 is not a host address"),
    # uplink
    ("uplink_ofport", -1, "-1 is outside 0-"),
    ("uplink_ofport", "abc", "'abc' is not an integer"),
    # MAC prefix for FIP / SNAT MACs
    ("mac_prefix", "03:5a", "'03:5a' must be two bytes of a locally administered unicast"),
    ("mac_prefix", "00:5a", "'00:5a' must be two bytes of a locally administered unicast"),
    ("mac_prefix", "02:5a:00", "'02:5a:00' must be two bytes"),
    ("mac_prefix", "zz:5a", "'zz:5a' must be two bytes"),
    # names
    ("bridge", LONG, "'xxxx"),
    ("bridge", "br int", "'br int' is not a valid OVS port or bridge name"),
    ("bridge", MISSING, "required option is empty"),
    ("uplink_port", "up\x00link", "'up\\x00link' is not a valid OVS port or bridge name"),
    ("uplink_port", "", "required option is empty"),
    # what comes from the metadata proxy's port is trusted as its replies
    ("metadata_port", "uplink", "is the uplink or fabric port"),
    ("metadata_port", "meta\x00", "is not a valid OVS port or bridge name"),
]


@pytest.mark.parametrize(
    "option, value, reason", BAD_OPTIONS, ids=[f"{o}={v!r:.20}" for o, v, _ in BAD_OPTIONS]
)
def test_bad_option_is_rejected_naming_the_option(option, value, reason):
    # ct_zone == fip_frag_ct_zone is reported on fip_frag_ct_zone (the second of the pair).
    named = "fip_frag_ct_zone" if reason.endswith("equals ct_zone") else option
    with pytest.raises(ConfigError) as err:
        config(**{option: value})
    assert err.type is ConfigError
    assert str(err.value).startswith(f"{named}: "), str(err.value)
    assert reason in str(err.value)


def test_snat_ip_may_wait_for_ovsdb_but_nothing_compiles_without_it():
    cfg = config(snat_ip="")
    assert cfg.snat_ip is None
    with pytest.raises(ConfigError, match="^snat_ip: required option is empty"):
        host_flows(cfg)


def test_overlong_value_is_shortened_in_the_message():
    with pytest.raises(ConfigError) as err:
        config(bridge=LONG)
    assert len(str(err.value)) < 200 and "is not a valid OVS port or bridge name" in str(err.value)


@pytest.mark.parametrize("prefix", ["²", "1" * 5000])
def test_cidr_prefix_of_non_decimal_digits_names_the_option(prefix):
    with pytest.raises(ConfigError, match=r"^internal_cidr: "):
        config(internal_cidr=f"10.0.0.0/{prefix}")


def test_mac_prefix_with_a_space_is_rejected_at_parse_time():
    try:
        cfg = config(mac_prefix="02 5a")
    except ConfigError:
        return
    assert cfg.snat_mac is not None  # a config that parsed must be usable


# --- VM ports: from_external_ids --------------------------------------------------------------

BAD_PORTS = [
    # (name, ofport, external_ids overrides, what the message must name, value/reason)
    ("tapvm11", None, {}, "ofport None", "is not a number"),
    ("tapvm11", "abc", {}, "ofport 'abc'", "is not a number"),
    ("tapvm11", -1, {}, "ofport -1", "is not a usable OpenFlow port"),
    ("tapvm11", 0, {}, "ofport 0", "is not a usable OpenFlow port"),
    ("tapvm11", 0xFFFFFF00, {}, "ofport 4294967040", "is not a usable OpenFlow port"),
    ("tapvm11", [], {}, "ofport []", "is not a number"),
    ("", 11, {}, "port ''", "invalid interface name"),
    (LONG, 11, {}, "port 'xxxx", "invalid interface name"),
    (None, 11, {}, "port None", "invalid interface name"),
    ("tapvm11", 11, {"iface-id": MISSING}, "external_ids:iface-id", "is missing"),
    ("tapvm11", 11, {"attached-mac": MISSING}, "external_ids:attached-mac", "is missing"),
    ("tapvm11", 11, {"ovsnat-fixed-ip": MISSING}, "external_ids:ovsnat-fixed-ip", "is missing"),
    ("tapvm11", 11, {"ovsnat-fixed-ip": "   "}, "external_ids:ovsnat-fixed-ip", "is missing"),
    ("tapvm11", 11, {"iface-id": LONG}, "external_ids:iface-id 'xxxx", "too long"),
    ("tapvm11", 11, {"iface-id": "vm\x00"}, "external_ids:iface-id 'vm\\x00'", "not printable"),
    ("tapvm11", 11, {"iface-id": "vm\n1"}, "external_ids:iface-id 'vm\\n1'", "not printable"),
    ("tapvm11", 11, {"iface-id": "vm\u200b"}, "external_ids:iface-id", "not printable"),
    (
        "tapvm11",
        11,
        {"attached-mac": LONG},
        "external_ids:attached-mac: 'xxxx",
        "is not a MAC address",
    ),
    (
        "tapvm11",
        11,
        {"attached-mac": "02:00:0a:00:0b"},
        "external_ids:attached-mac: '02:00:0a:00:0b'",
        "is not a MAC address",
    ),
    (
        "tapvm11",
        11,
        {"attached-mac": "02:00:0a:00:00:zz"},
        "external_ids:attached-mac",
        "'02:00:0a:00:00:zz' is not a MAC address",
    ),
    (
        "tapvm11",
        11,
        {"attached-mac": "03:00:0a:00:00:0b"},
        "external_ids:attached-mac",
        "03:00:0a:00:00:0b is a multicast MAC",
    ),
    (
        "tapvm11",
        11,
        {"attached-mac": "00:00:00:00:00:00"},
        "external_ids:attached-mac",
        "is the zero MAC",
    ),
    (
        "tapvm11",
        11,
        {"attached-mac": "0é:00:0a:00:00:0b"},
        "external_ids:attached-mac",
        "'0é:00:0a:00:00:0b' is not a MAC address",
    ),
    (
        "tapvm11",
        11,
        {"attached-mac": "02:00:0a:00:00:0\x07"},
        "external_ids:attached-mac",
        "is not a MAC address",
    ),
    (
        "tapvm11",
        11,
        {"ovsnat-fixed-ip": "10.0.0"},
        "external_ids:ovsnat-fixed-ip",
        "'10.0.0' is not an IPv4 address",
    ),
    (
        "tapvm11",
        11,
        {"ovsnat-fixed-ip": "fd00::11"},
        "external_ids:ovsnat-fixed-ip",
        "'fd00::11' is not an IPv4 address",
    ),
    (
        "tapvm11",
        11,
        {"ovsnat-fixed-ip": "10.0.0.256"},
        "external_ids:ovsnat-fixed-ip",
        "'10.0.0.256' is not an IPv4 address",
    ),
    (
        "tapvm11",
        11,
        {"ovsnat-fixed-ip": "010.0.0.11"},
        "external_ids:ovsnat-fixed-ip",
        "'010.0.0.11' is not an IPv4 address",
    ),
    (
        "tapvm11",
        11,
        {"ovsnat-fixed-ip": LONG},
        "external_ids:ovsnat-fixed-ip: 'xxxx",
        "is not an IPv4 address",
    ),
    (
        "tapvm11",
        11,
        {"ovsnat-fixed-ip": "١٠.0.0.11"},
        "external_ids:ovsnat-fixed-ip",
        "is not an IPv4 address",
    ),
    (
        "tapvm11",
        11,
        {"ovsnat-fixed-ip": "10.0.0.11\x00"},
        "external_ids:ovsnat-fixed-ip",
        "is not an IPv4 address",
    ),
    (
        "tapvm11",
        11,
        {"ovsnat-fip": "203.0.113"},
        "external_ids:ovsnat-fip",
        "'203.0.113' is not an IPv4 address",
    ),
    (
        "tapvm11",
        11,
        {"ovsnat-fip": "2001:db8::10"},
        "external_ids:ovsnat-fip",
        "'2001:db8::10' is not an IPv4 address",
    ),
    (
        "tapvm11",
        11,
        {"ovsnat-fip": LONG},
        "external_ids:ovsnat-fip: 'xxxx",
        "is not an IPv4 address",
    ),
    (
        "tapvm11",
        11,
        {"ovsnat-fip": "203.0.113.１0"},
        "external_ids:ovsnat-fip",
        "is not an IPv4 address",
    ),
    (
        "tapvm11",
        11,
        {"ovsnat-fip": "\x1b[31m"},
        "external_ids:ovsnat-fip",
        "'\\x1b[31m' is not an IPv4 address",
    ),
]


@pytest.mark.parametrize(
    "name, ofport, overrides, names, reason",
    BAD_PORTS,
    ids=[f"{n!r:.12}-{o!r:.12}-{list(ov.items())!r:.40}" for n, o, ov, _, _ in BAD_PORTS],
)
def test_bad_port_row_is_rejected_naming_port_and_key(name, ofport, overrides, names, reason):
    with pytest.raises(PortError) as err:
        VmPort.from_external_ids(name, ofport, ids(11, **overrides))
    assert err.type is PortError
    message = str(err.value)
    assert message.startswith("port "), message
    assert names in message and reason in message, message
    assert len(message) < 300  # a 10,000-character value is shown shortened


def test_port_row_with_fip_parses():
    port = vm(11, fip=" 203.0.113.10 ")
    assert (port.name, port.ofport, port.iface_id) == ("tapvm11", 11, "vm11")
    assert port.fixed_ip == netaddr.IPAddress("10.0.0.11")
    assert port.fip == netaddr.IPAddress("203.0.113.10")
    assert vm(12, fip="").fip is None


def test_non_ascii_but_printable_iface_id_and_name_are_accepted():
    port = VmPort.from_external_ids("tapé", 11, ids(11, **{"iface-id": "vm-é"}))
    assert (port.name, port.iface_id) == ("tapé", "vm-é")


@pytest.mark.parametrize("name", ["tap\x00vm", "tap\nvm"])
def test_non_printable_interface_name_is_rejected(name):
    with pytest.raises(PortError, match="invalid interface name"):
        VmPort.from_external_ids(name, 11, ids(11))


@pytest.mark.parametrize("ofport", [math.inf, -math.inf])
def test_infinite_ofport_is_a_port_error(ofport):
    with pytest.raises(PortError, match="ofport"):
        VmPort.from_external_ids("tapvm11", ofport, ids(11))


# --- VM ports: check against the host ---------------------------------------------------------

BAD_AGAINST_HOST = [
    (
        dict(n=11, **{"ovsnat-fixed-ip": "10.0.1.11"}),
        "fixed IP 10.0.1.11 is not a host address of network (default) 10.0.0.0/24",
    ),
    (dict(n=11, **{"ovsnat-fixed-ip": "10.0.0.0"}), "fixed IP 10.0.0.0 is not a host address"),
    (dict(n=11, **{"ovsnat-fixed-ip": "10.0.0.255"}), "fixed IP 10.0.0.255 is not a host address"),
    (dict(n=11, **{"ovsnat-fixed-ip": "10.0.0.1"}), "fixed IP 10.0.0.1 is the VMs' gateway"),
    (
        dict(n=11, **{"attached-mac": "02:00:00:00:00:01"}),
        "MAC 02:00:00:00:00:01 is the router MAC",
    ),
    (dict(n=11, ofport=1), "ofport 1 is the uplink's"),
    (dict(n=11, fip="10.0.0.50"), "FIP 10.0.0.50 is inside its network (default) 10.0.0.0/24"),
    (
        dict(n=11, fip="198.51.100.10"),
        "FIP 198.51.100.10 is not a host address of external_cidr 203.0.113.0/24",
    ),
    (dict(n=11, fip="203.0.113.0"), "FIP 203.0.113.0 is not a host address of external_cidr"),
    (dict(n=11, fip="203.0.113.255"), "FIP 203.0.113.255 is not a host address of external"),
    (dict(n=11, fip="203.0.113.11"), "FIP 203.0.113.11 is this host's SNAT IP"),
    (dict(n=11, fip="203.0.113.1"), "FIP 203.0.113.1 is the external gateway's address"),
]


@pytest.mark.parametrize("port, reason", BAD_AGAINST_HOST, ids=[r for _, r in BAD_AGAINST_HOST])
def test_port_that_contradicts_the_host_is_rejected(port, reason):
    with pytest.raises(PortError) as err:
        vm(**port).check(config())
    assert err.type is PortError
    assert str(err.value).startswith("port 'tapvm11' (vm11): ") and reason in str(err.value)


def test_valid_ports_pass_the_host_check():
    cfg = config()
    vm(11, fip="203.0.113.10").check(cfg)
    vm(12).check(cfg)
    vm(254, fip="203.0.113.254").check(cfg)


# --- desired state ----------------------------------------------------------------------------


def test_every_valid_port_is_accepted_sorted_by_name():
    state = build_state(config(), [vm(13), vm(11, fip="203.0.113.10"), vm(12)])
    assert [p.name for p in state.vms] == ["tapvm11", "tapvm12", "tapvm13"]
    assert state.rejected == ()


@pytest.mark.parametrize(
    "what, winner, loser",
    [
        (
            "FIP 203.0.113.10",
            vm(11, fip="203.0.113.10", name="tap-z", **{"iface-id": "aaa"}),
            vm(12, fip="203.0.113.10", name="tap-a", **{"iface-id": "bbb"}),
        ),
        (
            "fixed IP 10.0.0.11",
            vm(11, name="tap-z", **{"iface-id": "aaa"}),
            vm(12, name="tap-a", **{"iface-id": "bbb", "ovsnat-fixed-ip": "10.0.0.11"}),
        ),
        (
            "MAC 02:00:0a:00:00:0b",  # netaddr's spelling, unlike mac_str's elsewhere
            vm(11, name="tap-z", **{"iface-id": "aaa"}),
            vm(12, name="tap-a", **{"iface-id": "bbb", "attached-mac": "02:00:0a:00:00:0b"}),
        ),
        (
            "ofport 11",
            vm(11, name="tap-z", **{"iface-id": "aaa"}),
            vm(12, name="tap-a", ofport=11, **{"iface-id": "bbb"}),
        ),
        (
            "FIP 203.0.113.10",  # same iface-id: the interface name breaks the tie
            vm(11, fip="203.0.113.10", name="tap-a", **{"iface-id": "same"}),
            vm(12, fip="203.0.113.10", name="tap-b", **{"iface-id": "same"}),
        ),
    ],
)
def test_duplicate_claim_goes_to_smallest_iface_id_then_name_in_any_order(what, winner, loser):
    cfg = config()
    forward = build_state(cfg, [winner, loser, vm(20)])
    backward = build_state(cfg, [vm(20), loser, winner])
    assert forward == backward
    assert forward.vms == tuple(sorted([winner, vm(20)], key=lambda p: p.name))
    [rejection] = forward.rejected
    assert rejection.name == loser.name
    assert f"{what} is already used by port {winner.name!r} ({winner.iface_id})" in rejection.reason
    assert rejection.reason.startswith(f"port {loser.name!r} ({loser.iface_id}): ")


def test_bad_port_next_to_good_ones_leaves_them_accepted():
    unparsable = Rejection("tapbad", "port 'tapbad': external_ids:iface-id is missing")
    outside = vm(30, **{"ovsnat-fixed-ip": "10.0.1.30"})
    state = build_state(config(), [vm(11, fip="203.0.113.10"), unparsable, outside, vm(12)])
    assert [p.name for p in state.vms] == ["tapvm11", "tapvm12"]
    assert [r.name for r in state.rejected] == ["tapbad", "tapvm30"]
    assert "fixed IP 10.0.1.30 is not a host address" in state.rejected[1].reason


def test_pat_vm_whose_block_does_not_fit_is_rejected_naming_the_block():
    # 10000 ports / 64 per VM: offsets 0-155 fit; offset 200 would need 32800-32863.
    state = build_state(config(pat_ports_per_vm=64), [vm(12), vm(200)])
    assert [p.name for p in state.vms] == ["tapvm12"]
    [rejection] = state.rejected
    assert rejection.name == "tapvm200"
    assert (
        "PAT block 32800-32863 for 10.0.0.200 does not fit snat_port_max 29999" in rejection.reason
    )


def test_fip_vm_at_an_offset_beyond_the_pat_range_is_accepted():
    state = build_state(config(pat_ports_per_vm=64), [vm(200, fip="203.0.113.200")])
    assert [p.name for p in state.vms] == ["tapvm200"] and state.rejected == ()


def test_empty_state():
    assert build_state(config(), []) == DesiredState(config(), (), ())


# --- properties: nothing but the documented error escapes -------------------------------------

values = st.one_of(st.text(), st.integers(), st.text(alphabet="0123456789./:abcdef "))


@settings(max_examples=300, deadline=None)
@given(
    name=st.one_of(st.text(), st.integers(), st.none()),
    ofport=st.one_of(st.text(), st.integers(), st.none()),
    external_ids=st.dictionaries(
        st.sampled_from(["iface-id", "attached-mac", "ovsnat-fixed-ip", "ovsnat-fip", "other"]),
        values,
    ),
)
def test_any_port_row_parses_or_raises_port_error(name, ofport, external_ids):
    try:
        port = VmPort.from_external_ids(name, ofport, external_ids)
    except PortError:
        return
    assert isinstance(port, VmPort)


ALL_OPTIONS = sorted(OPTIONS) + ["pat_ports_per_vm", "mac_prefix"]


@settings(max_examples=300, deadline=None)
@given(
    option=st.sampled_from(ALL_OPTIONS),
    value=st.one_of(
        st.none(),
        st.integers(),
        st.text(),
        st.floats(allow_nan=False),
        st.text(alphabet="0123456789./:-abcdef ²"),
    ),
)
def test_any_value_for_one_option_parses_or_raises_config_error(option, value):
    try:
        cfg = HostConfig.parse(options(**{option: value}))
    except ConfigError as e:
        # A value can be fine alone and clash with another option, which is then the one named.
        assert str(e).partition(": ")[0] in ALL_OPTIONS, str(e)
        return
    assert isinstance(cfg, HostConfig)


# --- upgrades --------------------------------------------------------------------------------
ROUND_ONE = {
    "bridge": "br-int",
    "uplink_port": "uplink",
    "internal_cidr": "10.0.0.0/24",
    "internal_gateway_ip": "10.0.0.1",
    "router_mac": "02:00:00:00:00:01",
    "external_cidr": "100.64.0.0/10",
    "external_gateway_ip": "100.64.0.1",
    "snat_ip": "100.64.0.11",
    "snat_port_min": "20000",
    "snat_port_max": "29999",
    "ct_zone": "65000",
    "fip_frag_ct_zone": "65001",
}


def test_a_round_one_config_in_rfc6598_space_starts_with_a_transit_range_of_its_own():
    """0.2.0 refused this 0.1.0 config (its external network is 100.64.0.0/10, the old
    transit default); `auto` picks a range no real network can be in."""
    cfg = HostConfig.parse({**ROUND_ONE, "transit_cidr": "auto"})
    assert str(cfg.transit_cidr) == "240.0.0.0/10"
    assert str(HostConfig.parse(ROUND_ONE).transit_cidr) == "240.0.0.0/10"  # unset: auto


def test_auto_transit_steps_past_configured_networks_and_an_explicit_one_is_kept():
    cfg = HostConfig.parse(
        {
            **ROUND_ONE,
            "external_cidr": "240.0.0.0/9",
            "external_gateway_ip": "240.0.0.1",
            "snat_ip": "240.0.0.11",
        }
    )
    assert str(cfg.transit_cidr) == "240.128.0.0/10"
    assert (
        str(
            HostConfig.parse(
                {
                    **ROUND_ONE,
                    "external_cidr": "203.0.113.0/24",
                    "external_gateway_ip": "203.0.113.1",
                    "snat_ip": "203.0.113.11",
                    "transit_cidr": "100.64.0.0/10",
                }
            ).transit_cidr
        )
        == "100.64.0.0/10"
    )


def test_a_network_inside_the_transit_range_is_refused_with_the_reason():
    from ovsnat.model.portcheck import check_alone

    cfg = HostConfig.parse({**ROUND_ONE, "fabric_port": "fabric", "uplink_ofport": 1})
    port = VmPort.from_external_ids(
        "tapx",
        7,
        {
            "iface-id": "x",
            "attached-mac": "02:00:0a:00:00:07",
            "ovsnat-fixed-ip": "240.1.0.7",
            "ovsnat-network": "odd",
            "ovsnat-cidr": "240.1.0.0/24",
            "ovsnat-gateway": "240.1.0.1",
            "ovsnat-vlan": "300",
        },
    )
    reason = check_alone(cfg, port)
    assert "overlaps transit_cidr 240.0.0.0/10" in reason and "set transit_cidr" in reason
