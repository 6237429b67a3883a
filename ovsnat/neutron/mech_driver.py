"""ML2 mechanism driver `ovsnat`: binds ports to ovsnat's bridge on hosts whose
ovsnat-neutron-agent is alive, and pushes changes ML2 does not tell L2 agents about.

Binding follows Neutron's own agent-based drivers (SimpleAgentMechanismDriverBase, as the
openvswitch driver): the agent's heartbeat row says which bridge it serves, its datapath type
and which physical networks its fabric port reaches; a port binds on a vlan or flat segment
of such a physnet with vif_type `ovs`, so Nova and os-vif plug the instance into ovsnat's
bridge as for any OVS backend. `port_filter` says whether ovsnat filters the port: true when
Neutron has security groups at all ([securitygroup] enable_security_group, Neutron's
switch), false otherwise, when ovsnat enforces none (ovsnat.neutron.server_sg).

Refusals: a port ovsnat cannot serve (several fixed IPs, IPv6, a subnet without a gateway,
its gateway's address, a network overlapping what the host reserves, two IPv4 subnets or two
reachable segments: ovsnat.neutron.binding) is not bound: `binding_failed` at once, the
reason logged once as an error and kept in the binding's vif_details (`ovsnat_refused`), so
Nova fails the boot at once instead of after its 300 s wait for `network-vif-plugged`. A
fixed-IP update that would make a port ovsnat has bound unservable is refused (400) for the
same reasons. Multi-segment networks bind on the one segment of the agent's physnets; the
keys carry that segment's VLAN (ovsnat.neutron.server_rpc reads it from the binding).

Pushes: Neutron's L2 agents hear port_update/port_delete/network_update on the
q-agent-notifier-* topics, but nothing about floating IPs, subnets or a port's new fixed
IPs. The driver subscribes to those events and casts the affected port ids (or network id)
to every ovsnat agent; an agent that has such a port asks the driver's RPC endpoint for the
port's keys. Casting ids, not values, means a late or reordered cast can never install a
stale value: the agent always reads the current truth.
"""

from __future__ import annotations

from neutron.plugins.ml2.drivers import mech_agent
from neutron_lib import constants as n_const
from neutron_lib import exceptions as n_exc
from neutron_lib import rpc as n_rpc
from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import events, registry, resources
from neutron_lib.plugins import directory
from neutron_lib.plugins.ml2 import api
from oslo_log import log

from ovsnat.model.validate import REPORT_KEY, HostLimits
from ovsnat.neutron import binding, server_routers, server_sg
from ovsnat.neutron import constants as c
from ovsnat.neutron.server_rpc import AgentNotifier, OvsnatServerRpc

LOG = log.getLogger(__name__)

FIP_EVENTS = (events.AFTER_CREATE, events.AFTER_UPDATE, events.AFTER_DELETE)
DRIVER_NAME = "ovsnat"  # the entry point's name: ML2's name for this driver
LOGGED_REFUSALS = 1024  # (port, host) -> reason already logged as an error


def _fip_binding(fip: dict) -> tuple:
    """What of a floating IP the contract's keys depend on."""
    return (fip.get("port_id"), fip.get("fixed_ip_address"), fip.get("floating_ip_address"))


