"""The host controller's decisions, event by event, against a model switch: no OVS, no root.
The same behaviours are proven with real packets in the lab tests; these pin the logic."""

from __future__ import annotations

import pytest

from ovsnat.core.controller import Fatal
from ovsnat.core.effects import IfaceKeys
from ovsnat.core.markers import INSTALLED_KEY, READY_KEY
from ovsnat.core.presence import PROBE_GAP, REPROBE
from ovsnat.model.hostconfig import SNAT_KEY
from ovsnat.model.rows import Changes, IfaceRow
from ovsnat.openflow.session import MAX_XID, Xids
from ovsnat.packets import arp
from tests.hostsim import UPLINK, SimHost, vm_row

FIP, OTHER_FIP = "203.0.113.10", "203.0.113.20"
FOREIGN_MAC = "02:99:00:00:00:01"


def answer(host: SimHost, fip: str, mac: str) -> bytes:
    """An ARP reply for fip from mac, as sent to this host's probes."""
    return arp.build(arp.REPLY, mac, fip, "0.0.0.0", tha=host.host_mac, eth_dst=host.host_mac)


# --- programming ----------------------------------------------------------------------------
def test_an_ovsdb_batch_gives_exactly_the_compiled_flows():
    host = SimHost(fip_activation="immediate")
    host.rows.update({r.name: r for r in (vm_row(11, FIP), vm_row(12))})
    host.start()
    assert host.switch.flow_keys() == host.desired_keys()
    assert host.switch.meters == {1: 100, 2: 500, 3: 200, 4: 100, 5: 100, 0xFFFFFFFE: 200}


def test_on_connect_first_fragments_keep_their_l4_fields_for_matching():
    host = SimHost().start()
    assert host.switch.frag_mode == 3  # OVS's nx-match (default "normal" zeroes them)


def test_a_restart_with_nothing_changed_sends_nothing():
    first = SimHost(fip_activation="immediate")
    first.rows.update({r.name: r for r in (vm_row(11, FIP), vm_row(12))})
    first.start()
    before = first.switch.flow_mods
    again = SimHost(switch=first.switch, fip_activation="immediate")
    again.rows = dict(first.rows)
    again.start()
    assert first.switch.flow_mods == before
    assert again.switch.packet_outs == first.switch.packet_outs  # no GARP either
    assert again.ctl.status(again.now)["in_sync"]


def test_a_restart_of_a_probing_host_keeps_its_live_fips_live_without_probing_again():
    first = SimHost()
    first.rows[vm_row(11, FIP).name] = vm_row(11, FIP)
    first.start()
    first.plug(vm_row(12, OTHER_FIP))  # a new device: probed, then live
    first.advance(0.5)
    assert first.fip_live(FIP) and first.fip_live(OTHER_FIP)
    again = SimHost(switch=first.switch)
    again.rows = dict(first.rows)
    sent = len(first.switch.packet_outs)
    again.start()
    again.advance(2)
    assert again.fip_live(FIP) and again.fip_live(OTHER_FIP)
    assert len(again.switch.packet_outs) == sent


def test_a_host_built_after_the_switch_connected_sends_each_flow_once():
    """The defect: on a rebuild the FIPs of resident VMs were activated in one bundle, then a
    full sync diffed against a switch that did not hold that bundle yet, and sent the same
    flows again. Here the switch connects before the uplink exists; once it appears, every
    desired flow must reach the switch exactly once."""
    host = SimHost()
    host.rows.pop("uplink")
    host.rows.update({r.name: r for r in (vm_row(11, FIP), vm_row(12, OTHER_FIP), vm_row(13))})
    host.start()  # no uplink yet: nothing to build
    assert host.ctl.host is None and host.switch.flow_mods == 0
    host.plug(IfaceRow("uplink", 1, {}, "up"))
    assert host.switch.flow_keys() == host.ctl.host.all_keys()
    assert host.switch.flow_mods == len(host.switch.flow_keys())
    assert host.fip_live(FIP) and host.fip_live(OTHER_FIP)  # resident: live at once


def test_an_uplink_change_sends_only_the_difference_once():
    host = SimHost(fip_activation="immediate")
    host.rows[vm_row(11, FIP).name] = vm_row(11, FIP)
    host.start()
    old = host.switch.flow_keys()
    mods = host.switch.flow_mods
    host.plug(IfaceRow("uplink", 7, {}, "up"))
    new = host.switch.flow_keys()
    assert new == host.ctl.host.all_keys() and new != old
    assert host.switch.flow_mods - mods == len(old - new) + len(new - old)


