"""PAT session handoff decided without a switch (tests/hostsim.py): which host holds which
part, for how long. tests/test_handoff_lab.py moves real sessions between real hosts."""

from __future__ import annotations

import pytest

from ovsnat.compile.flows import COOKIE_GONE, cookie_kind
from ovsnat.core.conntrack import tally
from ovsnat.core.effects import ReadConntrack, Reading
from ovsnat.core.handoff import live_tcp_sessions
from ovsnat.core.vswitchd import READ_LOST
from ovsnat.model.rows import IfaceRow
from tests.hostsim import SimHost, vm_row

GRACE = 30
FABRIC = IfaceRow("fabric", 2, {}, "up")
SESSION = (
    "tcp,orig=(src=10.0.0.5,dst=198.51.100.10,sport=45000,dport=8080),"
    "reply=(src=198.51.100.10,dst=203.0.113.11,sport=8080,dport=20001),zone=65000,"
    "protoinfo=(state=ESTABLISHED)"
)


@pytest.fixture
def host():
    h = SimHost(fabric_port="fabric", handoff_vlan="4000", handoff_grace=str(GRACE))
    h.rows["fabric"] = FABRIC
    h.rows["tapvm5"] = vm_row(5)  # here from the start: not an arrival
    return h.start()


def gone_keys(h: SimHost) -> set:
    return {k for k in h.switch.flow_keys() if cookie_kind(k[1]) == COOKIE_GONE}


def role(h: SimHost, name: str):
    return h.ctl.status(h.now)["handoffs"].get(name, {}).get("role")


def reads(h: SimHost) -> list:
    """The conntrack reads the shim's chores ask for now."""
    return [c for c in h.chores() if isinstance(c, ReadConntrack)]


def read(h: SimHost, text: str) -> None:
    """The shim reads conntrack (asked for by the chores) and it says `text`."""
    [asked] = reads(h)
    h.answer(tally(text, asked.pat_zone, asked.snat_ip))


def test_a_port_plugged_later_is_an_arrival_for_the_grace_period(host):
    host.plug(vm_row(6))
    assert role(host, "tapvm6") == "arrived" and role(host, "tapvm5") is None
    with_grace = set(host.switch.flow_keys())
    host.advance(GRACE + 1)
    assert role(host, "tapvm6") is None
    assert len(host.switch.flow_keys()) == len(with_grace) - 1  # its handoff_in flow went


def test_a_pat_vm_that_leaves_is_handed_its_sessions_until_they_end(host):
    host.unplug("tapvm5")
    assert role(host, "tapvm5") == "left" and len(gone_keys(host)) == 2
    read(host, SESSION)  # one session still open
    assert role(host, "tapvm5") == "left"
    assert host.ctl.status(host.now)["handoffs"]["tapvm5"]["sessions"] == 1
    host.advance(3)
    read(host, SESSION.replace("ESTABLISHED", "TIME_WAIT"))
    assert role(host, "tapvm5") is None and not gone_keys(host)


def test_the_grace_period_ends_a_departure_even_with_sessions_open(host):
    host.unplug("tapvm5")
    read(host, SESSION)
    host.advance(GRACE + 1)
    assert role(host, "tapvm5") is None and not gone_keys(host)


def test_the_conntrack_is_read_only_while_a_departure_lasts(host):
    assert not reads(host)
    host.unplug("tapvm5")
    read(host, SESSION)
    host.now += 1
    assert not reads(host)  # every 2 s at most
    host.now += 1
    assert reads(host)


def test_a_failed_read_never_ends_a_departure_early(host):
    """ovs-appctl failing (no control socket, a timeout) says nothing about the sessions:
    the departure runs on, its sessions shown as unknown, the failure logged and counted;
    the next read that works decides (positive control)."""
    host.unplug("tapvm5")
    [_] = reads(host)
    host.answer(Reading(False, "no pid in /var/run/openvswitch/ovs-vswitchd.pid"))
    st = host.ctl.status(host.now)
    assert role(host, "tapvm5") == "left" and gone_keys(host)
    assert st["handoffs"]["tapvm5"]["sessions"] == -1
    assert "ovs-vswitchd.pid" in st["failures"]["vswitchd"]["error"]
    assert st["stats"]["vswitchd_call_failures"] == 1
    host.now += 2
    read(host, "")  # it works again: none left
    assert role(host, "tapvm5") is None and not gone_keys(host)
    assert "vswitchd" not in host.ctl.status(host.now)["failures"]


def test_a_read_moves_its_schedule_on_whatever_it_answers_and_never_runs_twice(host):
    host.unplug("tapvm5")
    assert len(reads(host)) == 1
    host.now += 5
    assert not reads(host)  # the first is still running: not a second
    host.answer(Reading(False, "dpctl/dump-conntrack: no answer within 10 s"))
    assert len(reads(host)) == 1  # asked 5 s ago: due again at once
    host.now += READ_LOST  # an answer that never comes (a guard)
    assert len(reads(host)) == 1


def test_one_read_serves_the_handoff_and_pat_usage():
    h = SimHost(fabric_port="fabric", handoff_vlan="4000", handoff_grace=str(GRACE))
    h.rows.update({"fabric": FABRIC, "tapvm5": vm_row(5)})
    h.start()
    h.ctl.vswitchd.pat_usage = True  # the metrics are on
    h.unplug("tapvm5")
    read(h, SESSION)  # one read, both readers
    st = h.ctl.status(h.now)
    assert st["pat"]["per_vm"] == {"10.0.0.5": 1} and st["pat"]["ports_in_use"] == 1
    assert st["handoffs"]["tapvm5"]["sessions"] == 1


def test_a_fip_vm_leaving_hands_nothing(host):
    host.plug(vm_row(7, fip="203.0.113.70"))
    assert role(host, "tapvm7") is None  # FIPs move by themselves
    host.unplug("tapvm7")
    assert role(host, "tapvm7") is None and not gone_keys(host)


def test_a_vm_that_comes_back_within_the_grace_is_local_again(host):
    host.unplug("tapvm5")
    host.plug(vm_row(5, ofport=15))
    assert role(host, "tapvm5") == "arrived" and not gone_keys(host)


def test_without_handoff_vlan_nothing_is_handed():
    h = SimHost(fabric_port="fabric")
    h.rows.update({"fabric": FABRIC, "tapvm5": vm_row(5)})
    h.start()
    h.unplug("tapvm5")
    h.plug(vm_row(6))
    assert h.ctl.status(h.now)["handoffs"] == {} and not gone_keys(h)


def test_live_sessions_are_counted_per_zone_and_source():
    lines = "\n".join(
        [
            SESSION,
            SESSION.replace("45000", "45001"),
            SESSION.replace("zone=65000", "zone=60101"),
            SESSION.replace("ESTABLISHED", "TIME_WAIT"),
            "udp,orig=(src=10.0.0.5,dst=198.51.100.10,sport=1,dport=2),reply=(src="
            "198.51.100.10,dst=203.0.113.11,sport=2,dport=20002),zone=65000",
        ]
    )
    assert live_tcp_sessions(lines) == {(65000, "10.0.0.5"): 2, (60101, "10.0.0.5"): 1}
