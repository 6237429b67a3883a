"""bgp mode's presence check against a model switch (docs/bgp.md, section 2): the other
hosts' /32s as the ToRs pass them back (EchoesSeen) decide whether a FIP plugged here goes
live at once or waits for its VM's first frame, and a FIP that comes with its VM is
announced MOVED (table 101) for the hold. Also a VIP's FIP, announced by the host whose port
holds the VIP. The runtime side (which routes are echoes, when they are posted) is in
tests/test_next_hops.py; the same with real FRR in tests/test_bgp_migration_lab.py."""

from __future__ import annotations

import netaddr

from ovsnat.core.effects import EchoesSeen, OwnRoutes
from ovsnat.model.rows import IfaceRow
from tests.hostsim import SimHost, vm_row
from tests.test_bgp_controller import BGP, FIP, LIVE, ROUTED_ROWS, fib, routed_host

MOVED = LIVE + 1


def from_the_vm(sim: SimHost, n: int) -> None:
    """A frame from VM n (QEMU's RARP on the destination, or any first packet)."""
    mac = bytes.fromhex(f"02000a0000{n:02x}")
    sim.from_vm(n, b"\xff" * 6 + mac + b"\x80\x35" + bytes(28))


def test_a_fip_waits_for_the_first_echo_set_and_goes_live_when_no_other_host_has_it():
    sim = routed_host(echoes=None)
    sim.answer(OwnRoutes(frozenset()))
    sim.plug(vm_row(11, fip=FIP))
    assert not sim.fip_live(FIP) and sim.kernel_tables == fib("203.0.113.11")
    sim.answer(EchoesSeen(frozenset({"203.0.113.99"})))  # another host's FIP, not ours
    assert sim.fip_live(FIP) and sim.kernel_tables == fib("203.0.113.11", FIP)


def test_a_migrating_vms_fip_is_held_until_its_first_frame_then_announced_moved():
    """The source still announces the FIP (its echo is here): the destination waits for
    the VM, then announces it MOVED (the ToRs prefer that), and LIVE after the hold."""
    sim = routed_host(echoes=frozenset({FIP}))
    sim.answer(OwnRoutes(frozenset()))
    sim.plug(vm_row(11, fip=FIP), vm_row(12, fip="203.0.113.12"))
    assert not sim.fip_live(FIP) and sim.fip_live("203.0.113.12")  # the control
    assert sim.kernel_tables == fib("203.0.113.11", "203.0.113.12")
    assert sim.ctl.status(sim.now)["waiting"]["tapvm11"]["state"] == "held"
    sim.advance(5.0)
    assert not sim.fip_live(FIP)  # held as long as the VM is silent here
    from_the_vm(sim, 11)
    assert sim.fip_live(FIP)
    moved = {(netaddr.IPNetwork(f"{FIP}/32"), MOVED)}
    assert sim.kernel_tables == fib("203.0.113.11", "203.0.113.12") | moved
    sim.answer(EchoesSeen(frozenset()))  # the source withdrew: nothing changes here
    assert sim.kernel_tables == fib("203.0.113.11", "203.0.113.12") | moved
    sim.advance(61.0)  # bgp_moved_hold (60 s): LIVE, so the next migration's MOVED wins
    assert sim.kernel_tables == fib("203.0.113.11", "203.0.113.12", FIP)


def test_a_held_fip_goes_live_when_the_other_host_withdraws_for_good():
    """The echo gone for ECHO_GONE (2 s): the other host let go. Gone for less, as while
    this host's FRR comes back and the ToRs' routes follow their default: still HELD."""
    sim = routed_host(echoes=frozenset({FIP}))
    sim.answer(OwnRoutes(frozenset()))
    sim.plug(vm_row(11, fip=FIP))
    assert not sim.fip_live(FIP)
    sim.answer(EchoesSeen(frozenset()))  # a partial set: the default came first
    sim.advance(0.2)
    sim.answer(EchoesSeen(frozenset({FIP})))  # and the echo after it
    sim.advance(5.0)
    assert not sim.fip_live(FIP) and sim.kernel_tables == fib("203.0.113.11")
    sim.answer(EchoesSeen(frozenset({"203.0.113.99"})))  # the other host withdrew
    sim.advance(1.9)
    assert not sim.fip_live(FIP)
    sim.advance(0.2)
    assert sim.fip_live(FIP) and sim.kernel_tables == fib("203.0.113.11", FIP)  # LIVE