def test_a_rejected_bundle_is_retried_owner_by_owner_then_given_up():
    host = SimHost(fip_activation="immediate")
    host.rows.update({r.name: r for r in (vm_row(11, FIP), vm_row(12), vm_row(13))})
    bad_owner = 0xA20A00000C  # 10.0.0.12's cookie owner bits
    host.switch.reject = lambda key: key[1] >> 24 == bad_owner
    host.start()
    held = host.switch.flow_keys()
    assert any(k[1] >> 24 == 0xA20A00000B for k in held)  # vm11 programmed
    assert any(k[1] >> 24 == 0xA20A00000D for k in held)  # vm13 programmed
    assert not any(k[1] >> 24 == bad_owner for k in held)
    st = host.ctl.status(host.now)
    assert list(st["failed_owners"]) == [f"{bad_owner & 0xFFFFFFFF:#x}"]
    assert "tapvm12" in st["failed_owners"][f"{bad_owner & 0xFFFFFFFF:#x}"]
    writes = {w.name for w in host.key_writes if w.set}
    assert writes == {"tapvm11", "tapvm13"}  # not the refused one


def test_the_installed_marker_follows_the_ports_flows():
    host = SimHost(fip_activation="immediate").start()
    host.plug(vm_row(11))
    assert host.rows["tapvm11"].external_ids[INSTALLED_KEY] == "true"
    host.plug(vm_row(11, **{"attached-mac": "ff:ff:ff:ff:ff:ff"}))  # now rejected
    assert INSTALLED_KEY not in host.rows["tapvm11"].external_ids
    writes = len(host.key_writes)
    host.plug(host.rows["tapvm11"])  # nothing changed
    assert len(host.key_writes) == writes


def markers(host: SimHost, name: str) -> dict[str, str]:
    ids = host.rows[name].external_ids
    return {k: v for k, v in ids.items() if k in (READY_KEY, INSTALLED_KEY)}


def test_a_row_without_its_device_is_ready_once_the_host_accepts_its_keys():
    """A live migration's destination: os-vif's row with the port's keys and no tap yet
    (ofport -1) is ready, not installed. The guest's tap appears: installed too. The tap
    goes again (the VM left): installed goes, the keys are still good here."""
    host = SimHost(fip_activation="immediate").start()
    host.plug(vm_row(11, FIP, ofport=-1))
    assert markers(host, "tapvm11") == {READY_KEY: "true"}
    assert not host.switch.flow_keys() - host.ctl.host.all_keys()  # no flows for it
    arrived = host.rows["tapvm11"]
    host.echo_writes = False  # the flows are being installed: ready stays
    host.plug(IfaceRow("tapvm11", 11, arrived.external_ids, "up"))
    assert not [w for w in host.key_writes if w.name == "tapvm11" and w.remove]
    host.echo_writes = True
    host.plug(host.rows["tapvm11"])
    assert markers(host, "tapvm11") == {READY_KEY: "true", INSTALLED_KEY: "true"}
    assert host.fip_live(FIP)
    host.plug(IfaceRow("tapvm11", -1, host.rows["tapvm11"].external_ids, None))
    assert markers(host, "tapvm11") == {READY_KEY: "true"}


def test_keys_this_host_rejects_are_never_ready_with_or_without_a_device():
    """Rejected by this host's settings (a FIP outside its external network), by a bad
    value, by a clash with a port already here (its FIP, smaller iface-id): no marker,
    before the device and after. A good row without a device beside them: ready (the
    control)."""
    host = SimHost(fip_activation="immediate").start()
    host.plug(vm_row(11, FIP))
    host.plug(
        vm_row(12, "198.51.100.12", ofport=-1),
        vm_row(13, ofport=-1, **{"ovsnat-fixed-ip": "10.0.0.300"}),
        vm_row(14, FIP, ofport=-1),
        vm_row(15, OTHER_FIP, ofport=-1),
    )
    assert markers(host, "tapvm15") == {READY_KEY: "true"}
    for n in (12, 13, 14):
        assert markers(host, f"tapvm{n}") == {}, n
        row = host.rows[f"tapvm{n}"]
        host.plug(IfaceRow(row.name, n, row.external_ids, "up"))
        assert markers(host, f"tapvm{n}") == {}, n
    assert markers(host, "tapvm11") == {READY_KEY: "true", INSTALLED_KEY: "true"}


def test_a_row_without_its_device_whose_keys_are_rejected_gets_one_log_line(caplog):
    host = SimHost().start()
    with caplog.at_level("ERROR", logger="ovsnat"):
        for _ in range(3):  # the same row again: no new line
            host.plug(vm_row(12, "198.51.100.12", ofport=-1))
    lines = [r.getMessage() for r in caplog.records if "tapvm12" in r.getMessage()]
    assert len(lines) == 1 and "198.51.100.12" in lines[0] and "not ready" in lines[0]


