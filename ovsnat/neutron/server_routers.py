"""Routers on Neutron's side (docs/routers.md): each network's router and each router's
gateway over RPC, and the pushes that tell agents which networks' routing changed.

Read with Neutron's own API methods: a network's router interface ports (any of Neutron's
interface owners: legacy, HA and DVR), its IPv4 subnet's gateway address (which port holds
it decides between two routers: ovsnat.neutron.routers.attached_router), and the routers'
`external_gateway_info` from the L3 plugin. Without an L3 plugin no network is on a router.

Pushes carry network ids, like the driver's other casts. Which Neutron callbacks fire
(neutron/db/l3_db.py, Neutron 29):
- ROUTER_INTERFACE AFTER_CREATE / AFTER_DELETE: metadata `port` is the interface port
  (its network_id is the network attached or detached);
- ROUTER AFTER_UPDATE (states: original, updated), when the gateway network or
  enable_snat changed; ROUTER_GATEWAY AFTER_CREATE / AFTER_DELETE (states: the router):
  every network with an interface on the router;
- ROUTER AFTER_DELETE needs nothing: Neutron refuses to delete a router that still has
  interfaces (RouterInUse), so its networks were detached, each with its own push.
"""

from __future__ import annotations

import oslo_messaging
from neutron_lib import context as n_context
from neutron_lib import rpc as n_rpc
from neutron_lib.callbacks import events, registry, resources
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory
from oslo_log import log

from ovsnat.neutron import constants as c
from ovsnat.neutron import routers as rt

LOG = log.getLogger(__name__)


def _interfaces(ctx, plugin, filters: dict) -> list[dict]:
    return plugin.get_ports(ctx, filters={**filters, "device_owner": list(rt.INTERFACE_OWNERS)})


class RouterRpc:
    """Served by neutron-rpc-server on ovsnat's topic, in its own namespace."""

    target = oslo_messaging.Target(namespace=rt.RPC_NAMESPACE, version=rt.RPC_VERSION)

    def get_routing(self, context, host: str, network_ids=()) -> dict:
        """{"networks": network id -> `ovsnat-net-<id>`, "routers": router id ->
        `ovsnat-router-<id>`} for these networks and the routers holding them."""
        ctx = n_context.get_admin_context()
        plugin = directory.get_plugin()
        ids = sorted(set(network_ids))
        if not ids:
            return {"networks": {}, "routers": {}}
        by_net: dict[str, list[dict]] = {n: [] for n in ids}
        for port in _interfaces(ctx, plugin, {"network_id": ids}):
            by_net.setdefault(port["network_id"], []).append(port)
        gateways: dict[str, set[str]] = {n: set() for n in ids}
        for subnet in plugin.get_subnets(ctx, filters={"network_id": ids, "ip_version": [4]}):
            if subnet.get("gateway_ip"):
                gateways[subnet["network_id"]].add(subnet["gateway_ip"])
        held = {n: rt.attached_router(by_net[n], gateways[n]) for n in ids}
        answer = {
            "networks": {n: rt.net_value(r) for n, r in held.items()},
            "routers": self._routers(ctx, sorted({r for r in held.values() if r})),
        }
        LOG.debug("ovsnat: routing of %d networks requested by %s", len(ids), host)
        return answer

    def fip_status(self, context, host: str, ports: dict) -> None:
        """`ports`: port id -> the FIP the controller of `host` has live for it, or "" (none
        any more). Live: that FIP ACTIVE (another FIP of the port, not live there, DOWN).
        None: its FIPs DOWN, but only from the host of the port's binding (a live
        migration's source going dark after the destination lit it changes nothing)."""
        ctx = n_context.get_admin_context()
        l3 = directory.get_plugin(plugin_constants.L3)
        if l3 is None:
            return
        core = directory.get_plugin()
        by_port: dict[str, list[dict]] = {}
        for fip in l3.get_floatingips(ctx, filters={"port_id": sorted(ports)}):
            by_port.setdefault(fip["port_id"], []).append(fip)
        for port_id, fips in sorted(by_port.items()):
            live = ports[port_id]
            if not live and not _bound_to(core, ctx, port_id, host):
                continue
            for fip in fips:
                status = rt.fip_status_of(fip, live)
                if fip["status"] != status:
                    l3.update_floatingip_status(ctx, fip["id"], status)
                    LOG.info("ovsnat: FIP %s %s (reported by %s)", fip["id"], status, host)

    @staticmethod
    def _routers(ctx, ids: list[str]) -> dict[str, str]:
        l3 = directory.get_plugin(plugin_constants.L3)
        if not ids:
            return {}
        known = {r["id"]: r for r in l3.get_routers(ctx, filters={"id": ids})} if l3 else {}
        return {r: rt.router_value(known.get(r)) for r in ids}


