"""Security groups in the controller, without a switch: the keys parsed, profiles shared,
remote groups as conjunctions (flows grow as rules + members), changes touching only what
they change, bad keys failing closed, and the status and counters an operator reads.
The datapath itself: tests/test_security_groups_datapath.py."""

from __future__ import annotations

from dataclasses import replace

import netaddr
import pytest

from ovsnat.cli import golden
from ovsnat.compile import sg_flows
from ovsnat.compile.actions import Output
from ovsnat.compile.compiler import compile_state
from ovsnat.compile.pipeline import FABRIC_IN, SG_IN, SG_OUT, UPLINK_ARP, VM_L2
from ovsnat.compile.sg_owners import SecurityOwners
from ovsnat.model import HostConfig, PortError, VmPort
from ovsnat.model.parse import ConfigError
from ovsnat.model.secgroups import (
    PortSecurity,
    parse_bridge,
    parse_group,
    parse_port,
    port_ranges,
    zone_problem,
)
from tests.hostsim import SimHost, vm_row

DEFAULT = "d-in,in,4,any,-,g:default;d-out,out,4,any,-,-"


def members(n: int, base: int = 100) -> str:
    return ",".join(f"10.0.{(base + i) // 250}.{(base + i) % 250 + 2}" for i in range(n))


def filtered(n: int, groups: str = "default", **keys) -> VmPort:
    return golden.port(n, ovsnat_sg=groups, **keys)


def flows_of(ports, bridge: dict) -> list:
    state = replace(
        golden.build_state(HostConfig.parse(golden.BASE), ports), security=parse_bridge(bridge)
    )
    return compile_state(state)


def sg_rule_flows(flows) -> int:
    return sum(1 for f in flows if f.table in (SG_IN, SG_OUT) and f.cookie >> 56 != 0xA1)


# --- keys ------------------------------------------------------------------------------------
def test_a_rule_of_each_kind_is_read_and_ipv6_is_kept_but_not_applied():
    g = parse_group(
        "web",
        "a,in,4,tcp,80-81,p:198.51.100.0/24;b,in,4,icmp,8/0,-;c,out,4,132,-,-;"
        "d,in,6,tcp,22,-;e,in,4,udp,53,g:dns;f,in,4,47,5,-",
    )
    by_id = {r.id: r for r in g.rules}
    assert (by_id["a"].proto, by_id["a"].lo, by_id["a"].hi) == (6, 80, 81)
    assert (by_id["b"].proto, by_id["b"].lo, by_id["b"].hi) == (1, 8, 0)
    assert by_id["c"].proto == 132 and by_id["c"].applied
    assert not by_id["d"].applied and "IPv6" in by_id["d"].not_applied
    assert by_id["e"].remote_group == "dns"
    assert not by_id["f"].applied  # ports on a protocol without ports: reported


@pytest.mark.parametrize(
    "text, word",
    [
        ("a,up,4,tcp,22,-", "direction"),
        ("a,in,4,tcp,22-21,-", "port range"),
        ("a,in,4,tcp,70000,-", "port range"),
        ("a,in,4,bogus,-,-", "protocol"),
        ("a,in,4,tcp,22,p:10.0.0.0/33", "CIDRs"),
        ("a,in,4,tcp,22", "fields"),
        ("a,in,4,icmp,8/x,-", "ICMP"),
    ],
)
def test_a_bad_rule_is_refused_with_the_key_and_the_value(text, word):
    with pytest.raises(ConfigError, match=word) as e:
        parse_group("g1", text)
    assert "ovsnat-sg-g1" in str(e.value)


def test_a_port_key_that_makes_no_sense_refuses_that_port_alone():
    with pytest.raises(PortError, match="ovsnat-port-security"):
        parse_port("port 'tap1'", {"ovsnat-port-security": "maybe"})
    with pytest.raises(PortError, match="ovsnat-allowed-pairs"):
        parse_port("port 'tap1'", {"ovsnat-allowed-pairs": "10.0.0.300"})
    assert parse_port("p", {}) == PortSecurity()  # no key: not filtered, as before
    assert parse_port("p", {"ovsnat-sg": ""}).groups == ()  # filtered, no group: nothing


