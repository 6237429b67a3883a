"""Which switch the host controller programs: the one whose datapath id OVSDB gives for the
configured bridge (ovsnat.core.datapaths); any other is refused and never heard. Against the
model switch; tests/test_runtime_lab.py points two real bridges at one controller."""

from __future__ import annotations

import logging

from ovsnat.core.effects import AdoptSwitch, RefuseSwitch
from ovsnat.model.rows import Changes
from tests.hostsim import DPID, SimHost, vm_row

OTHER = 0xBEEF


def test_a_second_switch_is_refused_once_logged_and_counted(caplog):
    sim = SimHost()
    sim.rows["tapvm2"] = vm_row(2)
    sim.start()
    programmed = sim.switch.flow_keys()
    xids = len(sim.switch.xids)
    with caplog.at_level(logging.ERROR, logger="ovsnat"):
        for _ in range(3):  # it reconnects, again and again
            assert sim.ctl.switch_up(OTHER, sim.now) == [RefuseSwitch(OTHER)]
            sim.deliver(sim.ctl.switch_gone(OTHER, sim.now))
    refused = [r.getMessage() for r in caplog.records if "refusing datapath" in r.getMessage()]
    assert len(refused) == 1 and f"{OTHER:016x}" in refused[0] and "br-int" in refused[0]
    st = sim.ctl.status(sim.now)
    assert st["stats"]["datapaths_refused"] == 3
    assert st["datapaths"] == {"expected": f"{DPID:016x}", "refused": [f"{OTHER:016x}"]}
    # Our switch was not disturbed: still programmed, in sync, nothing sent to it.
    assert st["datapath"] == f"{DPID:016x}" and st["in_sync"]
    assert sim.switch.flow_keys() == programmed and len(sim.switch.xids) == xids


def test_a_switch_that_connects_before_ovsdb_names_ours_waits_then_is_adopted():
    sim = SimHost()
    sim.rows["tapvm2"] = vm_row(2)
    sim.datapath_id = ""  # the snapshot does not name it yet
    sim.start(connect=False)
    sim.deliver(sim.ctl.switch_up(DPID, sim.now))
    sim.deliver(sim.ctl.switch_up(OTHER, sim.now))
    assert not sim.switch.flow_keys() and not sim.switch_verdicts  # nothing programmed yet
    sim.deliver(sim.ctl.ovsdb(Changes(datapath_id=f"{DPID:016x}"), sim.now))
    assert sim.switch_verdicts == [RefuseSwitch(OTHER), AdoptSwitch(DPID)]
    assert sim.switch.flow_keys() == sim.desired_keys()


def test_the_wrong_switch_waiting_is_refused_when_ovsdb_names_ours():
    sim = SimHost()
    sim.datapath_id = ""
    sim.start(connect=False)
    sim.deliver(sim.ctl.switch_up(OTHER, sim.now))
    sim.deliver(sim.ctl.ovsdb(Changes(datapath_id=f"{DPID:016x}"), sim.now))
    assert sim.switch_verdicts == [RefuseSwitch(OTHER)]
    assert not sim.switch.flow_keys()
    sim.connect()  # ours comes: adopted and programmed
    assert sim.switch_verdicts[-1] == AdoptSwitch(DPID)
    assert sim.switch.flow_keys() == sim.desired_keys()


def test_when_the_bridge_gets_another_datapath_id_the_old_switch_is_let_go():
    sim = SimHost().start()
    sim.deliver(sim.ctl.ovsdb(Changes(datapath_id=f"{OTHER:016x}"), sim.now))
    assert sim.switch_verdicts[-1] == RefuseSwitch(DPID)
    assert sim.ctl.status(sim.now)["datapath"] is None
    assert sim.ctl.switch_up(OTHER, sim.now)[0] == AdoptSwitch(OTHER)


def test_our_switch_reconnecting_is_adopted_again():
    sim = SimHost().start()
    sim.deliver(sim.ctl.switch_down(sim.now))
    sim.connect()
    assert sim.switch_verdicts.count(AdoptSwitch(DPID)) == 2
    assert sim.ctl.status(sim.now)["in_sync"]
