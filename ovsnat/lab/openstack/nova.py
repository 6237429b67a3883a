"""What Nova 34 does with a Neutron port, step by step, for the lab's instances: boot, live
migration with Neutron's multiple port bindings, delete, and Nova's waits for Neutron's
`network-vif-plugged`. Neutron sees exactly the API calls nova-compute and nova-conductor
make, and its Nova notifier posts its events to the stand-in of Nova's API (novaapi.py),
where these steps find them; the hypervisor side (libvirt, QEMU) is the lab's: a VM
namespace, its tap a veth, os-vif's plug.

Nova's options at their defaults: [DEFAULT] vif_plugging_timeout = 300 and
vif_plugging_is_fatal = True, [compute] live_migration_wait_for_vif_plug = True.

Boot (libvirt's _create_guest_with_network): Nova registers network-vif-plugged for each
port not yet active (wait_for_instance_event), plugs (os-vif), creates the domain paused
(its tap exists; here the lab makes the tap first, see vif.py), waits, and only then
resumes the guest. A timeout is fatal: the guest is destroyed and its VIFs unplugged.

Live migration (Neutron 29 has `binding-extended`, so Nova uses port bindings; compute
manager's _do_pre_live_migration_from_source and _post_live_migration):
  1. conductor: POST /ports/{id}/bindings {host: dest}    an inactive binding on dest
  2. source: registers network-vif-plugged of each port, then calls the destination's
     pre_live_migration, which plugs (os-vif)            os-vif's row, no tap (ofport -1)
  3. source: waits for the events (300 s, fatal)          sent by Neutron when the dest's
                                                         agent reports the port up
  4. the guest moves: its tap appears on dest; QEMU announces it (RARP)
  5. source, post_live_migration: PUT .../bindings/{dest}/activate
  6. source: os-vif unplug                                the source's OVS port goes
  7. source, cleanup: DELETE .../bindings/{source}
A timeout in 3 is fatal (_rollback_live_migration): the destination deletes its binding
and unplugs (rollback_live_migration_at_destination), the guest never moved, and the
migration fails (MigrationError).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace

from ovsnat.lab import dhcpclient
from ovsnat.lab.openstack import cloud, instances
from ovsnat.lab.openstack.cloudlab import CloudLab
from ovsnat.lab.openstack.novaapi import VIF_PLUGGED
from ovsnat.lab.openstack.vif import VifSpec
from ovsnat.lab.sh import LabError
from ovsnat.lab.topology import Vm
from ovsnat.lab.traffic import start_server

GUEST_PORT = 7000           # every instance runs a TCP echo server here
VIF_PLUGGING_TIMEOUT = 300.0    # s, nova.conf [DEFAULT] vif_plugging_timeout (and fatal)


class InstanceEventTimeout(LabError):
    """nova.exception.InstanceEventTimeout: an event did not come within the timeout."""


class VirtualInterfaceCreateException(LabError):
    """nova.exception.VirtualInterfaceCreateException: the boot failed on its VIFs."""


class MigrationError(LabError):
    """nova.exception.MigrationError; `migration` has the steps made, rollback included."""

    def __init__(self, message: str, migration: "Migration") -> None:
        super().__init__(message)
        self.migration = migration


@dataclass
class Instance:
    """A booted instance: its Neutron port, its VM, and the VIF as plugged where it runs."""

    name: str
    port_id: str
    fixed_ip: str
    vm: Vm
    spec: VifSpec
    plugged_at: float       # wall clock: when os-vif's plug returned
    dhcp: bool = True
    vif_plugged_at: float = 0.0     # network-vif-plugged's arrival at Nova's API (boot)

    @property
    def host(self) -> str:
        return self.vm.host


@dataclass
class Migration:
    """Wall-clock times of a live migration's steps (time.time()), in the order they were
    made; the destination's row, os-vif's return and the event's arrival may come in any
    order (os-vif returns once ovs-vswitchd applied its row)."""

    steps: dict[str, float] = field(default_factory=dict)

    def mark(self, step: str) -> None:
        self.steps[step] = time.time()


def create_port(cl: CloudLab, host: str, network_id: str, name: str, **kwargs):
    """The port Nova creates for an instance scheduled to `host` (bound at once); the
    instance, with its host, is in Nova's database first."""
    cl.agents_alive(host)
    instance_uuid = str(uuid.uuid4())
    cl.services.nova_api.set_instance(instance_uuid, host)
    return cl.nova.network.create_port(
        network_id=network_id, name=name, project_id=cloud.PROJECT,
        device_owner="compute:nova", device_id=instance_uuid, binding_host_id=host,
        **kwargs)


def wait_for_vif_plugged(cl: CloudLab, instance_uuid: str, port_ids: list[str],
                         since: float, timeout: float) -> dict[str, float]:
    """Nova's wait_for_instance_event for network-vif-plugged of each port, registered at
    `since` (before the plug: an event that comes early is not missed). Returns each
    port's event arrival time at Nova's API; a `failed` event raises at once (Nova's
    error_callback, fatal), none within `timeout` raises InstanceEventTimeout."""
    def arrived() -> dict[str, float] | None:
        got: dict[str, float] = {}
        for event in cl.services.nova_api.events(since):
            if event["name"] != VIF_PLUGGED or event["server_uuid"] != instance_uuid or \
                    event.get("tag") not in port_ids or event["code"] != 200:
                continue
            if event["status"] == "failed":
                raise LabError(f"Neutron reported failure: {VIF_PLUGGED} for port "
                               f"{event['tag']} of instance {instance_uuid}")
            got.setdefault(event["tag"], event["at"])
        return got if len(got) == len(port_ids) else None
    deadline = time.monotonic() + timeout
    while (got := arrived()) is None:
        if time.monotonic() >= deadline:
            raise InstanceEventTimeout(f"Timeout waiting for {VIF_PLUGGED} of {port_ids} "
                                       f"for instance {instance_uuid} ({timeout:g} s)")
        time.sleep(0.02)
    return got


