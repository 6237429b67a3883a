"""East-west routing's flows (docs/routers.md, issue 26 item 2), pure: what a host routes
between a router's networks, what it accepts from other hosts' routed MACs, what it costs
per VM, network and neighbour, and a live host following the keys and its own ports. The
packets are tests/test_eastwest_lab.py's; the keys tests/test_eastwest_keys.py's.
"""

from __future__ import annotations

import logging

import pytest

from ovsnat.cli.scenarios import BASE, BRIDGE_KEYS, FABRIC, NET_A, NET_B, NET_C, port
from ovsnat.compile import eastwest
from ovsnat.compile.compiler import compile_state
from ovsnat.compile.flows import COOKIE_EW, COOKIE_HOSTMACS, cookie_kind
from ovsnat.compile.network import network_flows
from ovsnat.compile.pipeline import (
    EW_IN,
    EW_IN_PORT,
    EW_ROUTE,
    FABRIC_IN,
    VM_L2,
    VM_ROUTE,
)
from ovsnat.core.state import HostState, build_state
from ovsnat.model import HostConfig
from ovsnat.model.routing import parse_bridge
from ovsnat.model.rows import IfaceRow
from tests.hostsim import SimHost, vm_row

CFG = HostConfig.parse({**BASE, **FABRIC, "fip_activation": "immediate"})
KEYS = BRIDGE_KEYS["east-west"]
PORTS = [port(11, net=NET_A, ofport=21), port(13, net=NET_C, ofport=33)]


def flows_of(keys=KEYS, ports=PORTS, cfg=CFG):
    return compile_state(build_state(cfg, ports, parse_bridge(keys)))


def texts(flows, table: int) -> list[str]:
    return [f.body().split(", ", 1)[-1] for f in flows if f.table == table]


def tag(keys=KEYS, net="tenant-a") -> str:
    return f"{parse_bridge(keys).of(net).tag:#x}"


def test_a_routers_networks_are_reached_through_its_tag_and_no_other_router_is():
    flows = flows_of()
    r1 = tag()
    routes = texts(flows, EW_ROUTE)
    for cidr, vlan in (("10.1.0.0/24", 0x65), ("10.2.0.0/24", 0x67), ("10.4.0.0/24", 0x68)):
        want = f"reg3={r1},nw_dst={cidr} actions=load:{vlan:#x}->NXM_NX_REG6[],goto_table:60"
        assert any(want in t for t in routes), (cidr, routes)
    # tenant-b (r2) has no port here: nothing of r2 is routed, nor reached.
    assert all(f"reg3={r1}" in t or "reg3" not in t for t in routes)
    tagged = [t for t in texts(flows, VM_ROUTE) if "NXM_NX_REG3" in t]
    assert sorted(t.split(",")[2] for t in tagged) == ["reg6=0x65", "reg6=0x67"]


def test_a_remote_neighbour_leaves_on_the_fabric_from_this_hosts_routed_mac():
    [nb] = [t for t in texts(flows_of(), VM_L2) if "reg7=0xa040005" in t]
    assert "reg5=0x8/0xc" in nb  # routed here, never a frame from the fabric
    assert "set_field:fa:16:3f:00:00:01->eth_src,set_field:02:00:0a:04:00:05->eth_dst" in nb
    assert nb.endswith("push_vlan:0x8100,set_field:4200->vlan_vid,output:2")  # VLAN 104


def test_the_fabric_accepts_routed_frames_only_from_other_hosts_routed_macs():
    flows = flows_of()
    fabric_in = texts(flows, FABRIC_IN)
    assert "priority=200,dl_src=fa:16:3f:00:00:01 actions=drop" in fabric_in  # our own
    for mac in ("fa:16:3f:00:00:02", "fa:16:3f:00:00:03"):
        assert f"priority=190,dl_src={mac} actions=goto_table:{EW_IN}" in fabric_in
    # From any other MAC, a source in another of the router's networks is dropped...
    assert any(
        f"priority=150,ip,reg3={tag()},nw_src=10.4.0.0/24 actions=drop" in t for t in fabric_in
    )
    # ...but a network's own sources are its switched traffic.
    own = "priority=160,ip,reg6=0x65,nw_src=10.1.0.0/24 actions=move:NXM_OF_IP_DST[]"
    assert any(own in t for t in fabric_in)
    ew_in = texts(flows, EW_IN)
    assert len([t for t in ew_in if f"reg3={tag()}" in t]) == 3 and any(
        "priority=0" in t for t in ew_in
    )
    # To a local VM's MAC only, from the router MAC.
    [to_vm11] = [t for t in texts(flows, EW_IN_PORT) if "dl_dst=02:00:0a:00:00:0b" in t]
    assert "reg6=0x65" in to_vm11 and "set_field:02:00:00:00:00:01->eth_src" in to_vm11


