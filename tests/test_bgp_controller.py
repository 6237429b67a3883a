"""The host controller in bgp mode against a model switch (docs/bgp.md section 4): no uplink
to wait for, the routed ports from OVSDB, and the ToRs' select group, which follows the
next hops the kernel routes through (NextHops, from ovsnat.runtime.next_hops) and is put
on the switch before any flow that uses it. The switch model refuses, as OVS does, a flow
whose group is missing and a group_mod that does not fit what it holds."""

from __future__ import annotations

import logging
import struct

import netaddr

from ovsnat.cli.scenarios import SCENARIOS
from ovsnat.compile.groups import UPLINKS_GROUP
from ovsnat.core.effects import EchoesSeen, NextHops, OwnRoutes
from ovsnat.model.rows import IfaceRow
from ovsnat.openflow import codec
from tests.hostsim import SimHost, vm_row
from tests.switchmodel import ModelSwitch

BGP = SCENARIOS["bgp"][1]  # two /31 links: 10.254.1.1 -> ToR .0, 10.254.1.3 -> ToR .2
ROUTED_ROWS = [
    IfaceRow(n, p, {}, "up") for n, p in (("up0", 4), ("up1", 5), ("bgp0", 6), ("bgp1", 7))
]
TOR_A, TOR_B = (
    ("10.254.1.0", netaddr.EUI("02:aa:00:00:00:01")),
    (
        "10.254.1.2",
        netaddr.EUI("02:bb:00:00:00:02"),
    ),
)
FIP = "203.0.113.10"


def routed_host(
    switch: ModelSwitch | None = None, rows=ROUTED_ROWS, echoes: frozenset | None = frozenset()
) -> SimHost:
    """A host in bgp mode; `echoes`: the other hosts' /32s its kernel's first dump holds
    (None: not dumped yet)."""
    sim = SimHost(switch, **BGP)
    for row in rows:
        sim.rows[row.name] = row
    if echoes is not None:
        sim.answer(EchoesSeen(echoes))
    return sim.start()


def buckets(sim: SimHost) -> list[tuple[int, bytes]]:
    """(watch port, actions) of each bucket of the ToRs' group on the switch."""
    _, packed = sim.switch.groups[UPLINKS_GROUP]
    out, offset = [], 0
    while offset < len(packed):
        length, _weight, watch = struct.unpack_from("!HHI", packed, offset)
        out.append((watch, packed[offset + 16 : offset + length]))
        offset += length
    return out


def tors(sim: SimHost) -> dict[int, str]:
    """watch port -> the ToR MAC its bucket sends to."""
    macs = {TOR_A[1].packed: str(TOR_A[1]), TOR_B[1].packed: str(TOR_B[1])}
    return {w: next(m for k, m in macs.items() if k in a) for w, a in buckets(sim)}


def test_a_routed_host_is_programmed_without_an_uplink_and_the_group_follows_the_hops():
    sim = routed_host()
    sim.plug(vm_row(11, fip=FIP))
    assert sim.switch.flow_keys() == sim.desired_keys() and sim.ctl.stats.counts["of_errors"] == 0
    assert buckets(sim) == []  # no ToR known yet: leaving traffic is dropped
    assert sim.fip_live(FIP)  # live at plug in bgp mode (no segment to probe)
    assert sim.switch.packet_outs == []  # no GARP, no probe, no gateway ARP: no segment
    flow_mods = sim.switch.flow_mods
    sim.answer(NextHops((TOR_A, TOR_B)))
    assert tors(sim) == {4: str(TOR_A[1]), 5: str(TOR_B[1])}
    assert sim.switch.group_mods[-1] == (codec.OFPGC_MODIFY, UPLINKS_GROUP)
    assert sim.switch.flow_mods == flow_mods  # the group alone changed
    sim.answer(NextHops((TOR_B,)))  # BFD took ToR A's next hop away
    assert tors(sim) == {5: str(TOR_B[1])}
    mods = len(sim.switch.group_mods)
    sim.answer(NextHops((TOR_B,)))
    assert len(sim.switch.group_mods) == mods  # nothing new, nothing sent
    assert sim.switch.flow_keys() == sim.desired_keys()