def boot(cl: CloudLab, name: str, host: str, network_id: str | None = None,
         dhcp: bool = True, timeout: float = VIF_PLUGGING_TIMEOUT) -> Instance:
    """Port, the paused domain's tap, plug, network-vif-plugged (module doc); then the
    guest runs: with dhcp its udhcpc configures eth0 from ovsnat's answer (as a cloud image
    does), else the fixed IP is set by hand (as config drive would)."""
    port = create_port(cl, host, network_id or cl.topo.tenant_net, f"{name}-port")
    spec = cloud.vif_spec(cl.conn, port, name)
    fixed = port.fixed_ips[0]
    subnet = cl.conn.network.get_subnet(fixed["subnet_id"])
    vm = instances.create_vm(cl.lab, name, host, spec, fixed["ip_address"], subnet.cidr,
                             subnet.gateway_ip, dhcp=dhcp)
    since = time.time()
    plugged_at = instances.os_vif(cl.lab, host, "plug", spec)
    try:
        event = wait_for_vif_plugged(cl, spec.instance_uuid, [port.id], since, timeout)
    except LabError as e:       # fatal: the guest is destroyed, its VIF unplugged
        instances.os_vif(cl.lab, host, "unplug", spec)
        cl.lab.remove_vm(vm)
        raise VirtualInterfaceCreateException(f"{name} on {host}: {e}") from e
    start_server(cl.lab, f"{name}-tcp", vm.ns, "tcp", GUEST_PORT)     # the guest runs
    if dhcp:
        dhcpclient.start(cl.lab, vm)
    return Instance(name, port.id, fixed["ip_address"], vm, spec, plugged_at, dhcp,
                    event[port.id])


def live_migrate(cl: CloudLab, inst: Instance, dest: str,
                 timeout: float = VIF_PLUGGING_TIMEOUT) -> Migration:
    """Move a running instance to `dest` as Nova does (module doc). Returns step times;
    raises MigrationError after the rollback when the destination's event does not come."""
    net, src, m = cl.nova.network, inst.host, Migration()
    binding = net.create_port_binding(inst.port_id, host=dest)
    m.mark("binding created")
    dest_spec = replace(inst.spec, bridge=binding.vif_details["bridge_name"],
                        datapath_type=binding.vif_details.get("datapath_type", "system"))
    since = time.time()
    with instances.RowWatch(cl.lab, dest, dest_spec.vif_name) as row:
        plugged = instances.os_vif(cl.lab, dest, "plug", dest_spec)
        m.steps["row created at destination"] = row.inserted_at()
    m.steps["plugged at destination"] = plugged       # os-vif returned
    try:
        event = wait_for_vif_plugged(cl, inst.spec.instance_uuid, [inst.port_id], since,
                                     timeout)
    except LabError as e:
        m.mark(f"no {VIF_PLUGGED}: {e}")
        rollback_at_destination(cl, inst, dest, dest_spec, m)
        raise MigrationError(f"{inst.name} to {dest}: {e}; rolled back, still on {src}",
                             m) from e
    m.steps[VIF_PLUGGED] = event[inst.port_id]      # its arrival at Nova's API
    instances.move_tap(cl.lab, inst.vm, dest)
    cl.lab.announce(inst.vm, "rarp")
    m.mark("guest on destination")
    net.activate_port_binding(inst.port_id, dest)
    m.mark("binding activated")
    instances.os_vif(cl.lab, src, "unplug", inst.spec)
    m.mark("unplugged at source")
    net.delete_port_binding(inst.port_id, src)
    m.mark("source binding deleted")
    inst.spec = dest_spec
    cl.services.nova_api.set_instance(inst.spec.instance_uuid, dest)
    return m


def rollback_at_destination(cl: CloudLab, inst: Instance, dest: str, dest_spec: VifSpec,
                            m: Migration) -> None:
    """Nova's rollback_live_migration_at_destination: the destination's bindings go
    (setup_networks_on_host teardown), then its VIFs (the driver's destroy)."""
    cl.nova.network.delete_port_binding(inst.port_id, dest)
    m.mark("destination binding deleted")
    instances.os_vif(cl.lab, dest, "unplug", dest_spec)
    m.mark("unplugged at destination")


def delete(cl: CloudLab, inst: Instance) -> None:
    """Unplug, delete the port, and the guest is gone (its servers and DHCP client too)."""
    instances.os_vif(cl.lab, inst.host, "unplug", inst.spec)
    cl.nova.network.delete_port(inst.port_id)
    cl.services.nova_api.set_instance(inst.spec.instance_uuid, None)
    cl.lab.stop_proc(f"{inst.name}-tcp")
    cl.lab.remove_vm(inst.vm)
