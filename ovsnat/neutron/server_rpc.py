"""The server half of ovsnat's RPC: the endpoint agents call, and the casts to agents.

Why an endpoint of ovsnat's own: Neutron's L2-agent RPC (get_devices_details_list) returns a
port's segment, MTU and fixed IPs, but not its subnet's CIDR, gateway, DNS servers or host
routes, nor its floating IP; and nothing in Neutron's agent RPC allocates a per-host SNAT
address without an L3 agent (get_agent_gateway_port needs an "L3 agent" row on the host).
The mechanism driver starts this endpoint in neutron-rpc-server (start_rpc_listeners), so
agents talk only RPC, like every Neutron agent, and need no Keystone credentials.
One call returns the keys of a whole batch of ports: a full sync of N ports costs N/100
round trips, not N x 4 REST requests.
"""

from __future__ import annotations

import oslo_messaging
from neutron.objects import network as network_obj
from neutron.objects import ports as ports_obj
from neutron_lib import context as n_context
from neutron_lib import rpc as n_rpc
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory
from oslo_log import log
from oslo_serialization import jsonutils

from ovsnat.neutron import constants as c
from ovsnat.neutron import server_sg, server_snat
from ovsnat.neutron.keys import NO_KEYS, PortFacts, Segment, owner, port_keys

LOG = log.getLogger(__name__)


class AgentNotifier:
    """Casts to every ovsnat agent (fanout); agents act on the ports they have."""

    def __init__(self) -> None:
        target = oslo_messaging.Target(topic=c.AGENT_TOPIC, version=c.RPC_VERSION)
        self.client = n_rpc.get_client(target)

    def ports_changed(self, context, port_ids: list[str]) -> None:
        self._cast(context, "ports_changed", port_ids=list(port_ids))

    def network_changed(self, context, network_id: str) -> None:
        self._cast(context, "network_changed", network_id=network_id)

    def _cast(self, context, method: str, **kwargs) -> None:
        """retry=1: with the broker down, oslo.messaging would otherwise retry forever and
        hold the API request (a FIP update) until RabbitMQ returns. A cast lost that way is
        made good by the agents, which resync when their heartbeat gets through again."""
        try:
            self.client.prepare(fanout=True, retry=1).cast(context, method, **kwargs)
        except Exception:  # a lost cast is repaired by the agents' resync, never fatal
            LOG.exception("ovsnat: could not cast %s %s to the agents", method, kwargs)


def _segment(network: dict) -> Segment | None:
    """The network's segment from its provider attributes (single-segment networks: ML2
    omits them for a network of several segments)."""
    net_type = network.get("provider:network_type")
    if not net_type:
        return None
    return Segment(
        net_type, network.get("provider:physical_network"), network.get("provider:segmentation_id")
    )


def _bound_segments(ctx, host: str, port_ids: list[str]) -> dict[str, Segment]:
    """port id -> the segment the port's binding on `host` is bound to (its bottom level),
    as Neutron's own L2 agents learn it (get_devices_details_list): right for a
    multi-segment network too, whose provider attributes ML2 leaves out."""
    levels: dict[str, object] = {}
    for level in ports_obj.PortBindingLevel.get_objects(ctx, host=host, port_id=port_ids):
        if level.segment_id and (
            level.port_id not in levels or level.level > levels[level.port_id].level
        ):
            levels[level.port_id] = level
    if not levels:
        return {}
    segs = {
        s.id: s
        for s in network_obj.NetworkSegment.get_objects(
            ctx, id=[lv.segment_id for lv in levels.values()]
        )
    }
    return {
        pid: Segment(seg.network_type, seg.physical_network, seg.segmentation_id)
        for pid, lv in levels.items()
        if (seg := segs.get(lv.segment_id)) is not None
    }


def _port_facts(
    port: dict, networks: dict, subnets: dict, fips: list[dict], segment: Segment | None
) -> PortFacts:
    network = networks.get(port["network_id"], {})
    fixed = tuple((ip["subnet_id"], ip["ip_address"]) for ip in port.get("fixed_ips", []))
    return PortFacts(
        port_id=port["id"],
        network_id=port["network_id"],
        fixed_ips=fixed,
        subnets={sid: subnets[sid] for sid, _ in fixed if sid in subnets},
        segment=segment or _segment(network),
        mtu=network.get("mtu"),
        floating_ips=tuple(
            (f["fixed_ip_address"], f["floating_ip_address"])
            for f in fips
            if f.get("port_id") == port["id"] and f.get("fixed_ip_address")
        ),
        **owner(port),  # device_id, project: for the metadata proxy
    )


def _migrating_to(profile) -> str | None:
    """Nova's `migrating_to` in a binding's profile (a dict, or its JSON text)."""
    if isinstance(profile, str):
        try:
            profile = jsonutils.loads(profile or "{}")
        except ValueError:
            return None
    return (profile or {}).get("migrating_to") or None


