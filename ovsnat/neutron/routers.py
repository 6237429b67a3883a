"""Neutron's routers -> the contract's Bridge keys (docs/routers.md), pure (no Neutron import)
like keys.py and secgroups.py: the server side (ovsnat.neutron.server_routers) feeds it the
dicts Neutron's own code returns (router interface ports, subnets, routers), the agent
(ovsnat.neutron.agent_routers) only writes the values.

- `ovsnat-net-<network>` = `router=<router-id>` or `router=-`: the router holding the
  network's IPv4 subnet (ovsnat serves one per network);
- `ovsnat-router-<router-id>` = `ext=<external-network-id>|-;snat=on|off`, from the
  router's `external_gateway_info`;
- for east-west routing (item 2): a routed network's value also defines it
  (`;cidr=<cidr>;gw=<ip>;vlan=<id>|-`, from its IPv4 subnet and its segment), the networks
  of the routers holding a local port's network are written too (with their neighbours,
  `ovsnat-nb-<network>` = `<ip>=<mac>@<host>,...`: their ports bound to other hosts),
  `ovsnat-host` is the agent's host and `ovsnat-hostmac-<host>` each host's routed MAC
  (Neutron's DVR MAC table);
- for several external networks (item 3): `ovsnat-ext-<external-network-id>` =
  `vlan=<id>|-;cidr=;gw=;snat=` for each network the routers above name as their gateway,
  with this host's SNAT address on it (a VLAN provider network is tagged on the uplink, a
  flat one is the untagged network; any other type cannot be served: no key).

Values are deterministic, so an unchanged router never causes a write.
"""

from __future__ import annotations

import ipaddress

from ovsnat.model.eastwest import HOST_KEY, HOSTMAC_PREFIX, NB_PREFIX
from ovsnat.model.externals import EXT_PREFIX
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


def net_value(router_id: str | None, definition: str | None = None) -> str:
    """A network's value: its router, and (when routed and definable) its definition."""
    value = f"router={router_id or NONE}"
    return f"{value};{definition}" if router_id and definition else value


def definition(subnet: dict | None, network: dict | None) -> str | None:
    """`cidr=..;gw=..;vlan=..` from the network's IPv4 subnet and its segment (provider
    attributes: a VLAN's id, `-` for flat), or None: no gateway, or a segment ovsnat does
    not serve (the network is then routed through PAT and FIPs only, not east-west)."""
    if not subnet or not subnet.get("gateway_ip") or not network:
        return None
    kind = network.get("provider:network_type")
    if kind == "vlan" and network.get("provider:segmentation_id"):
        vlan = str(network["provider:segmentation_id"])
    elif kind == "flat":
        vlan = NONE
    else:
        return None
    return f"cidr={subnet['cidr']};gw={subnet['gateway_ip']};vlan={vlan}"


def neighbour_value(ports: list[dict], cidr: str, host: str) -> str:
    """`<ip>=<mac>@<host>,...` sorted by address: the network's VM ports bound to another
    host than `host`, by their one fixed IP in `cidr` (Neutron's own ports, router, DHCP
    and SNAT, are `network:*` and not VMs; a port with several IPv4 addresses there, or none,
    is left out, as the driver refuses to bind it)."""
    net = ipaddress.ip_network(cidr)
    entries = []
    for port in ports:
        if neighbour_of(port) is None or (bound := port["binding:host_id"]) == host:
            continue
        ips = [ip["ip_address"] for ip in port.get("fixed_ips") or [] if _in(ip, net)]
        if len(ips) == 1:
            entries.append(
                (ipaddress.ip_address(ips[0]), f"{ips[0]}={port['mac_address']}@{bound}")
            )
    return ",".join(e for _, e in sorted(entries))


def neighbour_of(port: dict | None) -> tuple | None:
    """What the other hosts' neighbour lists hold of a port (None: nothing): a bound VM
    port's host, MAC and addresses."""
    if not port or str(port.get("device_owner", "")).startswith("network:"):
        return None
    host = port.get("binding:host_id")
    if not host or port.get("binding:vif_type") in ("unbound", "binding_failed"):
        return None
    ips = tuple(sorted(f.get("ip_address", "") for f in port.get("fixed_ips") or []))
    return host, port.get("mac_address"), ips


def _in(fixed_ip: dict, net) -> bool:
    try:
        return ipaddress.ip_address(fixed_ip.get("ip_address", "")) in net
    except ValueError:
        return False


