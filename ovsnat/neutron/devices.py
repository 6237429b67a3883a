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

So the marker the agent reports up from depends on this host's binding:
- inactive: `ovsnat-ready=true`, the controller accepts the port's keys on this host
  (ovsnat.markers). Rejected keys never get it, so no event, and Nova keeps the guest
  where it is rather than move it to a host that cannot serve it.
- active, or no binding here (a port bound without a binding record for this host, an
  older server that does not say): `ovsnat-installed=true`, the flows are confirmed, as
  always.
When the binding is activated, Neutron sets the port DOWN and casts `binding_activate`; the
agent forgets it reported the port and reports it up again from `ovsnat-installed`.
"""

from __future__ import annotations

from typing import Mapping

from ovsnat.neutron.keys import INSTALLED, READY

ACTIVE, INACTIVE = "ACTIVE", "INACTIVE"     # a port binding's status in Neutron


def up_marker(binding: str | None) -> str:
    """The marker that says a port is up on this host, given this host's binding status."""
    return READY if binding == INACTIVE else INSTALLED


def ports_up(rows: Mapping[str, Mapping[str, str]],
             bindings: Mapping[str, str | None]) -> set[str]:
    """The local ports to report up: port id -> the row's external_ids, port id -> this
    host's binding status (ports Neutron has not answered for yet: none)."""
    return {pid for pid, ids in rows.items()
            if ids.get(up_marker(bindings.get(pid))) == "true"}