def test_a_restarted_controller_keeps_the_group_until_it_hears_the_hops():
    first = routed_host(rows=[*ROUTED_ROWS, vm_row(11, fip=FIP)])
    first.answer(NextHops((TOR_A, TOR_B)))
    before, mods = dict(first.switch.groups), len(first.switch.group_mods)
    flow_mods = first.switch.flow_mods
    second = routed_host(first.switch, rows=[*ROUTED_ROWS, vm_row(11, fip=FIP)])
    assert second.switch.groups == before and len(second.switch.group_mods) == mods
    assert second.switch.flow_mods == flow_mods  # nothing at all was sent
    second.answer(NextHops((TOR_A, TOR_B)))  # as before: still nothing to send
    assert len(second.switch.group_mods) == mods
    second.answer(NextHops((TOR_A,)))  # a change after it heard them: followed
    assert tors(second) == {4: str(TOR_A[1])}


def test_no_next_hop_at_all_keeps_the_tors_last_used(caplog):
    """FRR stopped (zebra took its routes away): the group stays as it was, after a
    controller restart too, until a next hop is heard again; a ToR that leaves while the
    other stays is followed (the control)."""
    first = routed_host()
    first.answer(NextHops((TOR_A, TOR_B)))
    first.answer(NextHops(()))
    assert len(buckets(first)) == 2 and "no next hop in the kernel's routes" in caplog.text
    second = routed_host(first.switch)
    second.answer(NextHops(()))
    assert len(buckets(second)) == 2
    second.answer(NextHops((TOR_B,)))
    assert tors(second) == {5: str(TOR_B[1])}


def test_a_missing_routed_port_leaves_its_tor_unused_and_is_said_once(caplog):
    sim = routed_host(rows=[r for r in ROUTED_ROWS if r.name != "up1"])
    sim.answer(NextHops((TOR_A, TOR_B)))
    assert tors(sim) == {4: str(TOR_A[1])}
    said = [r.message for r in caplog.records if "routed uplink port up1" in r.message]
    assert len(said) == 1 and "not used" in said[0], said
    sim.plug(IfaceRow("up1", 5, {}, "up"))
    assert tors(sim) == {4: str(TOR_A[1]), 5: str(TOR_B[1])}


def test_tagged_external_keys_are_ignored_in_bgp_mode_with_one_line(caplog):
    sim = routed_host()
    sim.set_bridge_ids(**{"ovsnat-ext-net1": "vlan=100,cidr=198.51.100.0/24,gateway=198.51.100.1"})
    sim.set_bridge_ids(**{"ovsnat-ext-net1": "vlan=101,cidr=198.51.100.0/24,gateway=198.51.100.1"})
    assert sim.ctl.host.cfg.externals == ()
    said = [r.message for r in caplog.records if "not served in bgp mode" in r.message]
    assert len(said) == 1, said


def test_an_l2_host_never_touches_a_group():
    """Group 1 on an l2 host may be another controller's: ovsnat leaves every group alone."""
    switch = ModelSwitch()
    switch.groups = {UPLINKS_GROUP: (codec.OFPGT_SELECT, b""), 7: (codec.OFPGT_SELECT, b"")}
    sim = SimHost(switch).start()
    sim.plug(vm_row(11))
    assert set(switch.groups) == {UPLINKS_GROUP, 7} and switch.group_mods == []
    assert switch.flow_keys() == sim.desired_keys() and sim.ctl.stats.counts["of_errors"] == 0


def test_a_group_deleted_behind_ovsnats_back_is_added_at_the_next_change():
    """The modify is refused (OVS: unknown group); the session forgets what it believed,
    says so in status, and the next change adds the group again."""
    sim = routed_host()
    sim.answer(NextHops((TOR_A, TOR_B)))
    del sim.switch.groups[UPLINKS_GROUP]
    sim.answer(NextHops((TOR_A,)))
    assert sim.switch.group_mods[-1] == (codec.OFPGC_MODIFY, UPLINKS_GROUP)
    assert UPLINKS_GROUP not in sim.switch.groups
    assert list(sim.ctl.status(sim.now)["refused_groups"]) == [str(UPLINKS_GROUP)]
    sim.answer(NextHops((TOR_A,)))  # the same again: not sent again
    assert sim.switch.group_mods[-1] == (codec.OFPGC_MODIFY, UPLINKS_GROUP)
    sim.answer(NextHops((TOR_B,)))
    assert sim.switch.group_mods[-1] == (codec.OFPGC_ADD, UPLINKS_GROUP)
    assert tors(sim) == {5: str(TOR_B[1])}