def test_ready_goes_when_the_keys_go_or_turn_bad():
    host = SimHost().start()
    host.plug(vm_row(11, ofport=-1))
    assert markers(host, "tapvm11") == {READY_KEY: "true"}
    bad = dict(host.rows["tapvm11"].external_ids, **{"ovsnat-fip": "10.0.0.99"})
    host.plug(IfaceRow("tapvm11", -1, bad, None))  # a FIP inside its network
    assert markers(host, "tapvm11") == {}
    gone = {k: v for k, v in bad.items() if not k.startswith("ovsnat-")}
    host.plug(IfaceRow("tapvm11", -1, dict(bad, **{"ovsnat-fip": FIP}), None))
    assert markers(host, "tapvm11") == {READY_KEY: "true"}
    host.plug(IfaceRow("tapvm11", -1, gone, None))  # Neutron: no such port
    assert markers(host, "tapvm11") == {}


def test_a_port_plugged_with_its_device_gets_both_markers_in_one_write():
    host = SimHost(fip_activation="immediate").start()
    host.plug(vm_row(11))
    writes = [w for w in host.key_writes if w.name == "tapvm11"]
    assert writes == [IfaceKeys("tapvm11", set=((READY_KEY, "true"), (INSTALLED_KEY, "true")))]


def test_the_snat_ip_can_come_from_the_bridge_and_follows_it():
    host = SimHost(snat_ip="")
    host.rows[vm_row(12).name] = vm_row(12)
    host.start()
    assert host.switch.flow_keys() == set() and host.ctl.host is None
    host.set_bridge_ids(**{SNAT_KEY: "203.0.113.50"})
    assert host.switch.flow_keys() == host.ctl.host.all_keys() != set()
    assert str(host.ctl.host.cfg.snat_ip) == "203.0.113.50"
    host.set_bridge_ids(**{SNAT_KEY: "203.0.113.51"})
    assert str(host.ctl.host.cfg.snat_ip) == "203.0.113.51"
    assert host.switch.flow_keys() == host.ctl.host.all_keys()
    host.set_bridge_ids(**{SNAT_KEY: "198.51.100.9"})  # outside external_cidr: ignored,
    assert str(host.ctl.host.cfg.snat_ip) == "203.0.113.51"  # the last good one stays


def test_the_gateway_mac_is_learned_and_followed():
    host = SimHost(external_gateway_mac="").start()
    host.plug(vm_row(12), vm_row(11, FIP))
    host.advance(1.5)
    assert host.fip_live(FIP)
    asks = [a for a in host.arps_out() if a.tpa == "203.0.113.1"]
    assert asks and asks[0].spa == "203.0.113.11" and asks[0].sha == host.host_mac

    def egress_to(mac):
        return any(
            f"set_field:{mac}->eth_dst,output:{UPLINK}" in f.text()
            for f in host.ctl.host.all_flows()
        )

    for mac in ("02:00:00:00:00:fe", "02:00:00:00:00:fd"):
        host.from_uplink(
            arp.build(
                arp.REPLY,
                mac,
                "203.0.113.1",
                "203.0.113.11",
                tha=host.host_mac,
                eth_dst=host.host_mac,
            )
        )
        assert egress_to(mac)
        assert host.switch.flow_keys() == host.ctl.host.all_keys()
        assert host.fip_live(FIP), "a new host config keeps live FIPs live"


# --- FIP activation by probing -----------------------------------------------------------------
def test_a_silent_vms_fip_goes_live_when_nobody_answers_the_probes():
    host = SimHost().start()
    t0 = host.now
    host.plug(vm_row(11, FIP))
    assert not host.fip_live(FIP)
    host.advance(0.5)
    probes = [a for a in host.arps_out() if a.is_probe]
    assert [(a.sha, a.tpa) for a in probes] == [(host.host_mac, FIP)] * 2
    assert host.fip_live(FIP)
    garps = [a for a in host.arps_out() if a.is_announcement]
    assert garps and garps[0].sha == host.fip_mac(FIP) and garps[0].spa == FIP
    assert host.ctl.status(host.now)["stats"]["activations"] == 1
    assert host.now - t0 <= 0.5


