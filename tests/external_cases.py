"""Several external networks through the real Neutron (issue 26 item 3, and its case in
item 7): an admin's second external network, `public2`, a VLAN provider network (VLAN 200)
on the uplink's physnet, its gateway on the outside router's VLAN 200
(ovsnat.lab.outside); a router whose gateway it is; each host's SNAT address on it a
Neutron port, as on `public`. Real packets: each router's servers leave from their host's
own SNAT port on their router's gateway network, at the same time; a FIP on public2 answers
from outside; `ovsnat status` lists both networks with their SNAT addresses.

Cases only: test_openstack.py collects them on its lab (one bring-up for all).
"""

from __future__ import annotations

import pytest

from ovsnat.lab import outside, scenario
from ovsnat.lab.openstack import servers
from ovsnat.lab.openstack.cloudlab import SERVER_PORT
from ovsnat.lab.openstack.config import EXTERNAL_PHYSNET
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import tcp_connect
from tests.openstack_lab import answers, unique

__all__ = ["test_two_external_networks_each_with_their_own_pat_source"]

PUBLIC2 = {"vlan": 200, "cidr": "198.51.100.128/25", "gateway": "198.51.100.129"}
SNAT_OWNER = "network:ovsnat_snat"


def _public2(cl):
    """The admin's second external network and its outside gateway."""
    outside.add_external_vlan(cl.lab, PUBLIC2["vlan"], f"{PUBLIC2['gateway']}/25")
    net = cl.admin.network.create_network(
        name=unique("public2"),
        is_router_external=True,
        provider_network_type="vlan",
        provider_physical_network=EXTERNAL_PHYSNET,
        provider_segmentation_id=PUBLIC2["vlan"],
    )
    cl.admin.network.create_subnet(
        network_id=net.id,
        ip_version=4,
        cidr=PUBLIC2["cidr"],
        gateway_ip=PUBLIC2["gateway"],
        is_dhcp_enabled=False,
    )
    return net


def _snat_port_ip(cl, network_id: str, host: str) -> str | None:
    ports = list(
        cl.admin.network.ports(network_id=network_id, device_owner=SNAT_OWNER, device_id=host)
    )
    return ports[0].fixed_ips[0]["ip_address"] if len(ports) == 1 else None


def _seen_as(cl, server) -> str | None:
    reply = tcp_connect(cl.lab, server.ns, SERVER_IP, SERVER_PORT, timeout=1)
    return reply.peer_ip if reply.ok else None


@pytest.mark.openstack_long  # about 60 s with the outside VLAN: make test-openstack-long
def test_two_external_networks_each_with_their_own_pat_source(cl):
    """Two routers on hv1, one per external network: each one's server leaves from hv1's
    own SNAT port on its router's gateway network (read from Neutron's API), at the same
    time; a FIP on public2 answers from outside; hv1's status lists both networks."""
    ext2 = _public2(cl)
    net = cl.tenant.network.create_network(name=unique("xnet"))
    sub = cl.tenant.network.create_subnet(
        network_id=net.id, ip_version=4, cidr="10.7.0.0/24", gateway_ip="10.7.0.1"
    )
    router = cl.tenant.network.create_router(
        name=unique("router"), external_gateway_info={"network_id": ext2.id}
    )
    cl.tenant.network.add_interface_to_router(router, subnet=sub.id)
    b, floating, a = servers.boot_many(
        cl,
        [
            (unique("vm"), "hv1", net.id),
            (unique("vm"), "hv2", net.id),
            (unique("vm"), "hv1", cl.topo.tenant_net),  # on the module's router: public
        ],
    )
    snat2 = wait_for(lambda: _snat_port_ip(cl, ext2.id, "hv1"), 10, what="hv1's SNAT port")
    assert snat2.startswith("198.51.100.") and snat2 != PUBLIC2["gateway"]
    wait_for(lambda: _seen_as(cl, b) == snat2, 15, interval=0.1, what=f"b through {snat2}")
    own = cl.snat_ip("hv1")  # the other router's, at the same time
    wait_for(lambda: _seen_as(cl, a) == own, 15, interval=0.1, what=f"a through {own}")
    assert _seen_as(cl, b) == snat2
    fip = cl.tenant.network.create_ip(floating_network_id=ext2.id, port_id=floating.port_id)
    assert fip.floating_ip_address.startswith("198.51.100.")
    answers(cl, fip.floating_ip_address)
    assert _seen_as(cl, floating) == fip.floating_ip_address

    def listed():  # the status file is rewritten once a second
        ext = scenario.status(cl.lab, "hv1").get("routing", {}).get("externals", {})
        return ext.get(ext2.id) if ext.get(ext2.id, {}).get("gateway_mac") else None

    public2 = wait_for(listed, 10, what="public2, its gateway learned, in hv1's status")
    assert public2["vlan"] == PUBLIC2["vlan"] and public2["snat"] == snat2, public2
