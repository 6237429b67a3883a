"""The markers the controller writes on a VM port's Interface row, for ovsnat-neutron-agent,
which reports ports up to Neutron from them (as ovn-controller writes `ovn-installed`):

- `ovsnat-installed=true`: the port's flows are all confirmed on the switch. Where the
  port's binding is active (a boot, the end of a live migration) the agent reports the
  port up from it: Neutron sets it ACTIVE and sends Nova `network-vif-plugged`.
- `ovsnat-ready=true`: this host accepts the port's keys, with or without its device. A
  live migration's destination holds os-vif's row before the guest's tap exists (ofport
  -1), and Nova waits for `network-vif-plugged` from there before it moves the guest
  (`live_migration_wait_for_vif_plug`); the agent reports up from this marker where the
  port's binding is inactive. Keys the host rejects (a bad value, a clash, this host's own
  settings) never get it, so Nova never moves a guest to a host that cannot serve it.

- `ovsnat-fip-live=<fip>`: the port's FIP is live here (answered and translated, its flows
  confirmed): the agent reports the floating IP ACTIVE from it, DOWN when it goes.

A port with its device gets both in one write, once its flows are confirmed (ready alone
would be one more OVSDB write per port at every boot); a row without a device gets ready
alone, and keeps it when its device appears (the guest arrived) while its flows go in.
Each goes when it stops being true (keys rejected or gone, a lost clash, the device gone:
installed); a port whose flows are being updated keeps both. A row without a device
is judged when it changes and at every full pass (switch connect, host rebuilt): a rival
plugged meanwhile on this host is seen there, or when the device appears.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ovsnat.core.effects import IfaceKeys
from ovsnat.model import PortError, VmPort
from ovsnat.model.portcheck import check_alone
from ovsnat.model.ports import UNATTACHED
from ovsnat.model.routing import served

LOG = logging.getLogger("ovsnat")
INSTALLED_KEY = "ovsnat-installed"
READY_KEY = "ovsnat-ready"
FIP_LIVE_KEY = "ovsnat-fip-live"


def keys_rejection(host, name: str, external_ids) -> str | None:
    """Why `host` (ovsnat.core.state.HostState) would reject the port of row `name` once its
    device is attached, or None: the checks the host state makes, on the keys alone."""
    try:
        port = VmPort.from_external_ids(name, UNATTACHED, external_ids)
    except PortError as e:
        return str(e)
    net = port.net(host.cfg)
    port = served(port, host.routing.of(net.name)) if net is not None else port
    beaten = host.beaten_by(port)  # worded as the host state words a lost clash
    return check_alone(host.cfg, port) or (
        f"port {port.name!r} ({port.iface_id}): {beaten}" if beaten else None
    )


def changes(
    host, rows: dict, names, confirmed: Callable[[str], bool], logged: dict[str, str]
) -> list[IfaceKeys]:
    """The marker writes for the rows `names` (other owners in it are skipped);
    `confirmed(name)`: the port's flows are all on the switch. A row without a device whose
    keys this host rejects gets one log line per reason (`logged`: row -> reason logged,
    kept by the caller); a row with a device has its rejection logged by the controller."""
    out = []
    for name in sorted(n for n in names if isinstance(n, str)):
        if name not in rows:
            logged.pop(name, None)
            continue
        ids = rows[name].external_ids
        accepted = name in host.valid and name not in host.lost
        installed = accepted and (ids.get(INSTALLED_KEY) == "true" or confirmed(name))
        ready = (
            accepted
            and (installed or ids.get(READY_KEY) == "true")
            or name in host.transient
            and _keys_ok(host, name, ids, logged)
        )
        live = host.live_fip(name) if installed else None
        write = _write(
            name,
            ids,
            {READY_KEY: ready and "true", INSTALLED_KEY: installed and "true", FIP_LIVE_KEY: live},
        )
        if write is not None:
            out.append(write)
    return out


def _keys_ok(host, name: str, ids, logged: dict[str, str]) -> bool:
    reason = keys_rejection(host, name, ids)
    if reason is None:
        logged.pop(name, None)
    elif logged.get(name) != reason:
        LOG.error(
            "ovsnat: skipping %s (not ready for its device: a live migration cannot come here)",
            reason,
        )
        logged[name] = reason
    return reason is None


def _write(name: str, ids, wanted: dict) -> IfaceKeys | None:
    """Each key set to its wanted value, or removed where the value is false."""
    set_ = tuple((k, v) for k, v in wanted.items() if v and ids.get(k) != v)
    remove = tuple(k for k, v in wanted.items() if not v and k in ids)
    return IfaceKeys(name, set_, remove) if set_ or remove else None
