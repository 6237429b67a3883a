"""Neutron's routers -> the contract's Bridge keys (docs/routers.md), pure (no Neutron import)
like keys.py and secgroups.py: the server side (ovsnat.neutron.server_routers) feeds it the
dicts Neutron's own code returns (router interface ports, subnets, routers), the agent
(ovsnat.neutron.agent_routers) only writes the values.

- `ovsnat-net-<network>` = `router=<router-id>` or `router=-`: the router holding the
  network's IPv4 subnet (ovsnat serves one per network);
- `ovsnat-router-<router-id>` = `ext=<external-network-id>|-;snat=on|off`, from the
  router's `external_gateway_info`.

Values are deterministic, so an unchanged router never causes a write.
"""

from __future__ import annotations

from ovsnat.model.routing import NET_PREFIX, NONE, ROUTER_PREFIX

# Neutron's router interface owners (neutron_lib.constants.ROUTER_INTERFACE_OWNERS):
# a legacy or HA router's interface, and DVR's distributed one.
INTERFACE_OWNERS = (
    "network:router_interface",
    "network:ha_router_replicated_interface",
    "network:router_interface_distributed",
)
# RPC: both directions in this namespace on ovsnat's topics (as security groups'), so the
# existing endpoints and their versions are untouched.
RPC_NAMESPACE = "ovsnat-routers"
RPC_VERSION = "1.0"


def attached_router(interfaces: list[dict], gateway_ips: set[str]) -> str | None:
    """Which router holds a network, from its router interface ports: the one whose port
    has the subnet's gateway address (`router add subnet`), else the smallest router id
    among those with a port on it (`router add port` with another address); None: on no
    router. Neutron refuses one subnet on two routers by its gateway address, but a port
    with another address may attach a second: ovsnat routes a network through one router."""
    routers = sorted({p["device_id"] for p in interfaces if p.get("device_id")})
    for port in interfaces:
        if port.get("device_id") and {f.get("ip_address") for f in port.get("fixed_ips") or []} & (
            gateway_ips
        ):
            return port["device_id"]
    return routers[0] if routers else None


def net_value(router_id: str | None) -> str:
    return f"router={router_id or NONE}"


def router_value(router: dict | None) -> str:
    """A router's value from its API dict (`external_gateway_info`: network_id and
    enable_snat, which Neutron defaults to its `enable_snat_by_default`, True). A router
    Neutron does not know (deleted meanwhile) has no gateway."""
    gateway = (router or {}).get("external_gateway_info") or {}
    network = gateway.get("network_id")
    if not network:
        return f"ext={NONE};snat=off"
    return f"ext={network};snat={'on' if gateway.get('enable_snat', True) else 'off'}"


def named_router(value: str | None) -> str | None:
    """The router id a network's value names (None: none, or no value)."""
    if not value or not value.startswith("router="):
        return None
    rid = value[len("router=") :]
    return None if rid == NONE else rid


def bridge_keys(nets: dict[str, str], routers: dict[str, str]) -> dict[str, str]:
    """The Bridge keys for these networks' values and their routers' values."""
    keys = {NET_PREFIX + n: v for n, v in nets.items()}
    keys.update({ROUTER_PREFIX + r: v for r, v in routers.items()})
    return keys


def is_routing_key(key: str) -> bool:
    return key.startswith((NET_PREFIX, ROUTER_PREFIX))


def gateway_changed(old: dict | None, new: dict | None) -> bool:
    """Whether a router update changed what its networks reach (its gateway network or
    enable_snat): only then do the agents need to hear of it."""
    return router_value(old) != router_value(new)


def fip_status_of(fip: dict, live: str) -> str:
    """A floating IP's status from what its port's host reports live ("" none)."""
    return "ACTIVE" if live and fip.get("floating_ip_address") == live else "DOWN"