def test_a_fip_another_ovsnat_host_answers_for_waits_for_the_vm_or_for_silence():
    host = SimHost().start()
    host.plug(vm_row(11, FIP))
    for _ in range(3):  # the source host still answers each round
        host.advance(PROBE_GAP)
        host.from_uplink(answer(host, FIP, host.fip_mac(FIP)))
        host.advance(REPROBE - PROBE_GAP)
        assert not host.fip_live(FIP)
        assert host.ctl.status(host.now)["waiting"]["tapvm11"]["state"] in ("held", "probing")
    rounds = len([a for a in host.arps_out() if a.is_probe])
    assert rounds >= 6  # it keeps asking every second
    host.advance(1.5)  # the source let go: nobody answers
    assert host.fip_live(FIP)


def test_the_vms_first_frame_lights_a_held_fip_after_one_garp():
    host = SimHost().start()
    host.plug(vm_row(11, FIP))
    host.advance(PROBE_GAP)
    host.from_uplink(answer(host, FIP, host.fip_mac(FIP)))
    host.advance(0.3)
    assert not host.fip_live(FIP)
    host.from_vm(11, arp.garp("02:00:0a:00:00:0b", "10.0.0.11"))
    garps = [a for a in host.arps_out() if a.is_announcement and a.spa == FIP]
    assert len(garps) == 1 and not host.fip_live(FIP)  # announced before lighting
    host.advance(0.15)
    assert host.fip_live(FIP)


def test_a_foreign_answer_is_a_conflict_and_keeps_the_fip_dark_until_it_stops():
    host = SimHost().start()
    host.plug(vm_row(11, FIP))
    for _ in range(2):
        host.advance(PROBE_GAP)
        host.from_uplink(answer(host, FIP, FOREIGN_MAC))
        host.from_vm(11, arp.garp("02:00:0a:00:00:0b", "10.0.0.11"))  # does not override
        host.advance(REPROBE - PROBE_GAP)
        assert not host.fip_live(FIP)
    st = host.ctl.status(host.now)
    assert st["waiting"]["tapvm11"]["state"] in ("conflict", "probing")
    assert any(c["mac"] == FOREIGN_MAC and c["fip"] == FIP for c in st["conflicts"])
    assert st["stats"]["fip_conflicts"] >= 2
    host.advance(1.5)
    assert host.fip_live(FIP)


def test_first_packet_mode_waits_for_the_vm_and_never_probes():
    host = SimHost(fip_activation="first-packet").start()
    host.plug(vm_row(11, FIP))
    host.advance(3)
    assert not host.fip_live(FIP) and not [a for a in host.arps_out() if a.is_probe]
    host.from_vm(11, arp.build(arp.REQUEST, "02:00:0a:00:00:0b", "10.0.0.11", "10.0.0.1"))
    host.advance(0.2)
    assert host.fip_live(FIP)


def test_a_garp_from_another_ovsnat_host_makes_a_live_fip_yield_a_foreign_one_does_not():
    host = SimHost().start()
    host.plug(vm_row(11, FIP))
    host.advance(0.5)
    assert host.fip_live(FIP)
    host.from_uplink(arp.garp(FOREIGN_MAC, FIP))
    assert host.fip_live(FIP)
    host.from_uplink(arp.garp(host.fip_mac(FIP), FIP))
    assert not host.fip_live(FIP)
    assert host.ctl.status(host.now)["stats"]["yields"] == 1


def test_simultaneous_probes_leave_one_prober():
    high = SimHost(snat_ip="203.0.113.99").start()  # its probe MAC sorts higher
    high.plug(vm_row(11, FIP))
    high.from_uplink(arp.probe("02:5a:cb:00:71:0b", FIP))  # the lower host probes too
    high.advance(0.5)
    assert not high.fip_live(FIP)
    low = SimHost(snat_ip="203.0.113.11").start()
    low.plug(vm_row(11, FIP))
    low.from_uplink(arp.probe("02:5a:cb:00:71:63", FIP))
    low.advance(0.5)
    assert low.fip_live(FIP)


# --- faults and messages -----------------------------------------------------------------------
def test_after_a_fault_the_controller_resyncs_the_switch(monkeypatch):
    host = SimHost(fip_activation="immediate").start()
    host.plug(vm_row(11, FIP))
    state_update = type(host.ctl.host).update

    def broken(self, name, port):
        raise RuntimeError("injected")

    monkeypatch.setattr(type(host.ctl.host), "update", broken)
    host.rows["tapvm12"] = vm_row(12)
    with pytest.raises(RuntimeError):
        host.ctl.ovsdb(Changes({"tapvm12": host.rows["tapvm12"]}), host.now)
    monkeypatch.setattr(type(host.ctl.host), "update", state_update)
    host.deliver(host.ctl.recover(host.now))
    assert host.switch.flow_keys() == host.ctl.host.all_keys()
    assert "tapvm12" in host.ctl.host.valid and host.fip_live(FIP)
    assert host.ctl.status(host.now)["stats"]["faults"] == 1