def test_without_its_own_routed_mac_a_host_routes_only_between_its_own_vms(caplog):
    keys = {k: v for k, v in KEYS.items() if k != "ovsnat-hostmac-hv1"}
    flows = flows_of(keys)
    assert texts(flows, EW_ROUTE) and not [t for t in texts(flows, VM_L2) if "fa:16:3f" in t]
    assert not [f for f in flows if cookie_kind(f.cookie) == COOKIE_HOSTMACS]


def test_without_a_fabric_only_the_lookup_remains():
    cfg = HostConfig.parse({**BASE, "fip_activation": "immediate"})
    flows = flows_of(cfg=cfg)
    ew = [f for f in flows if cookie_kind(f.cookie) == COOKIE_EW]
    assert ew and {f.table for f in ew} == {EW_ROUTE}
    assert not {EW_IN, EW_IN_PORT, FABRIC_IN} & {f.table for f in flows}


def test_networks_of_a_router_without_a_network_here_cost_nothing():
    ports = [port(11, net=NET_B, ofport=31)]  # only tenant-b (r2) here
    flows = flows_of(ports=ports)
    assert not [t for t in texts(flows, EW_ROUTE) if f"reg3={tag()}" in t]
    assert not [t for t in texts(flows, VM_L2) if "reg7=0xa040005" in t]


def test_a_network_its_ports_define_otherwise_is_not_routed_east_west():
    keys = {**KEYS, "ovsnat-net-tenant-c": "router=r1;cidr=10.2.0.0/16;gw=10.2.0.1;vlan=103"}
    state = HostState(CFG)
    state.set_routing(parse_bridge(keys))
    for p in PORTS:
        state.update(p.name, p)
    assert "tenant-c" not in state.plan.local and "tenant-c" not in state.plan.dests
    assert "its ports define it as 10.2.0.0/24" in state.plan.problems["tenant-c"]
    assert "tenant-a" in state.plan.local  # the router's other network is untouched
    assert any("not routed east-west" in p for p in state.routing_status()["problems"])


def test_a_remote_network_on_a_local_networks_vlan_is_left_out():
    keys = {**KEYS, "ovsnat-net-tenant-d": "router=r1;cidr=10.4.0.0/24;gw=10.4.0.1;vlan=102"}
    del keys["ovsnat-net-tenant-b"]  # tenant-b has no key: routed as before routers
    ports = [*PORTS, port(11, net=NET_B, ofport=31)]  # and holds VLAN 102 here
    got = eastwest.plan(CFG, parse_bridge(keys), {p.network.name: p.network for p in ports})
    assert (
        "tenant-d" not in got.dests
        and "network tenant-b's on this host" in got.problems["tenant-d"]
    )


def test_costs_per_vm_network_and_neighbour():
    keys = parse_bridge(KEYS)
    a = keys.of("tenant-a")
    net_a = port(11, net=NET_A).network
    plain = network_flows(CFG, net_a, a)
    assert len(network_flows(CFG, net_a, a, a.tag)) - len(plain) == 3  # tag, own, fabric own
    assert len(eastwest.dest_flows(CFG, a, (), keys.hosts.mac)) == 3  # route, drop, accept
    nbs = keys.neighbours["tenant-c"] * 1
    c = keys.of("tenant-c")
    assert len(eastwest.dest_flows(CFG, c, nbs, keys.hosts.mac)) == 3 + len(nbs)
    assert len(eastwest.hostmac_flows(CFG, keys)) == 1 + len(keys.hosts.others)
    vm = port(11, net=NET_A, ofport=21)
    assert len(eastwest.port_flow(CFG, vm, net_a, 0)) == 1


# --- a live host ------------------------------------------------------------------------------
def row(n: int, net: dict, ofport: int) -> IfaceRow:
    prefix = net["ovsnat-cidr"].rsplit(".", 1)[0]
    return vm_row(n, ofport=ofport, **{**net, "ovsnat-fixed-ip": f"{prefix}.{n}"})


@pytest.fixture
def sim():
    s = SimHost(**FABRIC, fip_activation="immediate")
    s.rows["fabric"] = IfaceRow("fabric", 2, {}, "up")
    s.start()
    s.set_bridge_ids(**KEYS)
    return s


def ew_keys(sim) -> set:
    return {k for k in sim.switch.flow_keys() if cookie_kind(k[1]) in (COOKIE_EW, COOKIE_HOSTMACS)}


