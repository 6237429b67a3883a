"""Neutron's routers in the controller (docs/routers.md, issue 26 item 1), pure: the Bridge
keys parsed and failing safe, a network's flows per routing state, FIPs held inert where
no FIP is served, and a live host following key changes at once. The lab test with real
packets is tests/test_routing_lab.py."""

from __future__ import annotations

import logging

import netaddr
import pytest

from ovsnat.cli.golden import BASE, FABRIC, NET_A, NET_B, port
from ovsnat.compile.actions import Ct
from ovsnat.compile.compiler import compile_state
from ovsnat.compile.network import network_flows
from ovsnat.compile.pipeline import EGRESS, PAT_IN_NET, VM_ARP, VM_ROUTE
from ovsnat.compile.tables import check_flow
from ovsnat.core.state import HostState, build_state
from ovsnat.model import HostConfig, mac_str
from ovsnat.model.networks import parse as parse_network
from ovsnat.model.routing import ISOLATED, LEGACY, Routing, parse_bridge
from ovsnat.model.rows import IfaceRow
from tests.hostsim import SimHost, vm_row

CFG = HostConfig.parse({**BASE, **FABRIC, "fip_activation": "immediate"})
ROUTER = mac_str(CFG.router_mac)
TENANT_A = parse_network("test", NET_A)
ON_R1 = {"ovsnat-net-tenant-a": "router=r1", "ovsnat-router-r1": "ext=public;snat=on"}


# --- the keys --------------------------------------------------------------------------------
def test_a_network_without_a_key_is_routed_as_before_and_the_default_network_always_is():
    keys = parse_bridge({"ovsnat-net-tenant-b": "router=-"})
    assert keys.of("tenant-a") is LEGACY and keys.of("") is LEGACY
    assert LEGACY.routed and LEGACY.fips and LEGACY.pat
    assert not keys.problems


@pytest.mark.parametrize(
    "ids,routed,fips,pat",
    [
        ({"ovsnat-net-tenant-a": "router=-"}, False, False, False),
        (ON_R1, True, True, True),
        ({**ON_R1, "ovsnat-router-r1": "ext=public;snat=off"}, True, True, False),
        ({**ON_R1, "ovsnat-router-r1": " snat=off ; ext=- "}, True, False, False),
    ],
)
def test_what_a_router_lets_its_networks_reach(ids, routed, fips, pat):
    got = parse_bridge(ids)
    route = got.of("tenant-a")
    assert (route.routed, route.fips, route.pat) == (routed, fips, pat)
    assert not got.problems


@pytest.mark.parametrize(
    "ids,key,words,route",
    [
        (
            {"ovsnat-net-tenant-a": "router"},
            "ovsnat-net-tenant-a",
            "'router' is not router=...; network tenant-a is isolated",
            "isolated",
        ),
        (
            {"ovsnat-net-tenant-a": "router=r1;vlan=3"},
            "ovsnat-net-tenant-a",
            "'router=r1;vlan=3' defines the network without cidr=",
            "isolated",
        ),
        (
            {"ovsnat-net-tenant-a": "router=r 1"},
            "ovsnat-net-tenant-a",
            "router 'r 1' is not a router id",
            "isolated",
        ),
        (
            {"ovsnat-net-tenant-a": "router=r1"},
            "ovsnat-net-tenant-a",
            "router r1 has no key ovsnat-router-r1; network tenant-a gets no PAT and no FIP",
            "no-gateway",
        ),
        (
            {**ON_R1, "ovsnat-router-r1": "ext=public;snat=yes"},
            "ovsnat-router-r1",
            "snat 'yes' is not on or off; its networks get no PAT and no FIP",
            "no-gateway",
        ),
        (
            {**ON_R1, "ovsnat-router-r1": "ext=public"},
            "ovsnat-router-r1",
            "'ext=public' has no snat=",
            "no-gateway",
        ),
        (
            {**ON_R1, "ovsnat-router-r1": "ext=public;ext=other;snat=on"},
            "ovsnat-router-r1",
            "is not ext=...;snat=...",
            "no-gateway",
        ),
    ],
)
def test_a_bad_value_fails_safe_with_one_problem_naming_key_and_value(ids, key, words, route):
    got = parse_bridge(ids)
    assert list(got.problems) == [key]
    assert f"bridge external_ids:{key}: " in got.problems[key] and words in got.problems[key]
    r = got.of("tenant-a")
    assert not r.fips and not r.pat and r.why  # never more than the key allowed
    assert r.routed == (route == "no-gateway")


def test_keys_with_bad_ids_are_ignored_and_said():
    got = parse_bridge({"ovsnat-net-a b": "router=-", "ovsnat-router-x/y": "ext=-;snat=off"})
    assert sorted(got.problems) == ["ovsnat-net-a b", "ovsnat-router-x/y"]
    assert got.nets == {}


# --- a network's flows -----------------------------------------------------------------------
def tables(flows) -> set[int]:
    return {f.table for f in flows}


def test_legacy_and_a_router_with_gateway_and_snat_give_todays_flows():
    today = network_flows(CFG, TENANT_A)
    assert network_flows(CFG, TENANT_A, Routing("r1", "public", True)) == today
    assert any(isinstance(a, Ct) for f in today for a in f.actions)


