"""Several external networks decided without a switch (ovsnat.model.externals, docs/routers.md
item 3): which `ovsnat-ext-*` keys a host takes, what a router on a network without a key
gets, and the controller's side of a tagged network (its gateway asked for and learned in
its VLAN, a FIP announced in its VLAN, ARP from a VLAN that is no network of the host
refused). With real packets: tests/test_externals_lab.py."""

from __future__ import annotations

from dataclasses import replace

import netaddr
import pytest

from ovsnat.cli import golden
from ovsnat.model import HostConfig, routing
from ovsnat.model.externals import parse_externals, served_ids
from ovsnat.packets import arp, vlan
from tests.hostsim import SimHost, vm_row

CFG = HostConfig.parse({**golden.BASE})
PUBLIC = "vlan=-;cidr=203.0.113.0/24;gw=203.0.113.1;snat=203.0.113.11"
PUB2 = "vlan=200;cidr=198.51.100.128/25;gw=198.51.100.129;snat=198.51.100.140"
KEYS = {"ovsnat-ext-public": PUBLIC, "ovsnat-ext-pub2": PUB2}
ROUTER_R2 = "ext=pub2;snat=on"


def test_good_keys_give_the_untagged_and_the_tagged_networks():
    externals, problems = parse_externals(KEYS, CFG)
    assert not problems
    assert [(e.id, e.vlan) for e in externals] == [("pub2", 200), ("public", None)]
    cfg = replace(CFG, externals=externals)
    assert cfg.external_vlan("pub2") == 200 and cfg.external_vlan("public") == 0
    assert cfg.external_for(netaddr.IPAddress("198.51.100.142")).id == "pub2"
    assert cfg.external_for(netaddr.IPAddress("203.0.113.42")) is None  # untagged


@pytest.mark.parametrize(
    "key, value, why",
    [
        ("ovsnat-ext-pub3", "vlan=200;cidr=198.51.100.0/26;gw=198.51.100.1;snat=198.51.100.2",
         "already ovsnat-ext-pub2's"),
        ("ovsnat-ext-pub3", "vlan=300;cidr=198.51.100.192/26;gw=198.51.100.193;snat=198.51.100.194",
         "overlaps ovsnat-ext-pub2"),
        ("ovsnat-ext-pub3", "vlan=300;cidr=203.0.113.128/25;gw=203.0.113.129;snat=203.0.113.130",
         "overlaps external_cidr"),
        ("ovsnat-ext-pub3", "vlan=300;cidr=10.0.0.0/25;gw=10.0.0.1;snat=10.0.0.2",
         "overlaps internal_cidr"),
        ("ovsnat-ext-pub3", "vlan=4095;cidr=198.51.100.0/26;gw=198.51.100.1;snat=198.51.100.2",
         "is not a VLAN"),
        ("ovsnat-ext-pub3", "vlan=300;cidr=198.51.100.0/26;gw=198.51.100.1;snat=198.51.100.1",
         "is the gateway's address"),
        ("ovsnat-ext-pub3", "vlan=300;cidr=198.51.100.0/26;gw=198.51.100.1;snat=198.51.100.63",
         "not a host address"),
        ("ovsnat-ext-pub3", "vlan=300;cidr=198.51.100.0/26;gw=198.51.100.1", "has no snat="),
        ("ovsnat-ext-pub3", "vlan=-;cidr=203.0.113.0/24;gw=203.0.113.1;snat=203.0.113.12",
         "is the options'"),
        ("ovsnat-ext-a b", PUB2.replace("200", "300"), "is not a network id"),
    ],
)  # fmt: skip
def test_a_bad_key_drops_that_network_alone_and_says_why(key, value, why):
    externals, problems = parse_externals({**KEYS, key: value}, CFG)
    assert [e.id for e in externals] == ["pub2", "public"]
    assert list(problems) == [key] and why in problems[key], problems
    assert "routers on it get no PAT and no FIP" in problems[key]


def test_routers_on_a_network_without_a_good_key_get_no_pat_and_no_fip():
    ids = {
        **KEYS,
        "ovsnat-net-a": "router=r1",
        "ovsnat-net-b": "router=r2",
        "ovsnat-router-r1": "ext=pub2;snat=on",
        "ovsnat-router-r2": "ext=pub9;snat=on",
    }
    externals = parse_externals(ids, CFG)[0]
    keys = routing.parse_bridge(ids, served_ids(ids, externals))
    assert keys.of("a").pat and keys.of("a").external == "pub2"
    assert keys.of("b").routed and not keys.of("b").fips  # still a router: east-west
    assert "no good key ovsnat-ext-pub9" in keys.problems["ovsnat-router-r2"]
    # Without any ovsnat-ext-* key, every gateway is the options' network, as before.
    plain = {k: v for k, v in ids.items() if not k.startswith("ovsnat-ext-")}
    assert served_ids(plain, ()) is None
    assert routing.parse_bridge(plain, None).of("b").pat