def _serves(binding) -> bool:
    """Keys go only to a host holding a binding of the port, active or inactive (a live
    migration's destination before the move, its source after), and not a failed one: a
    host that merely has a row with the port's id (a stale plug, a mistake) gets nothing,
    and neither does a host where the driver refused the port."""
    return binding is not None and binding.vif_type != portbindings.VIF_TYPE_BINDING_FAILED


class OvsnatServerRpc:
    """Served by neutron-rpc-server on topic ovsnat-plugin."""

    target = oslo_messaging.Target(version=c.SERVER_RPC_VERSION)

    def get_port_keys(self, context, host: str, port_ids: list[str]) -> dict:
        """port id -> the contract's keys (dict), or None for a port Neutron does not know
        (deleted): only that answer lets an agent remove a port's keys."""
        return {pid: p and p["keys"] for pid, p in self.get_ports(context, host, port_ids).items()}

    def get_ports(self, context, host: str, port_ids: list[str]) -> dict:
        """(1.1) port id -> {"keys": the contract's keys (none unless `host` holds a
        binding of the port: _serves), "up": the port is ACTIVE and bound to `host`, (1.2)
        "binding": the port's binding on `host`, {"status": ACTIVE or INACTIVE, "vif_type":
        ..., "migrating_to": the host Nova's live migration moves the port to (its key in
        the binding's profile) or None} or None}, or None for a port Neutron does not know.
        A live migration's destination holds a bound INACTIVE binding until Nova activates
        it; the source's binding, once deactivated, is INACTIVE and unbound. "up" spares a
        restarted agent reporting every port up again: Neutron spends tens of milliseconds
        on each such report, and a port it already has ACTIVE here needs none. "binding"
        says when to report up (ovsnat.neutron.devices). The VLAN is the bound segment's (a
        network of several segments has no provider attributes)."""
        ctx = n_context.get_admin_context()
        plugin = directory.get_plugin()
        ports = plugin.get_ports(ctx, filters={"id": list(port_ids)})
        net_ids = sorted({p["network_id"] for p in ports})
        networks = {n["id"]: n for n in plugin.get_networks(ctx, filters={"id": net_ids})}
        subnet_ids = sorted({ip["subnet_id"] for p in ports for ip in p.get("fixed_ips", [])})
        subnets = {s["id"]: s for s in plugin.get_subnets(ctx, filters={"id": subnet_ids})}
        fips = self._floatingips(ctx, [p["id"] for p in ports])
        ids = [p["id"] for p in ports]
        bindings = (
            {b.port_id: b for b in ports_obj.PortBinding.get_objects(ctx, host=host, port_id=ids)}
            if ports
            else {}
        )
        segments = _bound_segments(ctx, host, ids) if ports else {}
        result: dict = {pid: None for pid in port_ids}
        for port in ports:
            b = bindings.get(port["id"])
            result[port["id"]] = {
                "keys": port_keys(
                    _port_facts(port, networks, subnets, fips, segments.get(port["id"]))
                )
                if _serves(b)
                else dict(NO_KEYS),
                "up": port.get("status") == "ACTIVE" and port.get("binding:host_id") == host,
                "binding": {
                    "status": b.status,
                    "vif_type": b.vif_type,
                    "migrating_to": _migrating_to(b.profile),
                }
                if b
                else None,
            }
            if not _serves(b):
                LOG.info(
                    "ovsnat: port %s has no usable binding on host %s (%s): no keys there",
                    port["id"],
                    host,
                    b.vif_type if b else "none",
                )
        server_sg.add_port_keys(result, ports)  # groups, port security, admin state
        LOG.debug("ovsnat: keys for %d ports requested by %s", len(port_ids), host)
        return result

    def get_up_ports(self, context, host: str) -> list[str]:
        """(1.1) The ports Neutron has ACTIVE on `host` (their active binding): after a
        restart, the agent reports down those whose row went away while it was not
        looking."""
        ctx = n_context.get_admin_context()
        ports = directory.get_plugin().get_ports(
            ctx, filters={"binding:host_id": [host], "status": ["ACTIVE"]}, fields=["id"]
        )
        return sorted(p["id"] for p in ports)

    @staticmethod
    def _floatingips(ctx, port_ids: list[str]) -> list[dict]:
        l3 = directory.get_plugin(plugin_constants.L3)
        if l3 is None or not port_ids:
            return []
        return l3.get_floatingips(ctx, filters={"port_id": port_ids})

    def get_snat_address(self, context, host: str, network: str = "") -> dict | None:
        """This host's SNAT port on the external network (ovsnat.neutron.server_snat)."""
        ctx = n_context.get_admin_context()
        plugin = directory.get_plugin()
        net = self._external_network(ctx, plugin, network)
        if net is None:
            return None
        return server_snat.snat_address(ctx, plugin, net, host)

    @staticmethod
    def _external_network(ctx, plugin, network: str) -> dict | None:
        nets = plugin.get_networks(ctx, filters={"router:external": [True]})
        if network:
            nets = [n for n in nets if network in (n["id"], n["name"])]
        if len(nets) != 1:
            LOG.warning(
                "ovsnat: %d external networks match %r; need exactly one", len(nets), network
            )
            return None
        return nets[0]
