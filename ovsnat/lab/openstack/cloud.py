"""The lab's cloud as a user sees it: openstacksdk against the lab's Neutron.

Neutron runs with auth_strategy=noauth, so the SDK uses keystoneauth's `none` plugin with
Neutron's endpoint; requests carry the user and role headers Keystone's middleware would set
from a token (the lab's admin, or Nova's service user). Calls must be made from inside the services namespace (netns.inside): Neutron listens
on that namespace's loopback only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from ovsnat.lab.openstack.vif import VifSpec

PROJECT = "0b5c1a0e6c9c4e6e9a1c0a7d3e1f2a3b"     # the lab's tenant
EXTERNAL = {"name": "public", "cidr": "203.0.113.0/24", "gateway": "203.0.113.1",
            "pool": ("203.0.113.10", "203.0.113.250")}
TENANT = {"name": "tenant-a", "cidr": "10.1.0.0/24", "gateway": "10.1.0.1",
          "dns": ["198.51.100.53"], "routes": [{"destination": "10.9.0.0/16",
                                                "nexthop": "10.1.0.254"}]}


def _connection(endpoint: str, headers: dict[str, str]):
    """openstacksdk without Keystone. The headers stand for what Keystone's middleware would
    derive from a token; they go on the session (the Connection's own `additional_headers`
    argument is not passed on to requests by openstacksdk 4.22)."""
    import openstack
    conn = openstack.connection.Connection(auth_type="none", auth={"endpoint": endpoint},
                                           network_endpoint_override=endpoint)
    conn.session.additional_headers.update(headers)
    return conn


def connect(endpoint: str):
    """The lab's cloud admin (roles admin, member). Neutron's noauth pipeline builds the
    request's context from these headers and elevates it; objects of the tenant name its
    project explicitly (project_id=PROJECT), as an admin creating them for a tenant does."""
    return _connection(endpoint, {"X-Roles": "admin,member", "X-User-Id": "lab-admin"})


def connect_as_nova(endpoint: str):
    """Nova's service user, roles admin and service: Neutron lets only `service` create,
    activate and delete port bindings."""
    return _connection(endpoint, {"X-Roles": "admin,service", "X-User-Id": "nova"})


@dataclass(frozen=True)
class Topology:
    """The objects a tenant and an admin made: external network, tenant network, router."""

    external_net: str
    external_subnet: str
    tenant_net: str
    tenant_subnet: str
    router: str
    vlan: int


def create_topology(conn) -> Topology:
    """As an admin and a tenant would: a flat external network on the uplink, a VLAN
    tenant network on the fabric, a router with a gateway and an interface on it."""
    ext = conn.network.create_network(
        name=EXTERNAL["name"], is_router_external=True,
        provider_network_type="flat", provider_physical_network="external")
    lo, hi = EXTERNAL["pool"]
    ext_sub = conn.network.create_subnet(
        network_id=ext.id, ip_version=4, cidr=EXTERNAL["cidr"],
        gateway_ip=EXTERNAL["gateway"], is_dhcp_enabled=False,
        allocation_pools=[{"start": lo, "end": hi}])
    net = conn.network.create_network(name=TENANT["name"], project_id=PROJECT)
    sub = conn.network.create_subnet(
        network_id=net.id, ip_version=4, cidr=TENANT["cidr"], gateway_ip=TENANT["gateway"],
        dns_nameservers=TENANT["dns"], host_routes=TENANT["routes"], project_id=PROJECT)
    router = conn.network.create_router(
        name="router-a", project_id=PROJECT,
        external_gateway_info={"network_id": ext.id})
    conn.network.add_interface_to_router(router, subnet=sub.id)
    net = conn.network.get_network(net.id)
    return Topology(ext.id, ext_sub.id, net.id, sub.id, router.id,
                    int(net.provider_segmentation_id or 0))


def create_port(conn, topo: Topology, host: str, name: str):
    """A port bound to `host` as Nova creates it for an instance there."""
    return conn.network.create_port(
        network_id=topo.tenant_net, name=name, project_id=PROJECT,
        device_owner="compute:nova", device_id=str(uuid.uuid4()), binding_host_id=host)


def vif_spec(conn, port, instance_name: str) -> VifSpec:
    """What nova-compute's network_info holds for a bound port."""
    details = port.binding_vif_details or {}
    net = conn.network.get_network(port.network_id)
    return VifSpec(port_id=port.id, mac=port.mac_address, network_id=port.network_id,
                   bridge=details["bridge_name"], datapath_type=details.get("datapath_type",
                                                                            "system"),
                   mtu=int(net.mtu or 1500), port_filter=bool(details.get("port_filter")),
                   instance_uuid=port.device_id, instance_name=instance_name)


class InNamespace:
    """Proxy to an openstacksdk object whose every call runs inside the services namespace
    (generators are drained there too: the SDK pages lazily while they are iterated)."""

    def __init__(self, target, ns: str) -> None:
        self._target = target
        self._ns = ns

    def __getattr__(self, name: str):
        import inspect
        from ovsnat.lab.openstack.netns import inside
        with inside(self._ns):      # `conn.network` discovers the API version on first use
            attr = getattr(self._target, name)
        if name == "network":
            return InNamespace(attr, self._ns)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with inside(self._ns):
                result = attr(*args, **kwargs)
                return list(result) if inspect.isgenerator(result) else result
        return call