def test_port_ranges_are_covered_exactly_by_masked_blocks():
    for lo, hi in [(1, 65535), (8000, 8099), (22, 22), (1024, 2047), (3, 9)]:
        covered = set()
        for v, m in port_ranges(lo, hi):
            covered |= {p for p in range(65536) if p & m == v}
        assert covered == set(range(lo, hi + 1)), (lo, hi)


def test_a_filtered_port_whose_zone_is_taken_is_refused():
    cfg = HostConfig.parse({**golden.BASE, "conn_limit": 10})
    assert zone_problem(cfg, 5) is None
    assert "conn_limit" in zone_problem(cfg, 20000 - 4096 + 1)
    assert "16-bit" in zone_problem(HostConfig.parse(golden.BASE), 62000)


# --- flows -----------------------------------------------------------------------------------
def test_ports_with_the_same_groups_share_one_profile():
    one = flows_of([filtered(11)], {"ovsnat-sg-default": DEFAULT})
    two = flows_of([filtered(11), filtered(12)], {"ovsnat-sg-default": DEFAULT})
    profile = [f for f in two if f.cookie >> 56 == 0xA8]
    assert profile and profile == [f for f in one if f.cookie >> 56 == 0xA8]


def test_flows_grow_as_rules_plus_members_never_rules_times_members():
    def count(rules: int, n_members: int) -> int:
        body = ";".join(f"r{i},in,4,tcp,{1000 + i},g:big" for i in range(rules))
        bridge = {"ovsnat-sg-web": body, "ovsnat-sgm-big": members(n_members)}
        return sg_rule_flows(flows_of([filtered(11, "web")], bridge))

    base = count(10, 100)
    assert count(10, 200) - base == 100  # one flow per member
    assert count(20, 100) - base == 10  # one flow per rule
    assert count(20, 200) - base == 110


def test_a_malformed_group_fails_its_ports_closed_and_others_keep_their_rules():
    bridge = {"ovsnat-sg-default": DEFAULT, "ovsnat-sg-bad": "x,in,4,tcp,99999,-"}
    flows = flows_of([filtered(11, "default,bad"), filtered(12)], bridge)
    closed = sg_flows.profile_id(("bad", "default"))
    assert not [f for f in flows if f.match.get("reg9") == f"{closed:#x}"]
    fine = sg_flows.profile_id(("default",))
    assert [f for f in flows if f.match.get("reg9") == f"{fine:#x}"]


def test_a_member_change_touches_that_members_flows_alone():
    sec = parse_bridge({"ovsnat-sg-default": DEFAULT, "ovsnat-sgm-default": members(50)})
    owners = SecurityOwners(sec)
    owners.use("tap11", ("default",), 4107, "10.0.0.11")
    more = dict({"ovsnat-sg-default": DEFAULT}, **{"ovsnat-sgm-default": members(50) + ",10.9.9.9"})
    assert owners.set_security(parse_bridge(more)) == [("sgm", "10.9.9.9")]


def test_a_rule_change_recompiles_the_profiles_using_its_group_alone():
    bridge = {"ovsnat-sg-default": DEFAULT, "ovsnat-sg-web": "w,in,4,tcp,80,-"}
    owners = SecurityOwners(parse_bridge(bridge))
    owners.use("tap11", ("default",), 4107, "10.0.0.11")
    owners.use("tap12", ("web",), 4108, "10.0.0.12")
    touched = owners.set_security(parse_bridge({**bridge, "ovsnat-sg-web": "w,in,4,tcp,81,-"}))
    assert touched == [("sgp", sg_flows.profile_id(("web",)))]


def test_a_port_that_leaves_has_its_zone_flushed_and_a_rule_change_flushes_nothing():
    owners = SecurityOwners(parse_bridge({"ovsnat-sg-default": DEFAULT}))
    owners.use("tap11", ("default",), 4107, "10.0.0.11")
    owners.set_security(parse_bridge({"ovsnat-sg-default": "d-out,out,4,any,-,-"}))
    assert owners.take_flushes() == []  # the datapath marks what no rule allows (dead)
    owners.use("tap11", None)
    assert owners.take_flushes() == [(4107, "")]


