"""What Nova does with a Neutron port, step by step, for the lab's instances: boot, live
migration with Neutron's multiple port bindings, delete. Neutron sees exactly the API calls
nova-compute and nova-conductor make; the hypervisor side (libvirt, QEMU) is the lab's: a VM
namespace, its tap a veth, os-vif's plug.

Live migration, in Nova's order (Neutron 29 has the `binding-extended` extension, so Nova
uses port bindings rather than rewriting binding:host_id):
  1. conductor: POST /ports/{id}/bindings {host: dest}    an inactive binding on dest
  2. dest, pre_live_migration: os-vif plug                the OVS port exists, no device yet
  3. the guest moves: its tap appears on dest; QEMU announces it (RARP)
  4. source, post_live_migration: PUT .../bindings/{dest}/activate
  5. source: os-vif unplug                                the source's OVS port goes
  6. source, cleanup: DELETE .../bindings/{source}
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace

from ovsnat.lab import dhcpclient
from ovsnat.lab.openstack import cloud, instances
from ovsnat.lab.openstack.cloudlab import CloudLab
from ovsnat.lab.openstack.vif import VifSpec
from ovsnat.lab.topology import Vm
from ovsnat.lab.traffic import start_server

GUEST_PORT = 7000           # every instance runs a TCP echo server here


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

    @property
    def host(self) -> str:
        return self.vm.host


@dataclass
class Migration:
    """Wall-clock times of a live migration's steps (time.time())."""

    steps: dict[str, float] = field(default_factory=dict)

    def mark(self, step: str) -> None:
        self.steps[step] = time.time()


def create_port(cl: CloudLab, host: str, network_id: str, name: str, **kwargs):
    """The port Nova creates for an instance scheduled to `host` (bound at once)."""
    cl.agents_alive(host)
    return cl.nova.network.create_port(
        network_id=network_id, name=name, project_id=cloud.PROJECT,
        device_owner="compute:nova", device_id=str(uuid.uuid4()), binding_host_id=host,
        **kwargs)


def boot(cl: CloudLab, name: str, host: str, network_id: str | None = None,
         dhcp: bool = True) -> Instance:
    """Port, tap, plug; then the guest boots: with dhcp its udhcpc configures eth0 from
    ovsnat's answer (as a cloud image does), else the fixed IP is set by hand."""
    port = create_port(cl, host, network_id or cl.topo.tenant_net, f"{name}-port")
    spec = cloud.vif_spec(cl.conn, port, name)
    fixed = port.fixed_ips[0]
    subnet = cl.conn.network.get_subnet(fixed["subnet_id"])
    vm = instances.create_vm(cl.lab, name, host, spec, fixed["ip_address"], subnet.cidr,
                             subnet.gateway_ip, dhcp=dhcp)
    start_server(cl.lab, f"{name}-tcp", vm.ns, "tcp", GUEST_PORT)
    plugged_at = instances.os_vif(cl.lab, host, "plug", spec)
    if dhcp:
        dhcpclient.start(cl.lab, vm)
    return Instance(name, port.id, fixed["ip_address"], vm, spec, plugged_at, dhcp)


def live_migrate(cl: CloudLab, inst: Instance, dest: str) -> Migration:
    """Move a running instance to `dest` as Nova does (module doc). Returns step times."""
    net, src, m = cl.nova.network, inst.host, Migration()
    binding = net.create_port_binding(inst.port_id, host=dest)
    m.mark("binding created")
    dest_spec = replace(inst.spec, bridge=binding.vif_details["bridge_name"],
                        datapath_type=binding.vif_details.get("datapath_type", "system"))
    instances.os_vif(cl.lab, dest, "plug", dest_spec)
    m.mark("plugged at destination")
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
    return m


def delete(cl: CloudLab, inst: Instance) -> None:
    """Unplug, delete the port, and the guest is gone (its servers and DHCP client too)."""
    instances.os_vif(cl.lab, inst.host, "unplug", inst.spec)
    cl.nova.network.delete_port(inst.port_id)
    cl.lab.stop_proc(f"{inst.name}-tcp")
    cl.lab.remove_vm(inst.vm)