class OvsnatMechanismDriver(mech_agent.SimpleAgentMechanismDriverBase):
    """Bind normal (virtio) ports on vlan/flat segments of the agent's physnets."""

    def __init__(self) -> None:
        super().__init__(
            c.AGENT_TYPE,
            portbindings.VIF_TYPE_OVS,
            {
                portbindings.CAP_PORT_FILTER: server_sg.groups_enabled(),
                portbindings.OVS_HYBRID_PLUG: False,
            },
            supported_vnic_types=[portbindings.VNIC_NORMAL],
        )
        self.notifier: AgentNotifier | None = None
        self.refused: dict[tuple[str, str], str] = {}

    @property
    def connectivity(self) -> str:
        return portbindings.CONNECTIVITY_L2

    def initialize(self) -> None:
        """Runs in every Neutron process (API workers and RPC workers). FIP callbacks fire
        where the API request is served, so the cast leaves from the API process."""
        self.notifier = AgentNotifier()
        for event in FIP_EVENTS:
            registry.subscribe(self._floatingip_changed, resources.FLOATING_IP, event)
        self.group_pushes = server_sg.GroupPushes(server_sg.GroupNotifier())
        self.group_pushes.subscribe()
        self.router_pushes = server_routers.RouterPushes(server_routers.RouterNotifier())
        self.router_pushes.subscribe()
        registry.subscribe(
            server_routers.snat_ports_go_with_their_agent, resources.AGENT, events.AFTER_DELETE
        )

    def start_rpc_listeners(self) -> list:
        """ML2 calls this in neutron-rpc-server only: the endpoint agents call for keys."""
        conn = n_rpc.Connection()
        conn.create_consumer(
            c.SERVER_TOPIC,
            [
                OvsnatServerRpc(),
                server_sg.SecurityGroupRpc(),
                server_routers.RouterRpc(server_routers.RouterNotifier()),
            ],
            fanout=False,
        )
        return conn.consume_in_threads()

    # --- binding -----------------------------------------------------------------------
    def get_allowed_network_types(self, agent=None):
        return (n_const.TYPE_FLAT, n_const.TYPE_VLAN)

    def get_mappings(self, agent):
        conf = agent["configurations"]
        return {physnet: conf.get(c.CONF_BRIDGE) for physnet in conf.get(c.CONF_PHYSNETS, [])}

    def try_to_bind_segment_for_agent(self, context, segment, agent) -> bool:
        """Bind as the base class does, unless ovsnat could not serve the port there:
        then the binding fails now, with the reason (ML2 tries other drivers first)."""
        if not self.check_segment_for_agent(segment, agent):
            return False
        problem = self._judge(
            context,
            segment,
            agent,
            [s for s in context.network.network_segments if self.check_segment_for_agent(s, agent)],
        )
        if problem is None:
            return super().try_to_bind_segment_for_agent(context, segment, agent)
        self._log_refusal(context.current["id"], context.host, problem)
        context.set_binding(None, portbindings.VIF_TYPE_BINDING_FAILED, {binding.REFUSED: problem})
        return True

    def _judge(self, context, segment, agent, bindable) -> str | None:
        plugin = directory.get_plugin()
        network = context.network.current
        subnets = plugin.get_subnets(
            context.plugin_context, filters={"network_id": [network["id"]]}
        )
        return binding.refusal(
            context.current, network, subnets, segment, bindable, self._limits(agent)
        )

    @staticmethod
    def _limits(agent) -> HostLimits | None:
        """What the host reserves, as its agent reported it (None: not reported, or not
        understood: the host's own controller still refuses what it cannot serve)."""
        report = (agent.get("configurations") or {}).get(REPORT_KEY)
        if report is None:
            return None
        try:
            return HostLimits.from_report(report)
        except ValueError as e:
            LOG.warning(
                "ovsnat: agent on host %s reported unreadable limits: %s", agent.get("host"), e
            )
            return None

    def _log_refusal(self, port_id: str, host: str, problem: str) -> None:
        """ML2 retries a failed binding up to 10 times in one request: one error line per
        port, host and reason, the repeats at debug."""
        key = (port_id, host)
        if self.refused.get(key) == problem:
            LOG.debug("ovsnat: still refusing port %s on host %s: %s", port_id, host, problem)
            return
        if len(self.refused) >= LOGGED_REFUSALS:
            self.refused.pop(next(iter(self.refused)))
        self.refused[key] = problem
        LOG.error("ovsnat: refusing to bind port %s on host %s: %s", port_id, host, problem)

    def get_vif_details(self, context, agent, segment):
        """The bridge and datapath type come from the agent of the host being bound. The
        datapath type matters: os-vif's plug sets it on the bridge it is given, and its
        default ("system") would turn a netdev bridge into a kernel one."""
        conf = agent["configurations"]
        return {
            **self.vif_details,
            portbindings.VIF_DETAILS_BRIDGE_NAME: conf.get(c.CONF_BRIDGE),
            portbindings.OVS_DATAPATH_TYPE: conf.get(c.CONF_DATAPATH, "system"),
        }

    # --- pushes ------------------------------------------------------------------------
    def _floatingip_changed(self, resource, event, trigger, payload) -> None:
        """A FIP created, (dis)associated, moved between ports or deleted: every port it
        left or reached must be looked at again. An update that changes none of what the
        keys depend on (a description, QoS) is not cast."""
        states = [s for s in payload.states if isinstance(s, dict)]
        if (
            event == events.AFTER_UPDATE
            and len(states) == 2
            and _fip_binding(states[0]) == _fip_binding(states[1])
        ):
            return
        port_ids = sorted({s["port_id"] for s in states if s.get("port_id")})
        port_ids += server_sg.pair_holders(states)  # a VIP's FIP
        if port_ids:
            LOG.debug("ovsnat: floating IP %s %s, ports %s", payload.resource_id, event, port_ids)
            self.notifier.ports_changed(payload.context, port_ids)

    def update_port_precommit(self, context) -> None:
        """A port ovsnat has bound keeps being servable: new fixed IPs that it could not
        serve (several, IPv6, the gateway's...) are refused with the reason (HTTP 400)."""
        super().update_port_precommit(context)
        original, current = context.original, context.current
        if not original or original.get("fixed_ips") == current.get("fixed_ips"):
            return
        levels = context.binding_levels or []
        if not levels or levels[-1].get(api.BOUND_DRIVER) != DRIVER_NAME:
            return
        segment = levels[-1].get(api.BOUND_SEGMENT) or {}
        agents = [a for a in context.host_agents(self.agent_type) if a.get("alive")]
        problem = self._judge(context, segment, agents[0] if agents else {}, [segment])
        if problem:
            raise n_exc.InvalidInput(
                error_message=(
                    f"ovsnat cannot serve port {current['id']} with fixed IPs "
                    f"{[ip.get('ip_address') for ip in current.get('fixed_ips') or []]}: "
                    f"{problem}"
                )
            )

    def update_port_postcommit(self, context) -> None:
        """ML2 notifies L2 agents of a port update for admin state, security groups and
        bindings, but not for new fixed IPs."""
        if context.original and context.original.get("fixed_ips") != context.current.get(
            "fixed_ips"
        ):
            self.notifier.ports_changed(context.plugin_context, [context.current["id"]])

    def update_subnet_postcommit(self, context) -> None:
        """Gateway, DNS servers and host routes live on the subnet: every port of the
        network may carry them."""
        self.notifier.network_changed(context.plugin_context, context.current["network_id"])

    def update_network_postcommit(self, context) -> None:
        if context.original and context.original.get("mtu") != context.current.get("mtu"):
            self.notifier.network_changed(context.plugin_context, context.current["id"])
