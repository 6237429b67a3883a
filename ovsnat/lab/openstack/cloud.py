"""The lab's cloud as a user sees it through openstacksdk: the networks its admin and tenant
make, and a proxy that makes every call inside the services namespace, where every API
listens on the loopback (netns.inside).
"""

from __future__ import annotations

from dataclasses import dataclass

EXTERNAL = {
    "name": "public",
    "cidr": "203.0.113.0/24",
    "gateway": "203.0.113.1",
    "pool": ("203.0.113.10", "203.0.113.250"),
}
TENANT = {
    "name": "tenant-a",
    "cidr": "10.1.0.0/24",
    "gateway": "10.1.0.1",
    "dns": ["198.51.100.53"],
    "routes": [{"destination": "10.9.0.0/16", "nexthop": "10.1.0.254"}],
}


@dataclass(frozen=True)
class Topology:
    """The objects a tenant and an admin made: external network, tenant network, router."""

    external_net: str
    external_subnet: str
    tenant_net: str
    tenant_subnet: str
    router: str
    vlan: int
    project: str  # the tenant's project id


PROXIES = ("network", "compute", "image", "identity")  # openstacksdk's service proxies


class InNamespace:
    """Proxy to an openstacksdk object whose every call runs inside the services namespace
    (generators are drained there too: the SDK pages lazily while they are iterated)."""

    def __init__(self, target, ns: str) -> None:
        self._target = target
        self._ns = ns

    def __getattr__(self, name: str):
        import inspect

        from ovsnat.lab.openstack.netns import inside

        with inside(self._ns):  # a service proxy discovers its API version on first use
            attr = getattr(self._target, name)
        if name in PROXIES:
            return InNamespace(attr, self._ns)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with inside(self._ns):
                result = attr(*args, **kwargs)
                return list(result) if inspect.isgenerator(result) else result

        return call