def subnet_of(subnets: list[dict], interface_ips: set[str]) -> dict | None:
    """The IPv4 subnet a router reaches the network by: the one whose gateway a router
    interface holds, else the network's only IPv4 subnet (None: several, none of them)."""
    v4 = [s for s in subnets if s.get("ip_version", 4) == 4]
    held = [s for s in v4 if s.get("gateway_ip") in interface_ips]
    if held:
        return held[0]
    return v4[0] if len(v4) == 1 else None


def router_value(router: dict | None) -> str:
    """A router's value from its API dict (`external_gateway_info`: network_id and
    enable_snat, which Neutron defaults to its `enable_snat_by_default`, True). A router
    Neutron does not know (deleted meanwhile) has no gateway."""
    gateway = (router or {}).get("external_gateway_info") or {}
    network = gateway.get("network_id")
    if not network:
        return f"ext={NONE};snat=off"
    return f"ext={network};snat={'on' if gateway.get('enable_snat', True) else 'off'}"


def router_external(value: str | None) -> str | None:
    """The gateway network a router's value names (None: no gateway, or no value)."""
    if not value or not value.startswith("ext="):
        return None
    ext = value.split(";", 1)[0][len("ext=") :]
    return None if ext == NONE else ext


def external_value(network: dict, snat: dict | None) -> str | None:
    """An external network's value from its API dict (provider attributes) and this host's
    SNAT address on it (ovsnat.neutron.server_snat), or None when it cannot be served: not
    flat or VLAN, or no IPv4 SNAT address with a gateway."""
    kind = network.get("provider:network_type")
    if kind not in ("flat", "vlan") or not snat or not snat.get("gateway"):
        return None
    vlan = network.get("provider:segmentation_id") if kind == "vlan" else NONE
    return f"vlan={vlan};cidr={snat['cidr']};gw={snat['gateway']};snat={snat['ip']}"


def own_external(snat: dict) -> tuple[str, str, str | None] | None:
    """(network id, value, physnet) of the host's own external network, from its SNAT
    address (get_snat_address's answer): the untagged network on its uplink, whatever its
    type, since it is the controller's options' network; None without a gateway."""
    if not snat.get("network_id") or not snat.get("gateway"):
        return None
    value = f"vlan={NONE};cidr={snat['cidr']};gw={snat['gateway']};snat={snat['ip']}"
    return snat["network_id"], value, snat.get("physnet")


def named_router(value: str | None) -> str | None:
    """The router id a network's value names (None: none, or no value)."""
    if not value or not value.startswith("router="):
        return None
    rid = value.split(";", 1)[0][len("router=") :]
    return None if rid == NONE else rid


def bridge_keys(
    nets: dict[str, str],
    routers: dict[str, str],
    neighbours: dict[str, str] | None = None,
    host: str | None = None,
    hostmacs: dict[str, str] | None = None,
    externals: dict[str, str] | None = None,
    own: tuple[str, str] | None = None,
) -> dict[str, str]:
    """The Bridge keys for these networks' values, their routers' values, the routed
    networks' neighbours (an empty list: no key), the external networks those routers name
    and, when this host's routed MAC is known, this host's name and every host's routed
    MAC. `own`: (id, value) of the host's own external network, always written (so no key
    at all never means "every gateway is the options' network" under Neutron)."""
    keys = {NET_PREFIX + n: v for n, v in nets.items()}
    keys.update({ROUTER_PREFIX + r: v for r, v in routers.items()})
    named = {router_external(v) for v in routers.values()}
    keys.update({EXT_PREFIX + e: v for e, v in (externals or {}).items() if e in named})
    if own is not None:
        keys[EXT_PREFIX + own[0]] = own[1]
    keys.update({NB_PREFIX + n: v for n, v in (neighbours or {}).items() if v and n in nets})
    if host and host in (hostmacs or {}):
        keys[HOST_KEY] = host
        keys.update({HOSTMAC_PREFIX + h: m for h, m in (hostmacs or {}).items()})
    return keys


def is_routing_key(key: str) -> bool:
    prefixes = (NET_PREFIX, ROUTER_PREFIX, NB_PREFIX, HOSTMAC_PREFIX, EXT_PREFIX)
    return key == HOST_KEY or key.startswith(prefixes)


def gateway_changed(old: dict | None, new: dict | None) -> bool:
    """Whether a router update changed what its networks reach (its gateway network or
    enable_snat): only then do the agents need to hear of it."""
    return router_value(old) != router_value(new)


def fip_status_of(fip: dict, live: str) -> str:
    """A floating IP's status from what its port's host reports live ("" none)."""
    return "ACTIVE" if live and fip.get("floating_ip_address") == live else "DOWN"