def test_a_live_host_routes_east_west_while_a_network_of_the_router_has_a_port_here(sim):
    assert not ew_keys(sim)  # keys alone: no network of r1 here, nothing routed
    sim.plug(row(11, NET_A, 21))
    assert ew_keys(sim) and sim.switch.flow_keys() == sim.desired_keys()
    sim.plug(row(13, NET_C, 33))
    assert sim.switch.flow_keys() == sim.desired_keys()
    sim.unplug("tapvm11")
    assert ew_keys(sim)  # tenant-c still holds r1 here
    assert sim.switch.flow_keys() == sim.desired_keys()
    sim.unplug("tapvm13")
    assert not ew_keys(sim) and sim.switch.flow_keys() == sim.desired_keys()


def test_a_neighbour_change_touches_only_its_networks_flows(sim):
    sim.plug(row(11, NET_A, 21), row(13, NET_C, 33))
    before = sim.switch.flow_keys()
    nb = KEYS["ovsnat-nb-tenant-d"] + ",10.4.0.6=02:00:0a:04:00:06@hv2"
    sim.set_bridge_ids(**{**KEYS, "ovsnat-nb-tenant-d": nb})
    after = sim.switch.flow_keys()
    assert after == sim.desired_keys()
    added, removed = after - before, before - after
    assert len(added) == 1 and not removed
    assert all(cookie_kind(c) == COOKIE_EW for _, c in added)


def test_a_live_host_logs_a_bad_neighbour_once_and_keeps_the_others(sim, caplog):
    sim.plug(row(11, NET_A, 21))
    with caplog.at_level(logging.ERROR, logger="ovsnat"):
        bad = {**KEYS, "ovsnat-nb-tenant-d": KEYS["ovsnat-nb-tenant-d"] + ",oops"}
        sim.set_bridge_ids(**bad)
        sim.set_bridge_ids(**{**bad, "unrelated": "x"})
    lines = [r.getMessage() for r in caplog.records if "ovsnat-nb-tenant-d" in r.getMessage()]
    assert len(lines) == 1 and "'oops' is not <ip>=<mac>@<host>" in lines[0], lines
    assert sim.switch.flow_keys() == sim.desired_keys()
    assert any("reg7=0xa040005" in f.body() for f in sim.ctl.host.all_flows())


def test_routing_status_shows_east_west(sim):
    sim.plug(row(11, NET_A, 21))
    ew = sim.ctl.host.routing_status()["east_west"]
    assert ew["host"] == "hv1" and ew["routed_mac"] == "fa:16:3f:00:00:01"
    assert ew["networks"]["tenant-d"] == {"router": "r1", "local": False, "neighbours": 1}
    assert ew["networks"]["tenant-a"]["local"] and "tenant-b" not in ew["networks"]


def test_a_key_change_recompiles_only_the_east_west_owners_whose_inputs_changed():
    state = HostState(CFG)
    state.set_routing(parse_bridge(KEYS))
    for p in PORTS:
        state.update(p.name, p)
    delta, nets = state.set_routing(parse_bridge({**KEYS, "ovsnat-sgm-default": "10.1.0.12"}))
    assert not delta and not delta.owners and not nets  # a security group's key: nothing
    nb = KEYS["ovsnat-nb-tenant-d"] + ",10.4.0.6=02:00:0a:04:00:06@hv2"
    keys = {**KEYS, "ovsnat-nb-tenant-d": nb}
    delta, nets = state.set_routing(parse_bridge(keys))
    assert delta.owners == {("ew", "tenant-d")} and not nets
    delta, _ = state.set_routing(parse_bridge({**keys, "ovsnat-hostmac-hv3": "fa:16:3f:00:00:09"}))
    assert delta.owners == {eastwest.HOSTMACS}


@pytest.mark.parametrize(
    "definition,words",
    [
        ("vlan=-", "untagged, but the fabric's untagged segment is this host's default network"),
        ("vlan=4000", "VLAN 4000 is this host's handoff_vlan"),
    ],
)
def test_a_remote_network_is_held_to_what_the_host_reserves(definition, words):
    cfg = HostConfig.parse({**BASE, **FABRIC, "handoff_vlan": 4000})
    value = "router=r1;cidr=10.4.0.0/24;gw=10.4.0.1;" + definition
    keys = parse_bridge({**KEYS, "ovsnat-net-tenant-d": value})
    local = {"": cfg.default_network, **{p.network.name: p.network for p in PORTS}}
    got = eastwest.plan(cfg, keys, local)
    assert "tenant-d" not in got.dests and words in got.problems["tenant-d"], got.problems
    assert "tenant-c" in got.dests  # the router's other networks are untouched
