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
from ovsnat.neutron import server_snat

LOG = log.getLogger(__name__)


def _interfaces(ctx, plugin, filters: dict) -> list[dict]:
    return plugin.get_ports(ctx, filters={**filters, "device_owner": list(rt.INTERFACE_OWNERS)})


class RouterRpc:
    """Served by neutron-rpc-server on ovsnat's topic, in its own namespace."""

    target = oslo_messaging.Target(namespace=rt.RPC_NAMESPACE, version=rt.RPC_VERSION)

    def __init__(self, notifier: RouterNotifier | None = None) -> None:
        self.notifier = notifier

    def hosts_changed(self) -> None:
        if self.notifier is not None:
            self.notifier.hosts_changed(n_context.get_admin_context())

    def get_routing(self, context, host: str, network_ids=()) -> dict:
        """For these networks (a host's local ports'): {"networks": network id ->
        `ovsnat-net-<id>`, "routers": router id -> `ovsnat-router-<id>`, "neighbours":
        routed network id -> `ovsnat-nb-<id>`, "hostmacs": host -> routed MAC}. The
        networks are these and every other network of the routers holding them (east-west
        reaches those), a routed one with its definition; the routers are those."""
        ctx = n_context.get_admin_context()
        plugin = directory.get_plugin()
        ids = sorted(set(network_ids))
        if not ids:
            return {
                "networks": {},
                "routers": {},
                "neighbours": {},
                "hostmacs": {},
                "externals": {},
            }
        held = _held(ctx, plugin, ids)
        routers = sorted({r for r, _ in held.values() if r})
        peers = {p["network_id"] for p in _interfaces(ctx, plugin, {"device_id": routers})}
        for net, (r, subnet) in _held(ctx, plugin, sorted(peers - set(ids))).items():
            if r in routers:  # a network of one of these routers, not of another
                held[net] = (r, subnet)
        routed = sorted(n for n, (r, _) in held.items() if r)
        networks = {n["id"]: n for n in plugin.get_networks(ctx, filters={"id": routed})}
        defs = {n: rt.definition(held[n][1], networks.get(n)) for n in routed}
        ports = plugin.get_ports(ctx, filters={"network_id": [n for n in routed if defs[n]]})
        by_net: dict[str, list[dict]] = {}
        for port in ports:
            by_net.setdefault(port["network_id"], []).append(port)
        values = self._routers(ctx, routers)
        answer = {
            "networks": {n: rt.net_value(r, defs.get(n)) for n, (r, _) in held.items()},
            "routers": values,
            **_externals(ctx, plugin, host, values),
            "neighbours": {
                n: rt.neighbour_value(by_net.get(n, []), held[n][1]["cidr"], host)
                for n in routed
                if defs[n]
            },
            "hostmacs": _host_macs(ctx, plugin, host, self.hosts_changed),
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


def _externals(ctx, plugin, host: str, routers: dict[str, str]) -> dict[str, dict]:
    """{"externals": external network id -> `ovsnat-ext-<id>`, "external_physnets": id ->
    its physical network}, for the gateway networks of these routers, with the host's SNAT
    port on each (created on its first ask: ovsnat.neutron.server_snat). A network that
    cannot be served (not flat or VLAN) has no value: its routers get no PAT and no FIP on
    the host, which says so; the agent serves only its own external network's physnet."""
    ids = sorted({e for e in map(rt.router_external, routers.values()) if e})
    out, physnets = {}, {}
    for net in plugin.get_networks(ctx, filters={"id": ids}) if ids else []:
        value = rt.external_value(net, server_snat.snat_address(ctx, plugin, net, host))
        if value is not None:
            out[net["id"]] = value
            physnets[net["id"]] = net.get("provider:physical_network")
    return {"externals": out, "external_physnets": physnets}


def _held(ctx, plugin, ids: list[str]) -> dict[str, tuple[str | None, dict | None]]:
    """network id -> (the router holding it or None, the IPv4 subnet it routes)."""
    if not ids:
        return {}
    by_net: dict[str, list[dict]] = {n: [] for n in ids}
    for port in _interfaces(ctx, plugin, {"network_id": ids}):
        by_net.setdefault(port["network_id"], []).append(port)
    subnets: dict[str, list[dict]] = {n: [] for n in ids}
    for subnet in plugin.get_subnets(ctx, filters={"network_id": ids, "ip_version": [4]}):
        subnets[subnet["network_id"]].append(subnet)
    out = {}
    for n in ids:
        gateways = {s["gateway_ip"] for s in subnets[n] if s.get("gateway_ip")}
        addresses = {f.get("ip_address") for p in by_net[n] for f in p.get("fixed_ips") or []}
        out[n] = (rt.attached_router(by_net[n], gateways), rt.subnet_of(subnets[n], addresses))
    return out


def _host_macs(ctx, plugin, host: str, created) -> dict[str, str]:
    """host -> routed MAC, from Neutron's DVR MAC table (ML2's DVRDbMixin), the asking
    host's allocated on its first ask (then `created()`: the other hosts must hear of it).
    A core plugin without the table: {} (east-west only between a host's own VMs)."""
    if not hasattr(plugin, "get_dvr_mac_address_list"):
        return {}
    macs = {m["host"]: str(m["mac_address"]) for m in plugin.get_dvr_mac_address_list(ctx)}
    if host not in macs:
        mine = plugin.get_dvr_mac_address_by_host(ctx, host)
        macs[host] = str(mine["mac_address"])
        LOG.info("ovsnat: routed MAC %s allocated to host %s", macs[host], host)
        created()
    return macs


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

    def hosts_changed(self, context) -> None:
        """A host's routed MAC was allocated or deleted: every agent fetches them again."""
        self._cast(context, "hosts_changed")

    def changed(self, context, networks) -> None:
        networks = sorted(set(networks))
        if not networks:
            return
        LOG.debug("ovsnat: routing changed for networks %s", networks)
        self._cast(context, "routing_changed", networks=networks)

    def _cast(self, context, method: str, **kwargs) -> None:
        try:  # retry=1: as the driver's other casts (a broker outage must not hold the API)
            self.client.prepare(fanout=True, retry=1).cast(context, method, **kwargs)
        except Exception:  # repaired by the agents' resync when they reach Neutron again
            LOG.exception("ovsnat: could not cast %s %s", method, kwargs)


class RouterPushes:
    """Neutron callbacks -> RouterNotifier casts (subscribed in every Neutron process)."""

    def __init__(self, notifier: RouterNotifier) -> None:
        self.notifier = notifier

    def subscribe(self) -> None:
        for event in (events.AFTER_CREATE, events.AFTER_DELETE):
            registry.subscribe(self.interface_changed, resources.ROUTER_INTERFACE, event)
            registry.subscribe(self.gateway_changed, resources.ROUTER_GATEWAY, event)
        registry.subscribe(self.router_updated, resources.ROUTER, events.AFTER_UPDATE)
        for event in (events.AFTER_CREATE, events.AFTER_UPDATE, events.AFTER_DELETE):
            registry.subscribe(self.port_changed, resources.PORT, event)
        registry.subscribe(self.agent_deleted, resources.AGENT, events.AFTER_DELETE)

    def port_changed(self, resource, event, trigger, payload) -> None:
        """A VM port bound, moved (a live migration's activation included), re-addressed or
        deleted: its network's neighbours changed for the other hosts."""
        states = [s for s in payload.states if isinstance(s, dict)]
        if not states:
            return
        deleted = event == events.AFTER_DELETE
        old = states[0] if len(states) == 2 or deleted else None
        new = None if deleted else states[-1]
        if rt.neighbour_of(old) != rt.neighbour_of(new):
            self.notifier.changed(payload.context, [states[-1]["network_id"]])

    def agent_deleted(self, resource, event, trigger, payload) -> None:
        """Neutron deletes a host's DVR MAC with its last agent (DVRDbMixin)."""
        if getattr(payload.latest_state, "agent_type", None) == c.AGENT_TYPE:
            self.notifier.hosts_changed(payload.context)

    def interface_changed(self, resource, event, trigger, payload) -> None:
        """A subnet joined or left a router: its network, and the router's other networks,
        whose hosts learn or forget it as a peer (a host holds only its own networks' ports
        and hears only of those: told of the joining network alone, a host of another of
        the router's networks would never route to it)."""
        port = (payload.metadata or {}).get("port") or {}
        self._router_networks(payload.context, payload.resource_id, (port.get("network_id"),))

    def gateway_changed(self, resource, event, trigger, payload) -> None:
        router = payload.latest_state or {}
        self._router_networks(payload.context, router.get("id") or payload.resource_id)

    def router_updated(self, resource, event, trigger, payload) -> None:
        states = [s for s in payload.states if isinstance(s, dict)]
        if len(states) == 2 and rt.gateway_changed(states[0], states[1]):
            self._router_networks(payload.context, payload.resource_id)

    def _router_networks(self, context, router_id: str | None, also: tuple = ()) -> None:
        """Cast the router's networks (its interfaces now) and `also` (one that just left)."""
        ports = []
        if router_id:
            ctx = n_context.get_admin_context()
            ports = _interfaces(ctx, directory.get_plugin(), {"device_id": [router_id]})
        networks = [n for n in [*also, *(p["network_id"] for p in ports)] if n]
        if networks:
            self.notifier.changed(context, networks)
