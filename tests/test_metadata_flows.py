"""Metadata's flows as the controller keeps them (docs/metadata.md), against a model switch:
they come with the proxy's port and go with it, the port is never taken for a VM, and a
restarted controller sends nothing. What the flows do to real packets is tested with Nova's
own metadata API (tests/metadata_cases.py); the flows themselves in flows/metadata.flows."""

from __future__ import annotations

from ovsnat.compile.pipeline import CLASSIFY, META_REPLY, VM_ROUTE
from ovsnat.model.rows import IfaceRow
from tests.hostsim import SimHost, vm_row

PROXY = IfaceRow("ovsnat-meta", 3, {}, "up")
OPTIONS = {"metadata_port": PROXY.name}


def steered(h: SimHost) -> bool:
    """The host-level flow that sends a port's request to the proxy is on the switch."""
    return bool(h.switch.with_identity(VM_ROUTE, 200))


def replies(h: SimHost) -> int:
    """Ports whose replies the switch turns back (one meta_reply flow each)."""
    return len(h.switch.with_identity(META_REPLY, 100))


def in_step(h: SimHost) -> bool:
    return h.switch.flow_keys() == h.desired_keys()


def test_the_flows_come_with_the_proxys_port_and_go_with_it():
    h = SimHost(**OPTIONS).start()
    h.plug(vm_row(5), vm_row(6))
    assert not steered(h) and replies(h) == 0 and in_step(h)  # no proxy yet: none
    classify = len(h.switch.with_identity(CLASSIFY, 410))  # DHCP's punt shares the priority
    h.plug(PROXY)
    assert steered(h) and replies(h) == 2 and in_step(h)
    # each port's request, and the proxy's way back
    assert len(h.switch.with_identity(CLASSIFY, 410)) == classify + 3
    h.unplug(PROXY.name)  # the proxy's port removed (`--cleanup`): nothing steered to it
    assert not steered(h) and replies(h) == 0 and in_step(h)


def test_without_metadata_port_nothing_is_steered_even_with_the_port_on_the_bridge():
    h = SimHost().start()
    h.plug(PROXY, vm_row(5))
    assert not steered(h) and replies(h) == 0 and in_step(h)


def test_the_proxys_port_is_not_a_vm_and_a_restart_sends_nothing():
    first = SimHost(**OPTIONS)
    first.rows.update({r.name: r for r in (PROXY, vm_row(5), vm_row(6))})
    first.start()
    assert steered(first) and in_step(first)
    assert PROXY.name not in first.ctl.host.valid
    assert PROXY.name not in {r.name for r in first.ctl.host.rejected}
    mods = first.switch.flow_mods
    again = SimHost(first.switch, **OPTIONS)
    again.rows = dict(first.rows)
    again.start()
    assert first.switch.flow_mods == mods and in_step(again)