def _bound_to(core, ctx, port_id: str, host: str) -> bool:
    try:
        return core.get_port(ctx, port_id).get("binding:host_id") == host
    except Exception:  # deleted meanwhile: its FIPs were disassociated (DOWN) with it
        return False


def snat_ports_go_with_their_agent(resource, event, trigger, payload) -> None:
    """An ovsnat agent deleted (`openstack network agent delete`, a host retired): its
    host's SNAT ports go with it, so a dead host never keeps an external network from being
    deleted (docs/routers.md, item 4). A host whose agent returns asks for a new one."""
    agent = payload.latest_state
    if getattr(agent, "agent_type", None) != c.AGENT_TYPE:
        return
    ctx = n_context.get_admin_context()
    plugin = directory.get_plugin()
    filters = {"device_owner": [c.DEVICE_OWNER_SNAT], "device_id": [agent.host]}
    for port in plugin.get_ports(ctx, filters=filters):
        plugin.delete_port(ctx, port["id"])
        LOG.info("ovsnat: SNAT port %s of host %s deleted with its agent", port["id"], agent.host)


class RouterNotifier:
    """Casts to every ovsnat agent (fanout): which networks' routing changed."""

    def __init__(self) -> None:
        target = oslo_messaging.Target(
            topic=c.AGENT_TOPIC, namespace=rt.RPC_NAMESPACE, version=rt.RPC_VERSION
        )
        self.client = n_rpc.get_client(target)

    def changed(self, context, networks) -> None:
        networks = sorted(set(networks))
        if not networks:
            return
        LOG.debug("ovsnat: routing changed for networks %s", networks)
        try:  # retry=1: as the driver's other casts (a broker outage must not hold the API)
            self.client.prepare(fanout=True, retry=1).cast(
                context, "routing_changed", networks=networks
            )
        except Exception:  # repaired by the agents' resync when they reach Neutron again
            LOG.exception("ovsnat: could not cast routing changes of %s", networks)


class RouterPushes:
    """Neutron callbacks -> RouterNotifier casts (subscribed in every Neutron process)."""

    def __init__(self, notifier: RouterNotifier) -> None:
        self.notifier = notifier

    def subscribe(self) -> None:
        for event in (events.AFTER_CREATE, events.AFTER_DELETE):
            registry.subscribe(self.interface_changed, resources.ROUTER_INTERFACE, event)
            registry.subscribe(self.gateway_changed, resources.ROUTER_GATEWAY, event)
        registry.subscribe(self.router_updated, resources.ROUTER, events.AFTER_UPDATE)

    def interface_changed(self, resource, event, trigger, payload) -> None:
        port = (payload.metadata or {}).get("port") or {}
        if port.get("network_id"):
            self.notifier.changed(payload.context, [port["network_id"]])

    def gateway_changed(self, resource, event, trigger, payload) -> None:
        router = payload.latest_state or {}
        self._router_networks(payload.context, router.get("id") or payload.resource_id)

    def router_updated(self, resource, event, trigger, payload) -> None:
        states = [s for s in payload.states if isinstance(s, dict)]
        if len(states) == 2 and rt.gateway_changed(states[0], states[1]):
            self._router_networks(payload.context, payload.resource_id)

    def _router_networks(self, context, router_id: str | None) -> None:
        if not router_id:
            return
        ctx = n_context.get_admin_context()
        ports = _interfaces(ctx, directory.get_plugin(), {"device_id": [router_id]})
        self.notifier.changed(context, [p["network_id"] for p in ports])
