"""Per-VM connection limits in the host controller: which zones the datapath limits, and the
refused connections per VM as the switch counted them (the lab tests send the flood)."""

from ovsnat.compile.pipeline import CONN_VERDICT
from ovsnat.core.dropcounts import DropCounts as Refusals
from ovsnat.core.effects import ZoneLimits
from tests.hostsim import SimHost, vm_row


def refusal_key(sim: SimHost, name: str) -> tuple:
    host = sim.ctl.host
    return next(
        k
        for k in sim.switch.flow_keys()
        if k[0] == CONN_VERDICT and host.owner_names.get(k[1] >> 24) == name
    )


def test_each_vms_refused_connections_are_its_refusal_flows_packet_count():
    sim = SimHost(conn_limit=10).start()
    sim.plug(vm_row(2), vm_row(3), vm_row(4, fip="203.0.113.44"))
    sim.switch.packets[refusal_key(sim, "tapvm2")] = 7
    sim.advance(Refusals.POLL)
    # a FIP VM is stateless and has no limit, so no counter
    assert sim.ctl.status(sim.now)["conn_refused"] == {"tapvm2": 7, "tapvm3": 0}
    sim.switch.packets[refusal_key(sim, "tapvm3")] = 2
    sim.advance(Refusals.POLL)
    assert sim.ctl.status(sim.now)["conn_refused"] == {"tapvm2": 7, "tapvm3": 2}


def test_an_unplugged_vm_leaves_the_counters_and_its_zone_is_freed():
    sim = SimHost(conn_limit=10).start()
    sim.plug(vm_row(2), vm_row(3))
    sim.unplug("tapvm2")
    sim.advance(Refusals.POLL)
    assert sim.ctl.status(sim.now)["conn_refused"] == {"tapvm3": 0}
    freed = [z for item in sim.zone_limits for z in item.delete]
    assert freed == [20002]


def test_without_a_limit_nothing_is_polled():
    sim = SimHost().start()
    sim.plug(vm_row(2))
    before = len(sim.switch.xids)
    sim.advance(3 * Refusals.POLL)
    assert sim.ctl.status(sim.now)["conn_refused"] == {}
    assert len(sim.switch.xids) == before  # positive control below
    limited = SimHost(conn_limit=10).start()
    limited.plug(vm_row(2))
    before = len(limited.switch.xids)
    limited.advance(3 * Refusals.POLL)
    assert len(limited.switch.xids) > before


def test_a_disconnect_drops_a_poll_in_flight_and_polling_resumes():
    sim = SimHost(conn_limit=10).start()
    sim.plug(vm_row(2))
    sim.ctl.refusals.xids = {12345: CONN_VERDICT}  # asked, never answered
    sim.deliver(sim.ctl.switch_down(sim.now))
    assert sim.ctl.refusals.xids == {}
    sim.connect()
    sim.switch.packets[refusal_key(sim, "tapvm2")] = 3
    sim.advance(2 * Refusals.POLL)
    assert sim.ctl.status(sim.now)["conn_refused"] == {"tapvm2": 3}


def test_zone_limits_follow_the_ports():
    sim = SimHost(conn_limit=10).start()
    sim.plug(vm_row(2))
    assert ZoneLimits(set=((20002, 10),)) in sim.zone_limits


def test_a_poll_never_answered_is_given_up_and_polling_goes_on():
    sim = SimHost(conn_limit=10).start()
    sim.plug(vm_row(2))
    sim.ctl.refusals.xids = {12345: CONN_VERDICT}  # lost on the way
    sim.ctl.refusals.asked_at = sim.now
    sim.switch.packets[refusal_key(sim, "tapvm2")] = 4
    sim.advance(2 * Refusals.POLL)
    assert sim.ctl.status(sim.now)["conn_refused"] == {}  # still waiting
    sim.advance(2 * Refusals.POLL)
    assert sim.ctl.status(sim.now)["conn_refused"] == {"tapvm2": 4}