def test_a_next_hop_change_recompiles_no_flow(caplog):
    """No flow uses a ToR's MAC: a change of the next hops (BFD's failover) costs the
    group_mod alone, whatever the number of VMs."""
    caplog.set_level(logging.INFO, logger="ovsnat")
    sim = routed_host(rows=[*ROUTED_ROWS, *(vm_row(n, fip=f"203.0.113.{n}") for n in (20, 21))])
    flow_mods = sim.switch.flow_mods
    sim.answer(NextHops((TOR_A, TOR_B)))
    assert sim.switch.flow_mods == flow_mods and len(buckets(sim)) == 2
    assert "recompiling" not in caplog.text
    sim.plug(IfaceRow("up1", 9, {}, "up"))  # positive control: a port change recompiles
    assert "recompiling" in caplog.text and tors(sim) == {4: str(TOR_A[1]), 9: str(TOR_B[1])}


def test_the_model_switch_refuses_a_flow_whose_group_is_missing_as_ovs_does():
    """The control of the tests above: without the group first, the bundle would fail."""
    sim = routed_host()
    assert sim.ctl.stats.counts["of_errors"] == 0
    del sim.switch.groups[UPLINKS_GROUP]
    sim.switch.entries.clear()
    sim.ctl.sw.session.groups[UPLINKS_GROUP] = 0  # the controller believes it is there
    sim.connect()  # a reconnect dumps again: the group is added, so still no error
    assert sim.ctl.stats.counts["of_errors"] == 0 and UPLINKS_GROUP in sim.switch.groups
    del sim.switch.groups[UPLINKS_GROUP]
    sim.switch.entries.clear()
    sim.ctl.sw.session.installed = set()  # the flows to send again, the group believed there
    sim.deliver(sim.ctl.sw.sync(sim.now))
    assert sim.ctl.stats.counts["of_errors"] > 0


# --- the announcements (ovsnat.core.announcing) ---------------------------------------------
LIVE = 100  # bgp_table's default: FRR announces what is in it


def fib(*addresses: str) -> set:
    return {(netaddr.IPNetwork(f"{a}/32"), LIVE) for a in addresses}


def test_the_host_announces_its_snat_and_each_fip_it_serves_and_withdraws_one_that_leaves():
    sim = routed_host()
    sim.plug(vm_row(11, fip=FIP), vm_row(12))
    assert sim.routes == []  # the kernel's tables not read yet: nothing is written
    sim.answer(OwnRoutes(frozenset()))
    assert sim.kernel_tables == fib("203.0.113.11", FIP)  # SNAT, and the live FIP
    assert len(sim.routes) == 1  # in one write
    sim.plug(vm_row(13, fip="203.0.113.12"))
    assert sim.kernel_tables == fib("203.0.113.11", FIP, "203.0.113.12")
    sim.unplug("tapvm11")
    assert sim.kernel_tables == fib("203.0.113.11", "203.0.113.12")
    assert sim.routes[-1].delete == tuple(fib(FIP)) and sim.routes[-1].add == ()


def test_a_restarted_controller_writes_nothing_when_the_kernel_holds_what_it_wants():
    first = routed_host()
    first.plug(vm_row(11, fip=FIP))
    first.answer(OwnRoutes(frozenset()))
    held = first.kernel_tables
    assert held == fib("203.0.113.11", FIP)  # positive control: the first one wrote
    second = SimHost(first.switch, **BGP)  # a new controller, the same switch and rows
    second.rows.update({r.name: r for r in [*ROUTED_ROWS, vm_row(11, fip=FIP)]})
    second.answer(OwnRoutes(frozenset(held)))  # the runtime's dump, before OVSDB's view
    second.start()
    second.answer(NextHops((TOR_A, TOR_B)))
    assert second.routes == []  # nothing withdrawn, nothing added: no UPDATE


def test_a_route_left_by_a_fip_that_is_gone_is_withdrawn_after_a_restart():
    sim = routed_host()
    stale = fib("203.0.113.99")
    sim.answer(OwnRoutes(frozenset(stale | fib("203.0.113.11"))))
    assert [r.delete for r in sim.routes] == [tuple(stale)] and sim.routes[0].add == ()


def test_nothing_is_withdrawn_while_the_switch_is_away():
    sim = routed_host()
    sim.plug(vm_row(11, fip=FIP))
    sim.answer(OwnRoutes(frozenset()))
    writes = len(sim.routes)
    sim.deliver(sim.ctl.switch_down(sim.now))
    sim.answer(OwnRoutes(frozenset(sim.kernel_tables)))  # the watch dumped again
    assert len(sim.routes) == writes
    sim.connect()  # back: the flows are known again, and nothing changed
    assert len(sim.routes) == writes
