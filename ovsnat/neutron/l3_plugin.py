"""ovsnat's L3 service plugin (`service_plugins = ovsnat-router`, docs/routers.md items 4
and 6): Neutron's own router plugin (its API, database and floating IPs, as OVN's
`ovn-router` is) with two differences an operator can see.

- **What ovsnat does not do is refused, not ignored.** The extensions below are left out
  of the plugin's list, so Neutron's API rejects their attributes and resources (a 400 for
  an unknown attribute, a 404 for a resource) instead of accepting them and doing nothing;
  the plugin refuses to start beside the `port_forwarding` service plugin (one log line).
- **Floating IPs say where they are live.** A FIP given to another port, or to none, or
  whose port is deleted, is DOWN at once; the host where it goes live reports it ACTIVE
  (ovsnat.neutron.server_routers.fip_status, from the controller's `ovsnat-fip-live`).
- **Router ports say what they are.** ovsnat routes on every host at once (no L3 agent, no
  binding to a host): a router's interface and gateway ports are ACTIVE from their
  creation, as OVN reports its router ports, instead of DOWN forever.

Runs in neutron-server (Neutron's venv): imports Neutron.
"""

from __future__ import annotations

from neutron.services.l3_router import l3_router_plugin
from neutron_lib import constants as n_const
from neutron_lib.api.definitions import (
    dvr,
    extraroute,
    extraroute_atomic,
    fip_pf_detail,
    l3_ext_ha_mode,
    l3_flavors,
    network_ha,
    qos_gateway_ip,
    router_availability_zone,
)
from neutron_lib.api.definitions import (
    router_admin_state_down_before_update as r_admin_state_down_before_update,
)
from neutron_lib.callbacks import events, registry, resources
from neutron_lib.plugins import directory
from oslo_config import cfg
from oslo_log import log

LOG = log.getLogger(__name__)

# alias -> why ovsnat leaves it out (docs/openstack.md lists them)
REFUSED = {
    extraroute.ALIAS: "router routes: ovsnat routes between a router's subnets only",
    extraroute_atomic.ALIAS: "router routes: ovsnat routes between a router's subnets only",
    dvr.ALIAS: "every ovsnat router is distributed already: no flag to set",
    r_admin_state_down_before_update.ALIAS: "a DVR router's rule (it needs dvr)",
    l3_ext_ha_mode.ALIAS: "HA routers: no L3 agent, nothing to fail over",
    network_ha.ALIAS: "HA routers' networks: no L3 agent",
    n_const.L3_AGENT_SCHEDULER_EXT_ALIAS: "no L3 agents to schedule routers to",
    router_availability_zone.ALIAS: "no L3 agents: a router is on every host",
    l3_flavors.ALIAS: "one kind of router",
    "qos-fip": "floating IP QoS is not done",
    qos_gateway_ip.ALIAS: "gateway QoS is not done",
    fip_pf_detail.ALIAS: "floating IP port forwarding is not done",
}
# Service plugins whose API ovsnat would accept and ignore.
CLASHING = ("port_forwarding", "neutron.services.portforwarding.pf_plugin.PortForwardingPlugin")
ROUTER_PORTS = (n_const.DEVICE_OWNER_ROUTER_INTF, n_const.DEVICE_OWNER_ROUTER_GW)
FIP_DOWN, FIP_ACTIVE = n_const.FLOATINGIP_STATUS_DOWN, n_const.FLOATINGIP_STATUS_ACTIVE


def kept_aliases(aliases: list[str]) -> list[str]:
    return [a for a in aliases if a not in REFUSED]


def clashing(service_plugins: list[str]) -> list[str]:
    return [p for p in service_plugins if p in CLASHING]


class OvsnatL3RouterPlugin(l3_router_plugin.L3RouterPlugin):
    """Neutron's L3RouterPlugin, its extension list trimmed and its router ports ACTIVE."""

    def __init__(self) -> None:
        clash = clashing(cfg.CONF.service_plugins)
        if clash:
            LOG.error(
                "ovsnat-router: service plugin %s is loaded; ovsnat does not do floating IP "
                "port forwarding and would accept and ignore it: remove it from "
                "service_plugins",
                ", ".join(clash),
            )
            raise RuntimeError(f"ovsnat-router cannot run beside {', '.join(clash)}")
        super().__init__()
        for resource in (resources.ROUTER_INTERFACE, resources.ROUTER_GATEWAY):
            registry.subscribe(self._router_port_created, resource, events.AFTER_CREATE)
        registry.subscribe(
            self._fip_association_changing, resources.FLOATING_IP, events.PRECOMMIT_UPDATE
        )

    @property
    def supported_extension_aliases(self) -> list[str]:
        if not hasattr(self, "_ovsnat_aliases"):
            self._ovsnat_aliases = kept_aliases(super().supported_extension_aliases)
        return self._ovsnat_aliases

    def _router_port_created(self, resource, event, trigger, payload) -> None:
        """A router interface or gateway port: ACTIVE (ovsnat serves it on every host)."""
        for port_id in router_port_ids(resource, payload):
            directory.get_plugin().update_port_status(
                payload.context, port_id, n_const.PORT_STATUS_ACTIVE
            )

    def _fip_association_changing(self, resource, event, trigger, payload) -> None:
        """A floating IP given to another port (or to none) is DOWN until the host of its
        new port reports it live (ovsnat.neutron.server_routers.fip_status). Set inside the
        update's transaction, so no agent, told of the change after the commit, can report
        it live before this lands."""
        old, new = payload.states[0], payload.desired_state
        if old.get("port_id") != getattr(new, "fixed_port_id", None):
            self.update_floatingip_status(payload.context, old["id"], FIP_DOWN)

    def disassociate_floatingips(self, context, port_id):
        """A deleted port's floating IPs lose it: DOWN (Neutron leaves their status)."""
        fips = self.get_floatingips(context.elevated(), filters={"port_id": [port_id]})
        routers = super().disassociate_floatingips(context, port_id)
        for fip in fips:
            self.update_floatingip_status(context.elevated(), fip["id"], FIP_DOWN)
        return routers


def router_port_ids(resource, payload) -> list[str]:
    """The router port an AFTER_CREATE of ROUTER_INTERFACE (metadata `port`) or
    ROUTER_GATEWAY (the router, whose gw_port_id) made."""
    if resource == resources.ROUTER_INTERFACE:
        port = (payload.metadata or {}).get("port") or {}
        owner_ok = port.get("device_owner") in ROUTER_PORTS
        return [port["id"]] if port.get("id") and owner_ok else []
    router = payload.latest_state
    gw = getattr(router, "gw_port_id", None)
    if gw is None and isinstance(router, dict):
        gw = router.get("gw_port_id")
    return [gw] if gw else []
