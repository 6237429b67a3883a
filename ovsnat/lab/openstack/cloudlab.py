"""The OpenStack lab in one object: hypervisors on the fabric, each with ovsnat's controller
and its ovsnat-neutron-agent, beside RabbitMQ and a real Neutron, with the cloud's networks
made through the API. `ovsnat lab up --openstack`, its demo and the tests build it here.

Each host's controller is configured as on a Neutron-driven hypervisor: no default network
(`internal_cidr` empty: every port names its Neutron network), no SNAT address in the file
(`snat_ip` empty: the agent writes the one Neutron allocated onto the bridge), and the
fabric port that carries the tenant networks' VLANs (physnet `fabric`) between hosts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ovsnat.lab import scenario
from ovsnat.lab.fabric import FABRIC
from ovsnat.lab.openstack import cloud
from ovsnat.lab.openstack.services import OpenStack
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import Lab
from ovsnat.lab.traffic import start_server

# The [ovsnat] options that differ from the reference lab's (scenario.host_options).
CONTROLLER_OPTIONS = {"fabric_port": FABRIC, "internal_cidr": "", "internal_gateway_ip": ""}
SERVER_PORT = 8080          # the outside server's TCP and UDP echo port
AGENT_TIMEOUT = 60.0        # s: an agent's first heartbeat, on a loaded machine


@dataclass
class CloudLab:
    """A running OpenStack lab. `conn` is openstacksdk as the lab's user, `nova` as Nova's
    service user; every call is made inside the services namespace (Neutron listens on
    that namespace's loopback only)."""

    lab: Lab
    services: OpenStack
    conn: cloud.InNamespace
    topo: cloud.Topology
    timings: dict = field(default_factory=dict)

    @property
    def nova(self) -> cloud.InNamespace:
        if not hasattr(self, "_nova"):
            self._nova = cloud.InNamespace(cloud.connect_as_nova(self.services.endpoint),
                                           self.services.ns)
        return self._nova

    def add_hypervisor(self, name: str, controller: bool = True, **options) -> None:
        """A host on the fabric with its controller (listening on the host namespace's
        loopback; `options` override its [ovsnat] options) and its agent (in the services
        namespace, see services.py)."""
        self.lab.add_host(name, fabric=True)
        if controller:
            scenario.start_controller(self.lab, name, snat_ip="",
                                      **{**CONTROLLER_OPTIONS, **options})
        self.services.start_agent(name)

    def agents_alive(self, *hosts: str, timeout: float = 40.0) -> None:
        """Wait until these hosts' agents (default: all) count as alive. Neutron binds a
        port only to a host whose agent it thinks alive; after a service outage, heartbeats
        are late for a few seconds."""
        want = set(hosts or self.lab.hosts)
        wait_for(lambda: want <= {a.host for a in self.conn.network.agents() if a.is_alive},
                 timeout, interval=0.2, what=f"the agents of {sorted(want)} alive")

    def snat_ip(self, host: str) -> str:
        """The host's SNAT address as its bridge carries it (empty before the agent wrote
        it)."""
        return self.lab.hosts[host].vsctl("--if-exists", "get", "Bridge", "br-int",
                                          "external_ids:ovsnat-snat-ip").strip().strip('"')

    def wait_snat(self, host: str, timeout: float = 30.0) -> str:
        return wait_for(lambda: self.snat_ip(host), timeout, interval=0.1,
                        what=f"{host}'s SNAT address from Neutron")

    def down(self) -> None:
        self.services.down()
        self.lab.down()


def bring_up(hosts: tuple[str, ...] = ("hv1", "hv2"), db: str = "sqlite",
             controllers: bool = True) -> CloudLab:
    """Everything, or nothing: a failed bring-up is torn down before the error goes up."""
    t0 = time.monotonic()
    lab = Lab()
    services = OpenStack(lab, db=db)
    try:
        lab.up()
        services.up()
        conn = cloud.InNamespace(cloud.connect(services.endpoint), services.ns)
        topo = cloud.create_topology(conn)
        cl = CloudLab(lab, services, conn, topo)
        for host in hosts:
            cl.add_hypervisor(host, controller=controllers)
        start_server(lab, "srv-tcp", lab.srv_ns, "tcp", SERVER_PORT)
        start_server(lab, "srv-udp", lab.srv_ns, "udp", SERVER_PORT)
        cl.agents_alive(timeout=AGENT_TIMEOUT)
        for host in hosts:
            cl.wait_snat(host)
    except BaseException:
        services.down()
        lab.down()
        raise
    cl.timings.update({f"services {k}": v for k, v in services.timings.items()})
    cl.timings["bring-up"] = time.monotonic() - t0
    return cl
