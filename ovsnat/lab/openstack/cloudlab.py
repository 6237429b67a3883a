"""The OpenStack lab in one object: OpenStack's own services (stack.py: Keystone, Placement,
Glance, Nova, Neutron with ovsnat's driver, RabbitMQ, MariaDB) beside hypervisors on the
fabric, each with ovsnat's controller, its ovsnat-neutron-agent and its nova-compute; the
cloud's networks made by its admin and its tenant through Keystone; a flavor and a tiny image
in Glance. `ovsnat lab up --openstack`, its demo and the tests build it here; users then
drive it as a cloud, with the `openstack` command (CloudLab.openstack) or openstacksdk
(servers.py).

Each host's controller is configured as on a Neutron-driven hypervisor: no default network
(`internal_cidr` empty: every port names its Neutron network), no SNAT address in the file
(`snat_ip` empty: the agent writes the one Neutron allocated onto the bridge), and the
fabric port that carries the tenant networks' VLANs (physnet `fabric`) between hosts.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ovsnat.lab import scenario
from ovsnat.lab.fabric import FABRIC
from ovsnat.lab.openstack import cloud, keystone, metaproxy
from ovsnat.lab.openstack import stackconf as sc
from ovsnat.lab.openstack.netns import inside
from ovsnat.lab.openstack.stack import Stack
from ovsnat.lab.openstack.virt.guest import Guest
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import Lab
from ovsnat.lab.traffic import start_server

# The [ovsnat] options that differ from the reference lab's (scenario.host_options).
CONTROLLER_OPTIONS = {
    "fabric_port": FABRIC,
    "internal_cidr": "",
    "internal_gateway_ip": "",
    **metaproxy.OPTIONS,
}
SERVER_PORT = 8080  # the outside server's TCP and UDP echo port
AGENT_TIMEOUT = 60.0  # s: an agent's first heartbeat, on a loaded machine
FLAVOR = "lab.tiny"  # 1 vCPU, 64 MiB, 1 GiB: the fake driver claims, nothing runs
IMAGE = "lab-tiny"
IMAGE_DATA = b"ovsnat lab guest image\n" * 2048  # 47 KiB, raw
# The tenant's quotas, raised by the admin: Nova's defaults (10 instances, 20 cores) are
# below what the scale test boots.
QUOTAS = {"instances": 200, "cores": 200, "ram": 200 * 64}


@dataclass
class CloudLab:
    """A running OpenStack lab. `admin`, `operator` and `tenant` are openstacksdk as the
    cloud's admin, the admin in the tenant's project (it places and live-migrates the
    tenant's servers) and the tenant; every call is made inside the services namespace,
    where every API listens. `conn` is the admin's."""

    lab: Lab
    stack: Stack
    topo: cloud.Topology
    flavor: str = ""
    image: str = ""
    timings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.admin = cloud.InNamespace(keystone.admin(), self.stack.ns)
        self.operator = cloud.InNamespace(keystone.operator(), self.stack.ns)
        self.tenant = cloud.InNamespace(keystone.demo(), self.stack.ns)

    @property
    def conn(self) -> cloud.InNamespace:
        return self.admin

    @property
    def services(self) -> Stack:
        return self.stack

    def add_hypervisor(
        self,
        name: str,
        controller: bool = True,
        agent: bool = True,
        nova_options: dict[str, str] | None = None,
        compute: bool = True,
        metadata: bool = True,
        **options,
    ) -> None:
        """A host on the fabric with its controller (listening on the host namespace's
        loopback; `options` override its [ovsnat] options), its agent (in the services
        namespace, see services.py; agent=False: started later, e.g. once the external
        network exists) and its nova-compute (`nova_options`: its own [DEFAULT] options;
        compute=False: none, a host Nova does not know; metadata=False: no metadata
        proxy)."""
        self.lab.add_host(name, fabric=True)
        if metadata:
            metaproxy.start(self.stack, name)
        if controller:
            scenario.start_controller(
                self.lab, name, snat_ip="", **{**CONTROLLER_OPTIONS, **options}
            )
        if agent:
            self.stack.start_agent(name)
        if compute:
            self.stack.add_compute(name, **(nova_options or {}))

    def hypervisor_ready(self, *hosts: str) -> None:
        """Agents alive, SNAT addresses on the bridges, nova-computes mapped: Nova can place
        a server there and Neutron bind its port."""
        self.agents_alive(*hosts, timeout=AGENT_TIMEOUT)
        for host in hosts:
            self.wait_snat(host)
        self.stack.wait_computes(list(hosts))

    def agents_alive(self, *hosts: str, since: float | None = None, timeout: float = 40.0) -> None:
        """Wait until these hosts' agents (default: all) count as alive; with `since` (wall
        clock), until each has a heartbeat Neutron stamped after it. Neutron binds a port
        only to a host whose agent it thinks alive; after a service outage, heartbeats are
        late for a few seconds, and an agent whose last heartbeat is from before the outage
        still counts alive until agent_down_time after it: it is dead a moment later (a
        server booted then fails to bind: seen after the rpc-server's restart). Neutron
        stamps in whole seconds: a heartbeat counts from the second after `since`."""
        want = set(hosts or self.lab.hosts)

        def fresh(a) -> bool:
            return (
                since is None
                or bool(a.last_heartbeat_at)
                and _utc(a.last_heartbeat_at) >= int(since) + 1
            )

        wait_for(
            lambda: (
                want <= {a.host for a in self.admin.network.agents() if a.is_alive and fresh(a)}
            ),
            timeout,
            interval=0.2,
            what=f"the agents of {sorted(want)} alive"
            + (" with a heartbeat since the outage" if since is not None else ""),
        )

    def computes_reported(self, since: float, *hosts: str, timeout: float = 120.0) -> None:
        """Until every nova-compute of these hosts (default: all) has reported its state
        after `since` (wall clock): Nova counts a compute up while its last report is under
        service_down_time (60 s) old, and refuses to live-migrate to one it counts down.
        After a RabbitMQ outage a compute's report can hang in its call to the conductor
        until rpc_response_timeout (60 s), so this can take a minute (Nova's defaults)."""
        want = set(hosts or self.lab.hosts)

        def reported() -> bool:
            seen = {
                s.host
                for s in self.admin.compute.services(binary="nova-compute")
                if s.state == "up" and s.updated_at and _utc(s.updated_at) >= int(since)
            }
            return want <= seen

        wait_for(
            reported, timeout, interval=0.5, what=f"the nova-computes of {sorted(want)} to report"
        )

    def snat_ip(self, host: str) -> str:
        """The host's SNAT address as its bridge carries it (empty before the agent wrote
        it)."""
        return (
            self.lab.hosts[host]
            .vsctl("--if-exists", "get", "Bridge", "br-int", "external_ids:ovsnat-snat-ip")
            .strip()
            .strip('"')
        )

    def wait_snat(self, host: str, timeout: float = 30.0) -> str:
        return wait_for(
            lambda: self.snat_ip(host),
            timeout,
            interval=0.1,
            what=f"{host}'s SNAT address from Neutron",
        )

    def openstack(
        self, *args: str, user: str = sc.DEMO, project: str = sc.DEMO, timeout: float = 600
    ) -> str:
        """python-openstackclient as `user` in `project` (the tenant by default)."""
        return self.stack.openstack(*args, user=user, project=project, timeout=timeout)

    def inside(self):
        """This thread in the services namespace, where every API listens."""
        return inside(self.stack.ns)

    def open_default_group(self) -> None:
        """The tenant lets ICMP, TCP and UDP in from anywhere through its default security
        group, as most tenants do first (Neutron's default group lets nothing in from
        outside the group): the NAT tests reach servers through their FIPs."""
        group = self.tenant.network.find_security_group("default", project_id=self.topo.project)
        for proto in ("icmp", "tcp", "udp"):
            self.tenant.network.create_security_group_rule(
                security_group_id=group.id,
                direction="ingress",
                ether_type="IPv4",
                protocol=proto,
                remote_ip_prefix="0.0.0.0/0",
            )

    def guest(self, server_id: str) -> Guest | None:
        """The lab driver's guest of a server (None once it is gone)."""
        return Guest.load(self.stack.sp.guests, server_id)

    def down(self) -> None:
        self.stack.down()
        self.lab.down()


def _utc(text: str) -> float:
    """A time Nova's API gives (UTC, ISO 8601, without zone) as time.time() says it."""
    return datetime.fromisoformat(text.rstrip("Z")).replace(tzinfo=timezone.utc).timestamp()


def create_topology(ns: str) -> cloud.Topology:
    """The admin makes the external network (a flat network on the uplink); the tenant
    (`demo`, role member) makes its own network, subnet and router, with the router's
    gateway on the external network, as a tenant does."""
    ext_spec, ten = cloud.EXTERNAL, cloud.TENANT
    admin, tenant = keystone.admin(), keystone.demo()
    with inside(ns):
        ext = admin.network.create_network(
            name=ext_spec["name"],
            is_router_external=True,
            provider_network_type="flat",
            provider_physical_network="external",
        )
        lo, hi = ext_spec["pool"]
        ext_sub = admin.network.create_subnet(
            network_id=ext.id,
            ip_version=4,
            cidr=ext_spec["cidr"],
            gateway_ip=ext_spec["gateway"],
            is_dhcp_enabled=False,
            allocation_pools=[{"start": lo, "end": hi}],
        )
        net = tenant.network.create_network(name=ten["name"])
        sub = tenant.network.create_subnet(
            network_id=net.id,
            ip_version=4,
            cidr=ten["cidr"],
            gateway_ip=ten["gateway"],
            dns_nameservers=ten["dns"],
            host_routes=ten["routes"],
        )
        router = tenant.network.create_router(
            name="router-a", external_gateway_info={"network_id": ext.id}
        )
        tenant.network.add_interface_to_router(router, subnet=sub.id)
        vlan = admin.network.get_network(net.id).provider_segmentation_id
    return cloud.Topology(
        ext.id, ext_sub.id, net.id, sub.id, router.id, int(vlan or 0), net.project_id
    )


def create_flavor_and_image(ns: str) -> tuple[str, str]:
    """The admin's public flavor and image (a few KiB of raw data, uploaded to Glance's file
    store: the fake driver does not read it) and the tenant's quotas."""
    admin = keystone.admin()
    with inside(ns):
        flavor = admin.compute.create_flavor(name=FLAVOR, ram=64, vcpus=1, disk=1)
        image = admin.image.create_image(
            IMAGE,
            data=io.BytesIO(IMAGE_DATA),
            disk_format="raw",
            container_format="bare",
            visibility="public",
            wait=True,
        )
        tenant = admin.identity.find_project(sc.DEMO, domain_id="default")
        admin.compute.update_quota_set(tenant.id, **QUOTAS)
    return flavor.id, image.id


def bring_up(hosts: tuple[str, ...] = ("hv1", "hv2"), report_limits: bool = False) -> CloudLab:
    """Everything, or nothing: a failed bring-up is torn down before the error goes up.
    `report_limits`: the agents report what their controllers reserve (Neutron then
    refuses at binding what a host cannot serve), as they do with `controller_config`.

    Once the services answer, three things go side by side: the hypervisors (lab hosts,
    controllers, nova-computes, which take the longest to start) here, the networks and
    the flavor and image in two threads (API calls only: the Lab object is touched by
    this thread alone). The agents start once the external network exists (an agent that
    finds none asks again with a growing backoff)."""
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
            image_f = pool.submit(
                _timed, steps, "flavor, image, quotas", create_flavor_and_image, stack.ns
            )
            cl = CloudLab(lab, stack, cloud.Topology("", "", "", "", "", 0, ""))
            for host in hosts:
                cl.add_hypervisor(host, agent=False)
            start_server(lab, "srv-tcp", lab.srv_ns, "tcp", SERVER_PORT)
            start_server(lab, "srv-udp", lab.srv_ns, "udp", SERVER_PORT)
            cl.topo = topo_f.result()
            for host in hosts:
                stack.start_agent(host, report_limits=report_limits)
            cl.flavor, cl.image = image_f.result()
        _timed(
            steps,
            "hypervisors ready (agents, SNAT addresses, computes)",
            cl.hypervisor_ready,
            *hosts,
        )
    except BaseException:
        stack.down()
        lab.down()
        raise
    cl.timings.update({f"services {k}": v for k, v in stack.timings.items()})
    cl.timings.update(steps)
    cl.timings["bring-up"] = time.monotonic() - t0
    return cl


def _timed(steps: dict[str, float], name: str, fn, *args):
    """fn(*args), its duration recorded under `name` (until it returned, from the call)."""
    t = time.monotonic()
    try:
        return fn(*args)
    finally:
        steps[name] = time.monotonic() - t