# --- the controller --------------------------------------------------------------------------
def test_the_bridge_keys_reach_the_flows_and_the_status_without_touching_other_ports():
    sim = SimHost().start()
    sim.plug(vm_row(11, **{"ovsnat-sg": "default"}), vm_row(12))
    sim.set_bridge_ids(**{"ovsnat-sg-default": DEFAULT})
    status = sim.ctl.status(sim.now)["security_groups"]
    assert status["filtered_ports"] == 1
    assert status["groups"]["default"]["ports"] == 1
    before = sim.switch.flow_mods
    sim.set_bridge_ids(**{"ovsnat-sg-default": DEFAULT + ";x,in,6,tcp,22,-"})
    assert sim.switch.flow_mods == before  # an IPv6 rule changes no flow...
    status = sim.ctl.status(sim.now)["security_groups"]
    assert status["groups"]["default"]["not_applied"][0]["rule"] == "x"  # ...and says so
    sim.set_bridge_ids(**{"ovsnat-sg-default": DEFAULT + ";s,in,4,tcp,22,-"})
    assert 0 < sim.switch.flow_mods - before <= 2  # the new rule's flows


def test_a_malformed_group_is_logged_once_with_its_key_and_value(caplog):
    sim = SimHost().start()
    sim.plug(vm_row(11, **{"ovsnat-sg": "bad"}))
    sim.set_bridge_ids(**{"ovsnat-sg-bad": "x,in,4,tcp,99999,-"})
    sim.set_bridge_ids(**{"ovsnat-sg-bad": "x,in,4,tcp,99999,-", "unrelated": "1"})
    lines = [r.getMessage() for r in caplog.records if "ovsnat-sg-bad" in r.getMessage()]
    assert len(lines) == 1 and "99999" in lines[0], lines
    assert "ovsnat-sg-bad" in sim.ctl.status(sim.now)["security_groups"]["groups"]["bad"]["error"]


def test_an_unplugged_filtered_port_has_its_zone_flushed():
    sim = SimHost().start()
    sim.plug(vm_row(11, **{"ovsnat-sg": "default"}))
    sim.unplug("tapvm11")
    assert sim.flushes == [(4096 + 11, "")]


# --- VIPs ------------------------------------------------------------------------------------
def test_a_vip_is_held_by_the_port_that_speaks_from_it_until_another_does():
    from ovsnat.core.vips import ELSEWHERE, HELD, UNKNOWN, Vips

    v = Vips()
    v.track("a", "net", ("10.0.0.100",))
    v.track("b", "net", ("10.0.0.100",))
    assert v.state("a", "net", "10.0.0.100") == UNKNOWN
    assert v.seen("a", "net", "10.0.0.100") == {"a", "b"}
    assert v.seen("a", "net", "10.0.0.100") == set()  # nothing new: nothing recompiled
    assert (v.state("a", "net", "10.0.0.100"), v.state("b", "net", "10.0.0.100")) == (
        HELD,
        ELSEWHERE,
    )
    assert v.seen("c", "net", "10.0.0.100") == set()  # c has no such pair: ignored
    assert v.elsewhere("10.0.0.100") == {"a", "b"}  # another host's VM has it now
    assert v.state("a", "net", "10.0.0.100") == ELSEWHERE
    v.seen("b", "net", "10.0.0.100")
    assert v.forget("b") == {"a"}  # the holder gone: nobody holds it here
    assert v.state("a", "net", "10.0.0.100") == UNKNOWN


def test_a_vip_announced_by_a_port_moves_its_delivery_and_tells_the_network():
    from ovsnat.packets import arp

    pair = {"ovsnat-allowed-pairs": "10.0.0.100"}
    sim = SimHost().start()
    sim.plug(vm_row(11, **pair), vm_row(12, **pair), vm_row(13))
    garp = arp.garp("02:00:0a:00:00:0c", "10.0.0.100")
    sim.from_vm(12, garp)
    assert sim.ctl.host.vips.state("tapvm12", "", "10.0.0.100") == "held"
    told = {port for port, frame in sim.switch.packet_outs if frame == garp}
    assert told == {11, 13}  # every other local VM of the network hears it


