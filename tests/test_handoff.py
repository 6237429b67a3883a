"""PAT session handoff decided without a switch (tests/hostsim.py): which host holds which
part, for how long. tests/test_handoff_lab.py moves real sessions between real hosts."""

from __future__ import annotations

import pytest

from ovsnat.flows import COOKIE_GONE, cookie_kind
from ovsnat.handoff import live_tcp_sessions
from ovsnat.ovsdb import IfaceRow
from tests.hostsim import SimHost, vm_row

GRACE = 30
FABRIC = IfaceRow("fabric", 2, {}, "up")
SESSION = ("tcp,orig=(src=10.0.0.5,dst=198.51.100.10,sport=45000,dport=8080),"
           "reply=(src=198.51.100.10,dst=203.0.113.11,sport=8080,dport=20001),zone=65000,"
           "protoinfo=(state=ESTABLISHED)")


@pytest.fixture
def host():
    h = SimHost(fabric_port="fabric", handoff_vlan="4000", handoff_grace=str(GRACE))
    h.rows["fabric"] = FABRIC
    h.rows["tapvm5"] = vm_row(5)               # here from the start: not an arrival
    return h.start()


def gone_keys(h: SimHost) -> set:
    return {k for k in h.switch.keys() if cookie_kind(k[1]) == COOKIE_GONE}


def role(h: SimHost, name: str):
    return h.ctl.status(h.now)["handoffs"].get(name, {}).get("role")


def test_a_port_plugged_later_is_an_arrival_for_the_grace_period(host):
    host.plug(vm_row(6))
    assert role(host, "tapvm6") == "arrived" and role(host, "tapvm5") is None
    with_grace = set(host.switch.keys())
    host.advance(GRACE + 1)
    assert role(host, "tapvm6") is None
    assert len(host.switch.keys()) == len(with_grace) - 1     # its handoff_in flow went


def test_a_pat_vm_that_leaves_is_handed_its_sessions_until_they_end(host):
    host.unplug("tapvm5")
    assert role(host, "tapvm5") == "left" and len(gone_keys(host)) == 2
    host.deliver(host.ctl.conntrack(SESSION, host.now))        # one session still open
    assert role(host, "tapvm5") == "left"
    assert host.ctl.status(host.now)["handoffs"]["tapvm5"]["sessions"] == 1
    host.advance(3)
    host.deliver(host.ctl.conntrack(SESSION.replace("ESTABLISHED", "TIME_WAIT"), host.now))
    assert role(host, "tapvm5") is None and not gone_keys(host)


def test_the_grace_period_ends_a_departure_even_with_sessions_open(host):
    host.unplug("tapvm5")
    host.deliver(host.ctl.conntrack(SESSION, host.now))
    host.advance(GRACE + 1)
    assert role(host, "tapvm5") is None and not gone_keys(host)


def test_the_conntrack_is_read_only_while_a_departure_lasts(host):
    assert not host.ctl.wants_conntrack(host.now)
    host.unplug("tapvm5")
    assert host.ctl.wants_conntrack(host.now)
    host.deliver(host.ctl.conntrack(SESSION, host.now))
    assert not host.ctl.wants_conntrack(host.now + 1)          # every 2 s at most
    assert host.ctl.wants_conntrack(host.now + 2)


def test_a_fip_vm_leaving_hands_nothing(host):
    host.plug(vm_row(7, fip="203.0.113.70"))
    assert role(host, "tapvm7") is None                        # FIPs move by themselves
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
    lines = "\n".join([SESSION, SESSION.replace("45000", "45001"),
                       SESSION.replace("zone=65000", "zone=60101"),
                       SESSION.replace("ESTABLISHED", "TIME_WAIT"),
                       "udp,orig=(src=10.0.0.5,dst=198.51.100.10,sport=1,dport=2),reply=(src="
                       "198.51.100.10,dst=203.0.113.11,sport=2,dport=20002),zone=65000"])
    assert live_tcp_sessions(lines) == {(65000, "10.0.0.5"): 2, (60101, "10.0.0.5"): 1}
