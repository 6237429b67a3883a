"""A bundle is decided when it is made (ovsnat.openflow.session): its xids and keys, before any byte
is encoded. Only encoding is streamed as the shim writes, inside its fault boundary, so a
failure there is a fault like any other: the controller recovers and nothing is left in
flight for ever (never in sync, audits blocked, markers never set)."""

from __future__ import annotations

import pytest

from ovsnat.core.markers import INSTALLED_KEY
from ovsnat.core.state import HOST
from ovsnat.openflow import blobs, messages
from ovsnat.openflow import session as switch
from tests.hostsim import SimHost, vm_row


def test_a_bundles_keys_are_expected_before_it_is_encoded():
    sim = SimHost().start()
    sim.rows["tapvm2"] = vm_row(2)
    from ovsnat.model.rows import Changes

    out = sim.ctl.ovsdb(Changes({"tapvm2": sim.rows["tapvm2"]}), sim.now)
    [chunks] = [
        item for item in out if not isinstance(item, (bytes,)) and hasattr(item, "__next__")
    ]
    [bundle] = sim.ctl.sw.session.bundles.values()
    keys = set(sim.ctl.host.owner_keys("tapvm2"))
    assert keys and set(bundle.add_keys) == keys  # decided, nothing encoded yet
    assert keys <= sim.ctl.sw.session.expected()
    assert bundle.size == len(keys)
    sim.deliver([chunks])  # written: the switch has them
    assert keys <= sim.switch.flow_keys()


def test_an_encoding_failure_lands_in_the_fault_boundary_and_nothing_stays_in_flight(monkeypatch):
    """As the shim does: the call and the writing of what it returned in one try; on an
    exception, recover(). The bundle that failed mid-way is forgotten with the session,
    the switch is re-dumped, and the VM ends up programmed and marked."""
    sim = SimHost().start()
    real = messages.bundle_add
    broken = {"on": True}

    def bundle_add(bundle_id, msg):  # fails on 10.0.0.2's flows, mid-bundle
        if broken["on"] and blobs.flow_mod_keys(msg)[0][1] >> 24 & 0xFFFFFFFF == 0x0A000002:
            raise ValueError("cannot encode")
        return real(bundle_id, msg)

    monkeypatch.setattr(switch.messages, "bundle_add", bundle_add)
    sim.rows["tapvm2"] = vm_row(2)
    from ovsnat.model.rows import Changes

    with pytest.raises(ValueError):
        sim.deliver(sim.ctl.ovsdb(Changes({"tapvm2": sim.rows["tapvm2"]}), sim.now))
    assert sim.ctl.sw.session.bundles  # in flight for ever, unless...
    broken["on"] = False
    sim.deliver(sim.ctl.recover(sim.now))  # ...the fault boundary recovers
    assert not sim.ctl.sw.session.bundles
    assert sim.ctl.status(sim.now)["in_sync"]
    assert set(sim.ctl.host.owner_keys("tapvm2")) <= sim.switch.flow_keys()
    assert dict(sim.rows["tapvm2"].external_ids).get(INSTALLED_KEY) == "true"


def test_an_add_that_was_not_announced_raises():
    session = switch.SwitchSession(lambda: 0.0)
    session.installed, session.meters = set(), set()
    flow_mod = blobs.with_xid(
        b"".join(messages.flow_add(f, 0) for f in SimHost().start().ctl.host.owner_flows(HOST)[:1]),
        0,
    )
    key = blobs.flow_mod_keys(flow_mod)[0]
    with pytest.raises(ValueError, match="not announced"):
        b"".join(session.bundle([], [(key[0], key[1] + 1)], [(key, flow_mod)], {"x"}))
    with pytest.raises(ValueError, match="announced"):
        b"".join(session.bundle([], [key, (0, 1)], [(key, flow_mod)], {"x"}))
    assert b"".join(session.bundle([], [key], [(key, flow_mod)], {"x"}))  # (control)
