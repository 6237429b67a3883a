"""The lab's servers as a cloud's user drives them: booted, live-migrated and deleted by Nova
through its API (openstacksdk, as the lab's operator: the admin in the tenant's project,
who may choose a server's hypervisor and live-migrate it), and seen by the lab through the
guest its virt driver runs (virt/guest.py).

Nothing here plays a part of OpenStack: Nova decides and waits (for `network-vif-plugged`,
with its defaults: 300 s, fatal), Neutron binds and notifies, the lab's virt driver plugs
with os-vif where libvirt's does. What the lab adds is measurement: when a request was
made, when the destination's Interface row appeared (rowwatch.RowWatch, ovsdb-server's
own timestamp), when Nova's API received each event (novalog.py), when the guest moved.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ovsnat.lab.openstack import novalog
from ovsnat.lab.openstack.rowwatch import RowWatch
from ovsnat.lab.openstack.virt.guest import GUEST_PORT, Guest
from ovsnat.lab.sh import LabError, wait_for

__all__ = [
    "GUEST_PORT",
    "Server",
    "Migration",
    "boot",
    "boot_many",
    "wait_active",
    "live_migrate",
    "delete",
]

# Our own waits, not Nova's: a boot that is neither ACTIVE nor ERROR after this failed the
# test (Nova's vif_plugging_timeout, 300 s, would set it ERROR later); a live migration
# that has not ended after this has hung.
BOOT_TIMEOUT = 120.0
MIGRATION_TIMEOUT = 120.0
FINAL = ("completed", "error", "failed", "cancelled", "done")


@dataclass
class Server:
    """A server Nova booted: its id, its one port (fixed IP, MAC) and the guest the lab's
    virt driver runs for it (namespace, taps, DHCP client), read from the guest's record
    at each access (a live migration moves it)."""

    id: str
    name: str
    port_id: str
    fixed_ip: str
    mac: str
    guests_dir: str
    times: dict[str, float] = field(default_factory=dict)  # wall clock of each step

    @property
    def guest(self) -> Guest:
        guest = Guest.load(self.guests_dir, self.id)
        if guest is None:
            raise LabError(f"server {self.name} ({self.id}) has no guest")
        return guest

    @property
    def host(self) -> str:
        return self.guest.host

    @property
    def ns(self) -> str:
        return self.guest.ns

    @property
    def tap(self) -> str:
        """Nova's name for the port's tap (nova.network.model NIC_NAME_LEN, 14)."""
        return ("tap" + self.port_id)[:14]

    def wait_lease(self, timeout: float = 20.0) -> dict[str, str]:
        """The guest's first DHCP lease (ovsnat's DHCP answered)."""
        try:
            return wait_for(
                lambda: self.guest.lease() or None,
                timeout,
                interval=0.05,
                what=f"{self.name}'s DHCP lease",
            )
        except LabError:
            raise LabError(
                f"{self.name} got no DHCP lease within {timeout} s; client "
                f"events: {self.guest.dhcp_events()}"
            ) from None


def _create(
    cl,
    name: str,
    host: str | None,
    network: str | None,
    port: str | None = None,
) -> str:
    nic = {"port": port} if port else {"uuid": network or cl.topo.tenant_net}
    server = cl.operator.compute.create_server(
        name=name,
        flavor_id=cl.flavor,
        image_id=cl.image,
        networks=[nic],
        **({"host": host} if host else {}),
    )
    return server.id


def wait_active(
    cl,
    server_id: str,
    name: str,
    requested: float = 0.0,
    lease: bool = False,
    timeout: float = BOOT_TIMEOUT,
) -> Server:
    """Wait for ACTIVE (Nova's answer to ERROR: its fault), then the server's port and
    guest; with `lease`, its first DHCP lease too."""

    def state():
        s = cl.admin.compute.get_server(server_id)
        if s.status == "ERROR":
            raise LabError(f"Nova failed to boot {name}: {s.fault}")
        return s if s.status == "ACTIVE" else None

    wait_for(state, timeout, interval=0.1, what=f"{name} ACTIVE")
    active = time.time()
    ports = cl.admin.network.ports(device_id=server_id)
    if len(ports) != 1:
        raise LabError(f"{name}: {len(ports)} ports, the lab's servers have one")
    port = ports[0]
    server = Server(
        server_id,
        name,
        port.id,
        port.fixed_ips[0]["ip_address"],
        port.mac_address,
        cl.stack.sp.guests,
        {"requested": requested, "active": active},
    )
    if lease:
        server.wait_lease()
    return server


def boot(
    cl,
    name: str,
    host: str | None = None,
    network: str | None = None,
    lease: bool = True,
    timeout: float = BOOT_TIMEOUT,
    port: str | None = None,
) -> Server:
    """`openstack server create` through openstacksdk as the operator, on `host` (None:
    where Nova's scheduler puts it), on `network` (default the tenant's) or with a port the
    user made (`port`); returns once Nova says ACTIVE (it waited for Neutron's
    network-vif-plugged before the guest ran) and, with `lease`, the guest has its lease."""
    requested = time.time()
    server_id = _create(cl, name, host, network, port)
    return wait_active(cl, server_id, name, requested, lease, timeout)


def boot_many(
    cl,
    placements: list[tuple],
    network: str | None = None,
    lease: bool = True,
    timeout: float = BOOT_TIMEOUT,
) -> list[Server]:
    """Several servers at once, each (name, host) or (name, host, network): every request
    first, then the waits, so Nova builds them side by side as it would for several
    users."""
    requested = time.time()
    ids = [_create(cl, p[0], p[1], p[2] if len(p) > 2 else network) for p in placements]
    with ThreadPoolExecutor(min(8, len(ids))) as pool:
        futures = [
            pool.submit(wait_active, cl, sid, p[0], requested, lease, timeout)
            for sid, p in zip(ids, placements, strict=False)
        ]
        return [f.result() for f in futures]


@dataclass
class Migration:
    """A live migration as Nova made it: its final status (Nova's migration record) and the
    wall-clock time of each step seen, in order of time (the row, the event and the guest's
    move come from ovsdb-server, Nova's API log and the guest's record)."""

    source: str
    dest: str
    status: str = ""
    steps: dict[str, float] = field(default_factory=dict)

    def gap(self, first: str, last: str) -> float:
        return self.steps[last] - self.steps[first]


REQUESTED = "live migration requested"
ROW = "row created at destination"
EVENT = f"{novalog.VIF_PLUGGED} at Nova's API"
MOVED = "guest on destination"
DONE = "migration completed"


def live_migrate(
    cl,
    server: Server,
    dest: str,
    timeout: float = MIGRATION_TIMEOUT,
) -> Migration:
    """`openstack server migrate --live-migration --host DEST` through openstacksdk, with
    Nova's defaults; returns once Nova's migration record has a final status and, if it
    completed, the server is ACTIVE on `dest` again. The destination's row is watched from
    before the request; the event is the first network-vif-plugged for the server's port
    that Nova's API received after the request (the destination's: the source's port is
    long active)."""
    m = Migration(server.host, dest)
    before = {mig.id for mig in _migrations(cl, server.id)}
    with RowWatch(cl.lab, dest, server.tap) as row:
        m.steps[REQUESTED] = time.time()
        cl.operator.compute.live_migrate_server(server.id, host=dest, block_migration="auto")
        m.status = wait_for(
            lambda: _final(cl, server.id, before),
            timeout,
            interval=0.1,
            what=f"the live migration of {server.name}",
        )
        m.steps[f"migration {m.status}"] = time.time()
        inserted = row.inserted_or_none()
    if inserted is not None:
        m.steps[ROW] = inserted
    event = novalog.first_event(
        cl.stack.paths, novalog.VIF_PLUGGED, server.port_id, m.steps[REQUESTED]
    )
    if event is not None:
        m.steps[EVENT] = event.at
    if m.status == "completed":
        wait_for(
            lambda: _settled_on(cl, server.id, dest),
            30,
            interval=0.1,
            what=f"{server.name} ACTIVE on {dest}",
        )
        m.steps[MOVED] = server.guest.times["moved"]
    m.steps = dict(sorted(m.steps.items(), key=lambda kv: kv[1]))
    return m


def _migrations(cl, server_id: str) -> list:
    return cl.admin.compute.migrations(server_id=server_id, migration_type="live-migration")


def _final(cl, server_id: str, before: set[str]) -> str | None:
    """The status of the server's live migration that is not one of `before` (the ids of
    its migration records before the request), once it is final."""
    new = [mig for mig in _migrations(cl, server_id) if mig.id not in before]
    if len(new) > 1:
        raise LabError(f"{len(new)} new live migrations of {server_id}, one was asked for")
    return new[0].status if new and new[0].status in FINAL else None


def _settled_on(cl, server_id: str, host: str) -> bool:
    s = cl.admin.compute.get_server(server_id)
    return s.status == "ACTIVE" and s.task_state is None and s.compute_host == host


def delete(cl, server: Server, timeout: float = 60.0) -> None:
    """`openstack server delete --wait`: gone from Nova (its guest and port with it)."""
    cl.operator.compute.delete_server(server.id)
    wait_for(
        lambda: cl.admin.compute.find_server(server.id, ignore_missing=True) is None,
        timeout,
        interval=0.1,
        what=f"{server.name} deleted",
    )
