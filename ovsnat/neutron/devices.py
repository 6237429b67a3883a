"""When ovsnat-neutron-agent reports a port up to Neutron, and what Neutron makes of it.

Pure (no Neutron import), so unit tests in ovsnat's own virtualenv pin the decision down.

Neutron's `update_device_up` (neutron/plugins/ml2/rpc.py) does one of two things:
- from the host of the port's active binding: the L2 provisioning block completes, the
  port goes ACTIVE, and Neutron's Nova notifier sends `network-vif-plugged` (a boot, and
  the end of a live migration once Nova activated the destination's binding);
- from a host holding an inactive binding of the port (a live migration's destination):
  nothing changes in Neutron, but `notify_port_active_direct` sends Nova
  `network-vif-plugged` at once. Nova 34 waits for exactly that event before the guest moves
  (`live_migration_wait_for_vif_plug`, default on; `vif_plugging_timeout` 300 s, fatal).
  At that moment the destination holds os-vif's row without a tap (ofport -1): no flow of
  the port can be confirmed yet.

So the marker the agent reports up from depends on this host's binding of the port:
- inactive and bound (vif_type set by ovsnat's driver for this host): a live migration's
  destination, waiting for Nova to activate it. `ovsnat-ready=true`: the controller accepts
  the port's keys on this host (ovsnat.core.markers). Rejected keys never get it, so no event,
  and Nova keeps the guest where it is rather than move it to a host that cannot serve it.
- anything else: `ovsnat-installed=true`, the flows are confirmed, as always. That is the
  active binding (a boot, the destination once activated), no binding record here (an
  older server does not say), and the source's binding once Neutron deactivated it at the
  activation (INACTIVE, vif_type `unbound`: the guest left, the port must not be reported
  up from there again).
When the destination's binding is activated, Neutron sets the port DOWN and casts
`binding_activate`; the agent forgets it reported the port and reports it up again from
`ovsnat-installed`.

Any change of a port's binding re-binds it and sets it DOWN (ML2's _process_port_binding),
then casts `port_update`: Nova does it on the source at the start of every live migration
(`migrating_to` = the destination, in the binding's profile) and again when it clears the
key (a rollback). Neutron's OVS agent then reports the port up again, unless it is migrating
to another host (`migrating_to`); so does this agent (`forgotten`): a port it reported up
that Neutron, asked again, no longer has ACTIVE here, while this host holds its active
binding and no migration moves it elsewhere, is reported again if its marker is there.
Without it, a port whose live migration Nova rolled back stayed DOWN on its host. Never
while `migrating_to` names another host: the port's up would make Neutron send Nova
`network-vif-plugged`, which Nova's source, waiting for the destination's, takes for it and
moves the guest to a host that never said it could serve the port (both found by the lab
with Nova's own code). An older server that does not say `migrating_to`: never again.
"""

from __future__ import annotations

from collections.abc import Mapping

from ovsnat.neutron.keys import INSTALLED, READY

ACTIVE, INACTIVE = "ACTIVE", "INACTIVE"  # a port binding's status in Neutron
UNBOUND = ("unbound", "binding_failed")  # vif_types of a binding no driver bound


def up_marker(binding: Mapping | None) -> str:
    """The marker that says a port is up on this host, given this host's binding of it
    ({"status", "vif_type"} as get_ports answers it, or None)."""
    if binding and binding.get("status") == INACTIVE and binding.get("vif_type") not in UNBOUND:
        return READY
    return INSTALLED


def ports_up(
    rows: Mapping[str, Mapping[str, str]], bindings: Mapping[str, Mapping | None]
) -> set[str]:
    """The local ports to report up: port id -> the row's external_ids, port id -> this
    host's binding (ports Neutron has not answered for yet: none)."""
    return {pid for pid, ids in rows.items() if ids.get(up_marker(bindings.get(pid))) == "true"}


def forgotten(answers: Mapping[str, Mapping], reported_up: set[str]) -> set[str]:
    """The ports this agent reported up to report again (module doc): port id -> Neutron's
    answer for it ({"up", "binding"} as get_ports answers it), for the ports just asked."""

    def settled_here(binding: Mapping | None) -> bool:
        return (
            bool(binding)
            and binding.get("status") == ACTIVE
            and "migrating_to" in binding
            and not binding["migrating_to"]
        )

    return {
        pid
        for pid, answer in answers.items()
        if not answer.get("up") and settled_here(answer.get("binding"))
    } & reported_up
