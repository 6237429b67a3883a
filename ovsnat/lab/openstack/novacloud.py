"""The OpenStack lab with OpenStack's own services (stack.py) driving ovsnat: hypervisors on
the fabric, each with ovsnat's controller, its ovsnat-neutron-agent and its nova-compute;
the cloud's networks made by its admin and its tenant through Keystone; a flavor and a tiny
image in Glance. Users then drive it with the `openstack` command (Stack.openstack), as in
a cloud: `openstack server create`, `openstack server delete`.

It is the lab's CloudLab (cloudlab.py: hypervisors, agents alive, SNAT addresses) with a
Keystone-authenticated admin instead of Neutron's noauth headers.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ovsnat.lab.openstack import cloud, keystone
from ovsnat.lab import scenario
from ovsnat.lab.openstack.cloudlab import AGENT_TIMEOUT, CONTROLLER_OPTIONS, SERVER_PORT, \
    CloudLab
from ovsnat.lab.openstack.netns import inside
from ovsnat.lab.openstack.stack import Stack
from ovsnat.lab.openstack.virt.guest import Guest
from ovsnat.lab.topology import Lab
from ovsnat.lab.traffic import start_server

FLAVOR = "lab.tiny"             # 1 vCPU, 64 MiB, 1 GiB: the fake driver claims, nothing runs
IMAGE = "lab-tiny"
IMAGE_DATA = b"ovsnat lab guest image\n" * 2048     # 47 KiB, raw


@dataclass
class NovaCloud(CloudLab):
    """A running lab whose instances are Nova's. `conn`: openstacksdk as the cloud's admin
    (proxied into the services namespace, as CloudLab's)."""

    flavor: str = ""
    image: str = ""

    @property
    def stack(self) -> Stack:
        return self.services

    def add_hypervisor(self, name: str, controller: bool = True, agent: bool = True) -> None:
        """CloudLab's host (controller, agent), and its nova-compute. agent=False: the
        agent is started later (start_agent), e.g. once the external network exists (an
        agent that finds none asks again with a growing backoff)."""
        self.lab.add_host(name, fabric=True)
        if controller:
            scenario.start_controller(self.lab, name, snat_ip="", **CONTROLLER_OPTIONS)
        if agent:
            self.stack.start_agent(name)
        self.stack.add_compute(name)

    def openstack(self, *args: str, **kwargs) -> str:
        return self.stack.openstack(*args, **kwargs)

    def as_admin(self):
        """openstacksdk as the cloud's admin, every service (use inside `self.inside()`)."""
        if not hasattr(self, "_admin"):
            self._admin = keystone.admin()
        return self._admin

    def inside(self):
        """This thread in the services namespace, where every API listens."""
        return inside(self.stack.ns)

    def guest(self, server_id: str) -> Guest | None:
        """The lab driver's guest of a server (None once it is gone)."""
        return Guest.load(self.stack.sp.guests, server_id)


def create_topology(ns: str) -> cloud.Topology:
    """The admin makes the external network (a flat network on the uplink); the tenant
    (`demo`, role member) makes its own network, subnet and router, with the router's
    gateway on the external network, as a tenant does."""
    ext_spec, ten = cloud.EXTERNAL, cloud.TENANT
    admin, tenant = keystone.admin(), keystone.demo()
    with inside(ns):
        ext = admin.network.create_network(
            name=ext_spec["name"], is_router_external=True,
            provider_network_type="flat", provider_physical_network="external")
        lo, hi = ext_spec["pool"]
        ext_sub = admin.network.create_subnet(
            network_id=ext.id, ip_version=4, cidr=ext_spec["cidr"],
            gateway_ip=ext_spec["gateway"], is_dhcp_enabled=False,
            allocation_pools=[{"start": lo, "end": hi}])
        net = tenant.network.create_network(name=ten["name"])
        sub = tenant.network.create_subnet(
            network_id=net.id, ip_version=4, cidr=ten["cidr"], gateway_ip=ten["gateway"],
            dns_nameservers=ten["dns"], host_routes=ten["routes"])
        router = tenant.network.create_router(name="router-a",
                                              external_gateway_info={"network_id": ext.id})
        tenant.network.add_interface_to_router(router, subnet=sub.id)
        vlan = admin.network.get_network(net.id).provider_segmentation_id
    return cloud.Topology(ext.id, ext_sub.id, net.id, sub.id, router.id, int(vlan or 0))


def create_flavor_and_image(ns: str) -> tuple[str, str]:
    """The admin's public flavor and image (a few KiB of raw data, uploaded to Glance's file
    store: the fake driver does not read it)."""
    admin = keystone.admin()
    with inside(ns):
        flavor = admin.compute.create_flavor(name=FLAVOR, ram=64, vcpus=1, disk=1)
        image = admin.image.create_image(IMAGE, data=io.BytesIO(IMAGE_DATA),
                                         disk_format="raw", container_format="bare",
                                         visibility="public", wait=True)
    return flavor.id, image.id


def bring_up(hosts: tuple[str, ...] = ("hv1", "hv2")) -> NovaCloud:
    """Everything, or nothing: a failed bring-up is torn down before the error goes up.

    Once the services answer, three things go side by side: the hypervisors (lab hosts,
    controllers, nova-computes, which take the longest to start) here, the networks and
    the flavor and image in two threads (API calls only: the Lab object is touched by
    this thread alone). The agents start once the external network exists."""
    t0 = time.monotonic()
    lab = Lab()
    stack = Stack(lab)
    steps: dict[str, float] = {}
    try:
        lab.up()
        stack.up()
        steps["services"] = time.monotonic() - t0
        with ThreadPoolExecutor(2) as pool:
            topo_f = pool.submit(_timed, steps, "networks", create_topology, stack.ns)
            image_f = pool.submit(_timed, steps, "flavor and image", create_flavor_and_image,
                                  stack.ns)
            cl = NovaCloud(lab, stack, cloud.InNamespace(keystone.admin(), stack.ns),
                           cloud.Topology("", "", "", "", "", 0))
            for host in hosts:
                cl.add_hypervisor(host, agent=False)
            start_server(lab, "srv-tcp", lab.srv_ns, "tcp", SERVER_PORT)
            start_server(lab, "srv-udp", lab.srv_ns, "udp", SERVER_PORT)
            cl.topo = topo_f.result()
            for host in hosts:
                stack.start_agent(host)
            cl.flavor, cl.image = image_f.result()
        _timed(steps, "agents alive, SNAT addresses", _agents_ready, cl, hosts)
        _timed(steps, "nova-computes ready", stack.wait_computes, list(hosts))
    except BaseException:
        stack.down()
        lab.down()
        raise
    cl.timings.update({f"services {k}": v for k, v in stack.timings.items()})
    cl.timings.update(steps)
    cl.timings["bring-up"] = time.monotonic() - t0
    return cl


def _agents_ready(cl: NovaCloud, hosts: tuple[str, ...]) -> None:
    cl.agents_alive(timeout=AGENT_TIMEOUT)
    for host in hosts:
        cl.wait_snat(host)


def _timed(steps: dict[str, float], name: str, fn, *args):
    """fn(*args), its duration recorded under `name` (until it returned, from the call)."""
    t = time.monotonic()
    try:
        return fn(*args)
    finally:
        steps[name] = time.monotonic() - t
