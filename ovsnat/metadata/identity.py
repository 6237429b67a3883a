"""Who is asking: the VM port a request came from, as OVSDB describes it now (pure).

The flows put the asking port's ofport into the request's source address; the proxy
reads that port's Interface row and trusts nothing the VM says about itself. Only a row
with `ovsnat-fixed-ip` is a VM port, and only one with the Neutron agent's
`ovsnat-device-id` and `ovsnat-project` can be vouched for to Nova: anything else is
refused, never guessed (two rows with one ofport on the bridge cannot happen in a sane
OVSDB, and a wrong guess would hand one tenant another's keys).

The answer is checked again before it goes back (`still_holds`): the port can be deleted
while Nova answers, and its ofport given to a new port, whose VM would then receive the
first one's keys and user data (the flows deliver by ofport). So the row the request was
identified by (its `_uuid`) must still exist, with that ofport, saying the same thing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ovsnat.model.ports import KEY_DEVICE_ID, KEY_FIXED_IP, KEY_PROJECT
from ovsnat.ovsdb.lookup import PortRow

# What a header value may carry: the ids are uuids (or hex project ids), so anything
# outside printable ASCII is a broken row, not a name to pass on to Nova.
HEADER_SAFE = re.compile(r"[\x21-\x7e]{1,255}\Z")


@dataclass(frozen=True)
class Instance:
    """The VM behind one port, with what Nova must be told about it."""

    ofport: int
    port_name: str
    row_uuid: str  # the Interface row's _uuid: what `still_holds` asks about again
    fixed_ip: str
    device_id: str  # the instance uuid
    project: str


@dataclass(frozen=True)
class Refusal:
    """Why a port gets no metadata; `reason` is the body of the 404 and the log line."""

    reason: str


def identify(ofport: int, rows: Sequence[PortRow]) -> Instance | Refusal:
    """The instance on port `ofport`, given the bridge's rows with that ofport."""
    vms = [r for r in rows if KEY_FIXED_IP in r.external_ids]
    if not vms:
        return Refusal(f"no VM port has ofport {ofport} on this host")
    if len(vms) > 1:
        names = ", ".join(sorted(r.name for r in vms))
        return Refusal(f"ports {names} share ofport {ofport}: refusing to guess")
    row = vms[0]
    ids = row.external_ids
    missing = [k for k in (KEY_DEVICE_ID, KEY_PROJECT) if not ids.get(k)]
    if missing:
        keys = " and ".join(f"external_ids:{k}" for k in missing)
        return Refusal(f"port {row.name} has no {keys}: not a port Neutron vouches for")
    try:
        fixed = str(ipaddress.IPv4Address(ids[KEY_FIXED_IP].strip()))
    except ValueError:
        return Refusal(f"port {row.name}: external_ids:{KEY_FIXED_IP} is not an IPv4 address")
    unsafe = [k for k in (KEY_DEVICE_ID, KEY_PROJECT) if not HEADER_SAFE.match(ids[k])]
    if unsafe:
        return Refusal(f"port {row.name}: external_ids:{unsafe[0]} is not a printable id")
    return Instance(
        ofport=ofport,
        port_name=row.name,
        row_uuid=row.uuid,
        fixed_ip=fixed,
        device_id=ids[KEY_DEVICE_ID],
        project=ids[KEY_PROJECT],
    )


def still_holds(inst: Instance, row: PortRow | None) -> bool:
    """Whether `row`, the Interface row `inst` was identified by as OVSDB has it now,
    still has the ofport and says the same about the VM (None: the row is gone)."""
    return row is not None and row.ofport == inst.ofport and identify(inst.ofport, [row]) == inst