def test_repeated_faults_give_up_for_the_supervisor():
    host = SimHost().start()
    host.deliver(host.ctl.recover(host.now))
    host.deliver(host.ctl.recover(host.now + 1))
    with pytest.raises(Fatal):
        host.ctl.recover(host.now + 2)


def test_xids_wrap_in_32_bits_and_skip_those_still_awaiting_an_answer():
    xids = Xids(start=MAX_XID - 5)
    held = xids.take(4, busy=True)
    assert held == MAX_XID - 5
    wrapped = xids.take(4)  # would cross 2**32: starts again at 1
    assert wrapped == 1
    xids = Xids(start=MAX_XID - 1)
    busy = xids.take(1, busy=True)
    xids._next = busy  # as after a full wrap around
    assert xids.take() != busy


def test_every_message_gets_a_distinct_xid_and_errors_blame_the_right_one(caplog):
    host = SimHost(fip_activation="immediate").start()
    host.plug(vm_row(11, FIP))
    host.advance(2)  # GARPs (packet-outs) after the bundle
    xids = host.switch.xids
    assert len(xids) == len(set(xids))
    garp_xid = next(reversed(host.ctl.sw.session.recent))
    host.deliver(host.ctl.error(garp_xid, 1, 2, host.now))
    assert "for GARP for 203.0.113.10" in caplog.text
    assert host.ctl.status(host.now)["failed_owners"] == {}


def test_flows_go_through_the_declared_pipeline_on_the_runtime_path(monkeypatch):
    from ovsnat.compile.flows import Match, make_flow
    from ovsnat.compile.tables import PipelineViolation
    from ovsnat.core import state

    monkeypatch.setattr(
        state, "vm_flows", lambda cfg, vm, net, **kw: [make_flow(0xA2 << 56, 99, 1, Match(), [])]
    )
    host = SimHost()
    with pytest.raises(PipelineViolation):
        host.start()
        host.plug(vm_row(11))


def test_key_writes_name_the_port():
    assert IfaceKeys("tap1", set=((INSTALLED_KEY, "true"),)).name == "tap1"


def test_once_in_sync_after_each_connection_ovs_vswitchd_is_asked_to_reconfigure_once():
    """OVS 3.1 applies the Controller row's max_backoff to a connection only in a
    reconfiguration made while it is up (ovsnat.core.reconcile.Reconfigure)."""
    host = SimHost(fip_activation="immediate")
    host.rows[vm_row(11, FIP).name] = vm_row(11, FIP)
    host.start()
    assert host.reconfigures == 1
    host.plug(vm_row(12))  # later bundles: no more
    host.advance(120)
    assert host.reconfigures == 1
    host.deliver(host.ctl.switch_down(host.now))
    host.connect()  # a new connection: once again
    assert host.reconfigures == 2 and host.ctl.status(host.now)["in_sync"]


def test_no_reconfiguration_is_asked_for_before_the_switch_is_in_sync():
    host = SimHost()
    host.rows.pop("uplink")
    host.start()  # connected, but no host state
    assert host.ctl.host is None and host.reconfigures == 0
    host.plug(IfaceRow("uplink", 1, {}, "up"))
    assert host.reconfigures == 1


def test_the_fip_live_marker_says_where_the_fip_is_live():
    """`ovsnat-fip-live=<fip>` (ovsnat.core.markers), from which Neutron's view of the
    floating IP is to follow: set once the FIP is live and its flows are confirmed,
    removed when another host takes it (the port stays installed), set again when this
    host takes it back (nobody answered its probes), never on a port without a FIP."""
    host = SimHost().start()
    host.plug(vm_row(11, FIP), vm_row(12))
    host.advance(0.5)
    host.from_uplink(arp.garp(host.fip_mac(FIP), FIP))  # another ovsnat host announces it
    host.advance(5)
    marks = [
        ("set" if w.set else "removed", w.name)
        for w in host.key_writes
        if "ovsnat-fip-live" in dict(w.set) or "ovsnat-fip-live" in w.remove
    ]
    assert marks == [("set", "tapvm11"), ("removed", "tapvm11"), ("set", "tapvm11")]
    ids = host.rows["tapvm11"].external_ids
    assert (ids.get("ovsnat-fip-live"), ids.get("ovsnat-installed")) == (FIP, "true")
    assert host.rows["tapvm12"].external_ids.get("ovsnat-installed") == "true"