def test_a_filtered_row_without_its_device_yet_is_ready_for_a_live_migration():
    """A live migration's destination holds os-vif's row before the guest's tap exists:
    its keys are judged without an ofport, and a filtered port's zone is judged when the
    device appears (found with Nova: a zone judged on no ofport refused every filtered
    destination, and Nova waited for network-vif-plugged in vain)."""
    sim = SimHost().start()
    sim.plug(vm_row(11, ofport=-1, **{"ovsnat-sg": "default"}))
    ready = [w for w in sim.key_writes if dict(w.set).get("ovsnat-ready") == "true"]
    assert [w.name for w in ready] == ["tapvm11"]


VIP_KEYS = {"ovsnat-allowed-pairs": "10.0.0.100", "ovsnat-pair-fips": "10.0.0.100=203.0.113.30"}


def vip_host():
    from ovsnat.model.rows import IfaceRow

    sim = SimHost(fabric_port="fabric")
    sim.rows["fabric"] = IfaceRow("fabric", 2, {}, "up")
    sim.start()
    sim.plug(vm_row(11, **VIP_KEYS), vm_row(12, **VIP_KEYS), vm_row(13))
    return sim


def test_two_local_ports_with_one_vip_share_its_flows_and_want_none_twice(caplog):
    """keepalived's pair on one host: the VIP's fabric ARP copy and its FIP's uplink guard
    are the address's own flows, once, not each port's (two owners wanting one flow would be
    an operator-facing error for a normal configuration), and so is its delivery while
    nobody has spoken from it."""
    sim = vip_host()
    host = sim.ctl.host
    shared = host.owner_flows(("vip", int(netaddr.IPAddress("10.0.0.100"))))
    assert {(f.table, f.priority) for f in shared} == {
        (FABRIC_IN, 210),
        (UPLINK_ARP, 250),
        (VM_L2, 90),  # nobody spoke from it yet: the first port by name gets it
    }
    assert [f.actions[-1] for f in shared if f.table == VM_L2] == [Output(11)]
    assert host.idents.status() == []
    assert "both want the flow" not in caplog.text
    sim.unplug("tapvm11")
    sim.unplug("tapvm12")
    assert host.owner_flows(("vip", int(netaddr.IPAddress("10.0.0.100")))) == []


def test_the_host_a_vip_left_never_answers_its_fips_announcement_from_the_new_host():
    """The FIP's own ARP from the uplink (another host announcing it) is dropped above the
    FIP's responder: an answer, sourced from the FIP's MAC, pulled the external switch back
    to the host the VIP had just left (the VIP failover flake, under load)."""
    from ovsnat.packets import arp

    sim = vip_host()
    sim.from_vm(11, arp.garp("02:00:0a:00:00:0b", "10.0.0.100"))
    flows = sim.ctl.host.all_flows()
    responder = [
        f
        for f in flows
        if f.table == UPLINK_ARP and f.match.get("arp_tpa") == "203.0.113.30" and f.actions
    ]
    guard = [f for f in flows if f.table == UPLINK_ARP and f.match.get("arp_spa") == "203.0.113.30"]
    assert responder, "the holder answers ARP for the VIP's FIP"
    assert [(f.priority, f.actions) for f in guard] == [(250, ())]
    assert guard[0].priority > responder[0].priority


def test_a_vips_fip_is_announced_three_times_while_the_port_holds_it():
    from ovsnat.packets import arp

    def garps() -> int:
        return sum(a.spa == a.tpa == "203.0.113.30" for a in sim.arps_out())

    sim = vip_host()
    sim.from_vm(11, arp.garp("02:00:0a:00:00:0b", "10.0.0.100"))
    sim.advance(2)
    assert garps() == 3  # 0, 0.5 and 1.5 s, as a FIP's
    sim.from_vm(12, arp.garp("02:00:0a:00:00:0c", "10.0.0.100"))
    sim.advance(0.1)
    other_host = arp.garp("02:00:0a:00:00:0d", "10.0.0.100")  # over the fabric
    sim.deliver(sim.ctl.packet_in(2, FABRIC_IN, other_host, sim.now))
    sim.advance(2)
    assert garps() == 4  # b took it (one GARP), then another host did: b's later ones stay
