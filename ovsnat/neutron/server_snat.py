"""Each host's SNAT ports (docs/routers.md items 3 and 4): one Neutron port per (host,
external network), `device_owner network:ovsnat_snat`, `device_id` the host, named
`ovsnat-snat-<host>`, created on the first request. The address is Neutron's (IPAM), so it
is never handed out as a floating IP. Asked for by get_snat_address (the host's own
external network, `ovsnat-snat-ip`) and by get_routing (each external network a router on
the host names, `ovsnat-ext-*`); both get the same port for the same network.
"""

from __future__ import annotations

from neutron_lib.plugins import utils as plugin_utils
from oslo_log import log

from ovsnat.neutron import constants as c

LOG = log.getLogger(__name__)


def snat_address(ctx, plugin, net: dict, host: str) -> dict | None:
    """{ip, port_id, network_id, cidr, gateway} of the host's SNAT port on `net` (created
    now if it has none), or None when the port has no IPv4 address."""
    filters = {
        "network_id": [net["id"]],
        "device_owner": [c.DEVICE_OWNER_SNAT],
        "device_id": [host],
    }
    ports = sorted(plugin.get_ports(ctx, filters=filters), key=lambda p: p["id"])
    if not ports:
        ports = [_create(ctx, plugin, net, host)]
    port = ports[0]
    for extra in ports[1:]:  # two workers raced on a first request: keep one
        plugin.delete_port(ctx, extra["id"])
    answer = _answer(ctx, plugin, port)
    if answer is not None:  # the wire the network is on: an agent serves only its own's
        answer["physnet"] = net.get("provider:physical_network")
    return answer


def _create(ctx, plugin, net: dict, host: str) -> dict:
    LOG.info("ovsnat: allocating the SNAT address of host %s on network %s", host, net["id"])
    return plugin_utils.create_port(
        plugin,
        ctx,
        {
            "port": {
                "project_id": "",
                "network_id": net["id"],
                "name": f"ovsnat-snat-{host}",
                "device_id": host,
                "device_owner": c.DEVICE_OWNER_SNAT,
                "admin_state_up": True,
            }
        },
    )


def _answer(ctx, plugin, port: dict) -> dict | None:
    for ip in port.get("fixed_ips", []):
        subnet = plugin.get_subnet(ctx, ip["subnet_id"])
        if subnet["ip_version"] == 4:
            return {
                "ip": ip["ip_address"],
                "port_id": port["id"],
                "network_id": port["network_id"],
                "cidr": subnet["cidr"],
                "gateway": subnet.get("gateway_ip"),
            }
    return None