def test_vlan_tags_round_trip_and_short_frames_are_left_alone():
    frame = arp.build(arp.REQUEST, "02:00:00:00:00:01", "198.51.100.140", "198.51.100.129")
    tagged = vlan.tag(frame, 200)
    assert len(tagged) == len(frame) + 4 and vlan.untag(tagged) == (200, frame)
    assert vlan.untag(frame) == (None, frame) and vlan.tag(frame, None) == frame
    assert vlan.untag(tagged[:17]) == (None, tagged[:17])


def tagged_host() -> SimHost:
    host = SimHost(fip_activation="immediate").start()
    host.set_bridge_ids(**KEYS)
    return host


def uplink_frames(host) -> list[tuple[int | None, arp.Arp]]:
    return [
        (vid, a)
        for port, frame in host.switch.packet_outs
        if port == 1
        for vid, inner in [vlan.untag(frame)]
        for a in [arp.parse(inner)]
        if a is not None
    ]


def test_the_tagged_gateway_is_asked_for_in_its_vlan_and_learned_from_its_answer():
    host = tagged_host()
    host.advance(1.5)
    asks = [a for vid, a in uplink_frames(host) if vid == 200]
    assert asks and all(a.spa == "198.51.100.140" and a.tpa == "198.51.100.129" for a in asks)
    gw = "02:00:00:00:c8:fe"
    reply = arp.build(arp.REPLY, gw, "198.51.100.129", "198.51.100.140")
    host.from_uplink(vlan.tag(reply, 200), table=0)
    [pub2] = host.ctl.host.cfg.tagged
    assert pub2.gateway_mac == netaddr.EUI(gw)
    assert host.ctl.status(host.now)["routing"]["externals"]["pub2"]["gateway_mac"] == gw
    assert host.switch.flow_keys() == host.desired_keys()  # the leaving flow, and the rest
    # The same address answering untagged is not the tagged network's gateway.
    other = arp.build(arp.REPLY, "02:00:00:00:00:99", "198.51.100.129", "198.51.100.140")
    host.from_uplink(other, table=0)
    assert host.ctl.host.cfg.tagged[0].gateway_mac == netaddr.EUI(gw)


def test_a_fip_of_a_tagged_network_is_announced_in_its_vlan():
    host = tagged_host()
    host.set_bridge_ids(**KEYS, **{"ovsnat-net-t": "router=r2", "ovsnat-router-r2": ROUTER_R2})
    net = {
        "ovsnat-network": "t",
        "ovsnat-cidr": "10.5.0.0/24",
        "ovsnat-gateway": "10.5.0.1",
        "ovsnat-fixed-ip": "10.5.0.5",
        "ovsnat-vlan": "105",
    }
    host.plug(vm_row(5, "198.51.100.142", **net))
    host.advance(2.0)
    assert host.fip_live("198.51.100.142")
    garps = [(vid, a) for vid, a in uplink_frames(host) if a.spa == "198.51.100.142"]
    assert garps and all(vid == 200 for vid, _ in garps), garps


def test_an_arp_from_a_vlan_that_is_no_network_here_is_dropped_and_counted():
    host = tagged_host()
    host.advance(0.5)  # the positive control below: the same answer in VLAN 200 is taken
    reply = arp.build(arp.REPLY, "02:00:00:00:c8:fe", "198.51.100.129", "198.51.100.140")
    host.from_uplink(vlan.tag(reply, 300), table=0)
    assert host.ctl.status(host.now)["packet_in_drops"]["unknown_vlan"] == 1
    assert host.ctl.host.cfg.tagged[0].gateway_mac is None
    host.from_uplink(vlan.tag(reply, 200), table=0)
    assert host.ctl.host.cfg.tagged[0].gateway_mac is not None


def test_a_new_external_network_set_reaches_the_switch_with_the_routing_it_brings():
    """Removing a network's key changes the host config and, through it, the routing of
    the routers naming it: one atomic bundle for both, so no moment has the router's
    networks committing new connections to the untagged SNAT address."""
    host = tagged_host()
    keys = {**KEYS, "ovsnat-net-t": "router=r2", "ovsnat-router-r2": ROUTER_R2}
    host.set_bridge_ids(**keys)
    net = {
        "ovsnat-network": "t",
        "ovsnat-cidr": "10.5.0.0/24",
        "ovsnat-gateway": "10.5.0.1",
        "ovsnat-fixed-ip": "10.5.0.6",
        "ovsnat-vlan": "105",
    }
    host.plug(vm_row(6, **net))
    host.advance(1.0)
    commits = []
    commit = host.switch._commit
    host.switch._commit = lambda xid, msgs: commits.append(len(msgs)) or commit(xid, msgs)
    host.set_bridge_ids(**{k: v for k, v in keys.items() if k != "ovsnat-ext-pub2"})
    assert len(commits) == 1, commits
    assert "ovsnat-router-r2" in host.ctl.host.routing.problems  # no PAT, no FIP: said
    assert not host.ctl.host.route(host.ctl.host.nets["t"]).pat
    assert host.switch.flow_keys() == host.desired_keys()
