"""When ovsnat-neutron-agent reports a port up (ovsnat.neutron.devices: pure, no Neutron
needed): from `ovsnat-ready` where this host holds a bound inactive binding (a live
migration's destination, where Nova waits for network-vif-plugged before the guest moves),
from `ovsnat-installed` everywhere else."""

from __future__ import annotations

from ovsnat.neutron.devices import ports_up, up_marker
from ovsnat.neutron.keys import INSTALLED, READY

OS_VIF = {"iface-id": "p", "attached-mac": "fa:16:3e:00:00:01", "iface-status": "active"}
KEYS = {**OS_VIF, "ovsnat-fixed-ip": "10.1.0.5", "ovsnat-network": "n1"}
ACTIVE = {"status": "ACTIVE", "vif_type": "ovs"}
DESTINATION = {"status": "INACTIVE", "vif_type": "ovs"}        # created by Nova's conductor
DEACTIVATED = {"status": "INACTIVE", "vif_type": "unbound"}    # the source, after activation
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
    rows = {"bad": {**KEYS, "iface-id": "bad"}, "good": {**KEYS, READY: "true"},
            "os-vif only": OS_VIF}
    for binding in (ACTIVE, DESTINATION, DEACTIVATED, None):
        up = ports_up(rows, {pid: binding for pid in rows})
        assert "bad" not in up and "os-vif only" not in up
        assert ("good" in up) == (binding is DESTINATION)


def test_a_marker_that_is_not_true_does_not_count():
    assert ports_up({"p": {**KEYS, READY: "false"}}, {"p": DESTINATION}) == set()
    assert ports_up({"p": {**KEYS, INSTALLED: ""}}, {"p": ACTIVE}) == set()
