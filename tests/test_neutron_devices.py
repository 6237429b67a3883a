"""When ovsnat-neutron-agent reports a port up (ovsnat.neutron.devices: pure, no Neutron
needed): from `ovsnat-ready` where this host holds a bound inactive binding (a live
migration's destination, where Nova waits for network-vif-plugged before the guest moves),
from `ovsnat-installed` everywhere else."""

from __future__ import annotations

from ovsnat.neutron.devices import forgotten, ports_up, up_marker
from ovsnat.neutron.keys import INSTALLED, READY

OS_VIF = {"iface-id": "p", "attached-mac": "fa:16:3e:00:00:01", "iface-status": "active"}
KEYS = {**OS_VIF, "ovsnat-fixed-ip": "10.1.0.5", "ovsnat-network": "n1"}
ACTIVE = {"status": "ACTIVE", "vif_type": "ovs"}
DESTINATION = {"status": "INACTIVE", "vif_type": "ovs"}  # created by Nova's conductor
DEACTIVATED = {"status": "INACTIVE", "vif_type": "unbound"}  # the source, after activation
FAILED = {"status": "INACTIVE", "vif_type": "binding_failed"}


def test_a_destination_with_an_inactive_binding_reports_up_once_its_keys_are_accepted():
    """os-vif's row, the keys, no tap: the controller marks it ready, not installed. Up on
    the destination (Nova gets its event), nowhere else."""
    row = {**KEYS, READY: "true"}
    assert ports_up({"p": row}, {"p": DESTINATION}) == {"p"}
    for binding in (ACTIVE, DEACTIVATED, FAILED, None):
        assert ports_up({"p": row}, {"p": binding}) == set(), binding
    assert ports_up({"p": row}, {}) == set()


def test_at_boot_on_the_active_host_and_on_the_source_up_means_the_flows_are_confirmed():
    both = {**KEYS, READY: "true", INSTALLED: "true"}
    for binding in (ACTIVE, DEACTIVATED, None):
        assert ports_up({"p": both}, {"p": binding}) == {"p"}
        assert ports_up({"p": {**KEYS, READY: "true"}}, {"p": binding}) == set()
        assert up_marker(binding) == INSTALLED
    assert up_marker(DESTINATION) == READY


def test_a_port_whose_keys_the_host_rejects_is_never_reported_up():
    """Rejected keys get neither marker: not up whatever the binding; a port beside it
    with good keys is (the control)."""
    rows = {
        "bad": {**KEYS, "iface-id": "bad"},
        "good": {**KEYS, READY: "true"},
        "os-vif only": OS_VIF,
    }
    for binding in (ACTIVE, DESTINATION, DEACTIVATED, None):
        up = ports_up(rows, {pid: binding for pid in rows})
        assert "bad" not in up and "os-vif only" not in up
        assert ("good" in up) == (binding is DESTINATION)


def test_a_marker_that_is_not_true_does_not_count():
    assert ports_up({"p": {**KEYS, READY: "false"}}, {"p": DESTINATION}) == set()
    assert ports_up({"p": {**KEYS, INSTALLED: ""}}, {"p": ACTIVE}) == set()


def test_a_port_neutron_re_bound_and_set_down_here_is_reported_again_unless_it_moves():
    """Nova's `migrating_to` in the source binding's profile (every live migration) and its
    removal (a rollback) re-bind the port and set it DOWN. Reported again: a port this host
    holds the active binding of, migrating nowhere (the rollback). Not: one migrating to
    another host (its up would send Nova the event its source waits for from the
    destination), a destination's inactive binding, a deactivated source, a port Neutron
    has ACTIVE, one this agent never reported, and any from a server that does not say
    `migrating_to` (older: never again, as before)."""
    here = {"status": "ACTIVE", "vif_type": "ovs", "migrating_to": None}
    answers = {
        "rolled-back": {"up": False, "binding": here},
        "moving": {"up": False, "binding": {**here, "migrating_to": "hv2"}},
        "destination": {"up": False, "binding": {**DESTINATION, "migrating_to": None}},
        "deactivated": {"up": False, "binding": {**DEACTIVATED, "migrating_to": None}},
        "steady": {"up": True, "binding": here},
        "old-server": {"up": False, "binding": {"status": "ACTIVE", "vif_type": "ovs"}},
        "no-binding": {"up": False, "binding": None},
        "never-reported": {"up": False, "binding": here},
    }
    reported = set(answers) - {"never-reported"}
    assert forgotten(answers, reported) == {"rolled-back"}
    assert forgotten({}, reported) == set()