def test_a_network_on_no_router_answers_its_gateway_but_routes_nothing():
    flows = network_flows(CFG, TENANT_A, ISOLATED)
    arp = [f for f in flows if f.table == VM_ARP and "arp_tpa=10.1.0.1" in f.text()]
    assert arp, "the gateway's ARP is answered: the DHCP server's identifier"
    drops = [f for f in flows if f.table == VM_ROUTE]
    assert len(drops) == 1 and drops[0].actions == ()
    assert f"dl_dst={ROUTER}" in drops[0].text() and "reg6=0x65" in drops[0].text()
    assert drops[0].priority > 110  # above conn_limit's counting flow
    assert not tables(flows) & {EGRESS, PAT_IN_NET}
    assert not any(isinstance(a, Ct) for f in flows for a in f.actions)
    for f in flows:
        check_flow(f)


@pytest.mark.parametrize("route", [Routing("r1", "public", False), Routing("r1", None, True)])
def test_a_router_without_pat_drops_the_networks_way_out_and_back(route):
    flows = network_flows(CFG, TENANT_A, route)
    out = [f for f in flows if f.table == EGRESS and f.priority == 50]
    assert len(out) == 1 and out[0].actions == ()  # its own counter
    assert PAT_IN_NET not in tables(flows)  # replies of sessions opened before: dropped
    assert not any(isinstance(a, Ct) for f in flows for a in f.actions)
    assert VM_ROUTE not in tables(flows)
    for f in flows:
        check_flow(f)


# --- FIPs held inert ---------------------------------------------------------------------------
def fip_vm():
    return port(12, "203.0.113.12", net=NET_A, ofport=22)


@pytest.mark.parametrize(
    "ids", [{"ovsnat-net-tenant-a": "router=-"}, {**ON_R1, "ovsnat-router-r1": "ext=-;snat=on"}]
)
def test_a_fip_where_no_fip_is_served_is_inert(ids):
    state = build_state(CFG, [fip_vm()], parse_bridge(ids))
    assert not state.rejected and state.vms[0].fip is None
    assert not any("203.0.113.12" in f.text() for f in compile_state(state))


def test_snat_off_keeps_fips():
    ids = {**ON_R1, "ovsnat-router-r1": "ext=public;snat=off"}
    state = build_state(CFG, [fip_vm()], parse_bridge(ids))
    assert str(state.vms[0].fip) == "203.0.113.12"
    assert any("203.0.113.12" in f.text() for f in compile_state(state))


def test_a_routing_change_recompiles_only_the_networks_it_touches():
    host = HostState(CFG)
    for p in (port(11, net=NET_A, ofport=21), port(11, net=NET_B, ofport=31)):
        host.update(p.name, p)
    before = {o for o in host.wire}
    delta, nets = host.set_routing(parse_bridge({"ovsnat-net-tenant-a": "router=-"}))
    assert nets == {"tenant-a"}
    assert delta.owners == {("net", "tenant-a")}, delta.owners
    assert {o for o in host.wire} == before
    assert host.routing_status()["networks"]["tenant-a"].startswith("on no router")


# --- a live host -----------------------------------------------------------------------------
def net_row(n: int, fip: str | None = None) -> IfaceRow:
    return vm_row(n, fip, ofport=20 + n, **{**NET_A, "ovsnat-fixed-ip": f"10.1.0.{n}"})


def test_a_live_host_follows_the_keys_at_once_and_the_fip_comes_back(caplog):
    sim = SimHost(**FABRIC, fip_activation="immediate")
    sim.rows["fabric"] = IfaceRow("fabric", 2, {}, "up")
    sim.start()
    sim.set_bridge_ids(**ON_R1)
    sim.plug(net_row(11), net_row(12, "203.0.113.12"))
    assert sim.fip_live("203.0.113.12")
    assert sim.switch.flow_keys() == sim.desired_keys()

    with caplog.at_level(logging.ERROR, logger="ovsnat"):
        sim.set_bridge_ids(**{**ON_R1, "ovsnat-net-tenant-a": "router=-"})
        assert not sim.fip_live("203.0.113.12")
        assert sim.switch.flow_keys() == sim.desired_keys()
        status = sim.ctl.host.routing_status()
        assert status["inert_fips"]["tapvm12"]["fips"] == ["203.0.113.12"]
        isolated = {**ON_R1, "ovsnat-net-tenant-a": "router=-"}
        sim.set_bridge_ids(**isolated, **{"ovsnat-snat-ip": "203.0.113.50"})  # recompiles all
        assert sim.ctl.host.cfg.snat_ip == netaddr.IPAddress("203.0.113.50")
        assert sim.ctl.host.routing_status()["inert_fips"] == status["inert_fips"]
        assert not sim.fip_live("203.0.113.12")

        sim.set_bridge_ids(**{**ON_R1, "ovsnat-net-tenant-a": "nonsense"})
        sim.set_bridge_ids(**{**ON_R1, "ovsnat-net-tenant-a": "nonsense", "other": "x"})
        assert not sim.fip_live("203.0.113.12")
    errors = [r.getMessage() for r in caplog.records if "ovsnat-net-tenant-a" in r.getMessage()]
    assert len(errors) == 1, errors  # one line while the bad value lasts

    sim.set_bridge_ids(**ON_R1)
    assert sim.fip_live("203.0.113.12")
    assert sim.ctl.host.routing_status()["inert_fips"] == {}
    assert sim.switch.flow_keys() == sim.desired_keys()