def test_a_restart_within_the_hold_keeps_the_moved_route_and_writes_nothing():
    first = routed_host(echoes=frozenset({FIP}))
    first.answer(OwnRoutes(frozenset()))
    first.plug(vm_row(11, fip=FIP))
    from_the_vm(first, 11)
    held = first.kernel_tables
    assert (netaddr.IPNetwork(f"{FIP}/32"), MOVED) in held  # positive control
    second = SimHost(first.switch, **BGP)
    second.kernel_tables = set(held)
    second.rows.update({r.name: r for r in [*ROUTED_ROWS, vm_row(11, fip=FIP)]})
    second.answer(EchoesSeen(frozenset()))  # the source has withdrawn by now
    second.start()
    second.answer(OwnRoutes(frozenset(held)))
    assert second.routes == []
    second.advance(61.0)
    assert second.kernel_tables == fib("203.0.113.11", FIP)  # the hold still ends


def test_a_vips_fip_is_announced_while_a_local_port_holds_the_vip():
    """keepalived's VIP with a FIP (an allowed pair's): announced from the host whose port
    spoke from it last, and withdrawn when another host's VM takes it over the fabric."""
    from ovsnat.compile.tables import FABRIC_IN
    from ovsnat.packets import arp

    pair = {"ovsnat-allowed-pairs": "10.0.0.100", "ovsnat-pair-fips": "10.0.0.100=203.0.113.30"}
    sim = SimHost(None, **BGP, fabric_port="fabric")
    for row in [*ROUTED_ROWS, IfaceRow("fabric", 2, {}, "up")]:
        sim.rows[row.name] = row
    sim.answer(EchoesSeen(frozenset()))
    sim.start()
    sim.answer(OwnRoutes(frozenset()))
    sim.plug(vm_row(11, **pair), vm_row(12, **pair))
    assert sim.kernel_tables == fib("203.0.113.11")  # nobody has spoken from the VIP yet
    sim.from_vm(11, arp.garp("02:00:0a:00:00:0b", "10.0.0.100"))
    assert sim.kernel_tables == fib("203.0.113.11", "203.0.113.30")
    sim.from_vm(12, arp.garp("02:00:0a:00:00:0c", "10.0.0.100"))  # the other port here
    assert sim.kernel_tables == fib("203.0.113.11", "203.0.113.30")
    other_host = arp.garp("02:00:0a:00:00:0d", "10.0.0.100")
    sim.deliver(sim.ctl.packet_in(2, FABRIC_IN, other_host, sim.now))
    assert sim.kernel_tables == fib("203.0.113.11")


def test_a_restart_while_held_keeps_the_fip_held():
    """The destination's controller restarts while the guest still runs on the source:
    the VM counts as here only once it speaks; the source keeps the route meanwhile."""
    first = routed_host(echoes=frozenset({FIP}))
    first.answer(OwnRoutes(frozenset()))
    first.plug(vm_row(11, fip=FIP), vm_row(12, fip="203.0.113.12"))
    assert not first.fip_live(FIP)
    second = SimHost(first.switch, **BGP)
    second.kernel_tables = set(first.kernel_tables)
    second.rows.update(
        {r.name: r for r in [*ROUTED_ROWS, vm_row(11, fip=FIP), vm_row(12, fip="203.0.113.12")]}
    )
    second.answer(EchoesSeen(frozenset({FIP})))
    second.start()
    second.answer(OwnRoutes(frozenset(second.kernel_tables)))
    assert not second.fip_live(FIP) and second.fip_live("203.0.113.12")  # and the control
    assert second.routes == []
    from_the_vm(second, 11)
    assert (netaddr.IPNetwork(f"{FIP}/32"), MOVED) in second.kernel_tables


def test_a_held_port_unplugged_or_given_another_fip_leaves_nothing_behind():
    sim = routed_host(echoes=frozenset({FIP, "203.0.113.40"}))
    sim.answer(OwnRoutes(frozenset()))
    sim.plug(vm_row(11, fip=FIP), vm_row(12, fip="203.0.113.40"))
    assert sim.ctl.status(sim.now)["waiting"].keys() == {"tapvm11", "tapvm12"}
    sim.plug(vm_row(11, fip="203.0.113.77"))  # a FIP nobody else announces: live at once
    assert sim.fip_live("203.0.113.77") and not sim.fip_live(FIP)
    sim.unplug("tapvm12")
    assert sim.ctl.status(sim.now)["waiting"] == {}
    sim.answer(EchoesSeen(frozenset()))  # nothing is left to release
    assert sim.kernel_tables == fib("203.0.113.11", "203.0.113.77")
    timers = [(k, n) for k in ("presence", "settle", "spoke") for n in ("tapvm11", "tapvm12")]
    assert not any(sim.ctl.timers.pending(t) for t in timers)
