"""Binding refusals, on test_security_groups_lab.py's lab (one bring-up for both: its agents report
what their controllers reserve, as these cases need). Through Neutron's API (a real Neutron
29 with ovsnat's ML2 driver, agents that report what their host's controller reserves):
every port ovsnat cannot serve is refused at binding (`binding_failed` in the API's answer,
the reason in the binding's vif_details and in Neutron's log) while the other ports keep
working; a multi-segment network binds on its fabric segment and its VLAN reaches the row; a
bound port cannot be given fixed IPs it could only be half-served with; keys go only to a
host that holds a binding of the port.

The decision itself is unit-tested in tests/test_neutron_binding.py; here Neutron's own code
runs it (ML2's binding loop, its retries, the bindings API, the agents' RPC), in the lab of
OpenStack's own services: the witness and the multi-segment network's server are booted by
Nova. Ports are bound in their creating request, as Nova creates them for a scheduled
server, by the cloud's admin in the tenant's project; an inactive binding is made as Nova's
conductor makes it (its service user: Neutron lets only the `service` role touch bindings).
What Nova never does (plug a refused port, or plug on a host without a binding: a stale
plug, a mistake) the tests do themselves: Interface rows written as os-vif's OVS plugin
writes them before any tap exists (`plug_rows`).
"""

from __future__ import annotations

import os
import re
import time
import uuid

import openstack.exceptions
import pytest

from ovsnat.lab.openstack import config, keystone, servers
from ovsnat.lab.openstack import stackconf as sc
from ovsnat.lab.openstack.cloud import InNamespace
from ovsnat.lab.sh import wait_for
from tests.openstack_lab import HOSTS, boot, row_ids, unique, wait_active
from tests.secgroup_keys import TIMES

REFUSED = "ovsnat_refused"
# Provider VLANs outside the lab's tenant range (config.VLAN_RANGE, 100-199), from which
# Neutron allocates each tenant network's VLAN at random: a fixed VLAN inside it can be
# taken by a network made earlier in the module (409, "The VLAN 180 ... is in use").
VLAN = 280


@pytest.fixture(scope="module")
def refusals(cl):
    """The agents' reports of their controllers' limits in, Nova's service user, and one
    server booted by Nova on hv1: every refusal must leave it working."""
    wait_for(
        lambda: all(
            a.configuration.get("ovsnat_host_limits")
            for a in cl.conn.network.agents()
            if a.host in HOSTS
        ),
        60,
        interval=0.5,
        what="the agents' reports of their hosts' limits",
    )
    cl.agents_alive()
    cl.service = InNamespace(keystone.connect("nova", sc.SERVICE_PROJECT), cl.stack.ns)
    cl.witness = boot(cl, "hv1")
    wait_active(cl, cl.witness.port_id)
    return cl


def network(cl, cidr: str, gateway: str | None = "auto", v6: bool = False, **net):
    """A tenant network (a VLAN of the fabric unless `net` says otherwise) with one subnet."""
    n = cl.operator.network.create_network(name=unique("net"), **net)
    kw = {} if gateway == "auto" else {"gateway_ip": gateway}
    sub = cl.operator.network.create_subnet(
        network_id=n.id, ip_version=6 if v6 else 4, cidr=cidr, **kw
    )
    return n, sub


def bind(cl, net_id: str, host: str = "hv1", **kw):
    """A port bound in its creating request, as Nova binds one for a server scheduled to
    `host` (the tenant's, made by the admin in its project), so its binding's outcome is in
    the API's answer."""
    cl.agents_alive(host)
    return cl.operator.network.create_port(
        network_id=net_id,
        name=unique("port"),
        binding_host_id=host,
        device_owner="compute:nova",  # Neutron's bindings API serves compute ports only
        device_id=str(uuid.uuid4()),
        **kw,
    )


def tap(port) -> str:
    """Nova's name for the port's tap (servers.Server.tap)."""
    return ("tap" + port.id)[:14]


def plug_rows(cl, host: str, *ports) -> None:
    """Interface rows for `ports` on `host`'s br-int, in one transaction, as os-vif's OVS
    plugin writes them for Nova (vif_type ovs, no hybrid plug) before the tap exists
    (Nova's pre_live_migration): Nova's tap name, iface-id, iface-status, attached-mac,
    vm-uuid. The host's agent sees them in one update and asks Neutron about them in one
    call."""
    args: list[str] = []
    for p in ports:
        args += [
            "--",
            "--may-exist",
            "add-port",
            "br-int",
            tap(p),
            "--",
            "set",
            "Interface",
            tap(p),
            f"external_ids:iface-id={p.id}",
            "external_ids:iface-status=active",
            f'external_ids:attached-mac="{p.mac_address}"',
            f"external_ids:vm-uuid={uuid.uuid4()}",
        ]
    cl.lab.hosts[host].vsctl(*args)


def unplug_rows(cl, host: str, *ports) -> None:
    for p in ports:
        cl.lab.hosts[host].vsctl("--if-exists", "del-port", "br-int", tap(p))


def answered_without_keys(cl, port, host: str) -> None:
    """Until neutron-rpc-server has told `host`'s agent it has no keys for `port`."""
    wait_for(
        lambda: re.search(
            rf"port {port.id} has no usable binding on host {host}", cl.services.rpc_log()
        ),
        10,
        interval=0.1,
        what=f"Neutron's answer to {host} about the port",
    )


def keys_for_control_only(cl, host: str, control, port) -> None:
    """Plugged together on `host`: the control port gets its keys, and Neutron answers the
    host's agent that `port` has none there (its row gets no ovsnat key)."""
    wait_for(
        lambda: row_ids(cl, host, tap(control)).get("ovsnat-fixed-ip"),
        10,
        interval=0.1,
        what=f"the control port's keys on {host}",
    )
    answered_without_keys(cl, port, host)
    assert not [k for k in row_ids(cl, host, tap(port)) if k.startswith("ovsnat")]


def api_log(cl) -> str:
    with open(os.path.join(cl.stack.paths.log, "neutron-api.log")) as f:
        return f.read()


def assert_refused(cl, port, why: str) -> None:
    """Refused at once (the creating request's answer), the reason on the port and in
    Neutron's log, once; the host's other ports unharmed and a good port still binds."""
    assert port.binding_vif_type == "binding_failed", port.binding_vif_type
    reason = (port.binding_vif_details or {}).get(REFUSED, "")
    assert why in reason, reason
    shown = cl.conn.network.get_port(port.id)
    assert shown.binding_vif_details.get(REFUSED) == reason and shown.status == "DOWN"
    lines = re.findall(
        rf"ERROR .*ovsnat: refusing to bind port {port.id} on host hv1: (.*)", api_log(cl)
    )
    assert lines and why in lines[0], lines
    assert len(lines) == 1, "ML2's retries are logged once"  # 10 attempts, 1 line
    assert_unharmed(cl)


def assert_unharmed(cl) -> None:
    w = cl.witness
    assert cl.conn.network.get_port(w.port_id).status == "ACTIVE"
    assert row_ids(cl, "hv1", w.tap).get("ovsnat-installed") == "true"
    good = bind(cl, cl.topo.tenant_net)
    assert good.binding_vif_type == "ovs" and not (good.binding_vif_details or {}).get(REFUSED)
    cl.operator.network.delete_port(good.id)


# --- refusals ----------------------------------------------------------------------------
def test_an_ipv6_only_port_is_refused_at_binding(cl, refusals):
    net, _ = network(cl, "2001:db8:1::/64", v6=True)
    t = time.monotonic()
    port = bind(cl, net.id)
    TIMES["refused port create (API call)"] = time.monotonic() - t
    assert_refused(cl, port, "is not IPv4: ovsnat serves IPv4 only")


def test_a_dual_stack_port_is_refused_and_a_host_it_is_plugged_on_anyway_gets_no_keys(cl, refusals):
    net, _ = network(cl, "10.20.0.0/24")
    cl.operator.network.create_subnet(network_id=net.id, ip_version=6, cidr="2001:db8:2::/64")
    port = bind(cl, net.id)
    assert len(port.fixed_ips) == 2
    assert_refused(cl, port, "is not IPv4")
    good = bind(cl, cl.topo.tenant_net)  # positive control, plugged with it
    plug_rows(cl, "hv1", port, good)
    try:
        keys_for_control_only(cl, "hv1", good, port)
    finally:
        unplug_rows(cl, "hv1", port, good)
        cl.operator.network.delete_port(good.id)


def test_a_port_with_two_ipv4_addresses_is_refused_not_half_served(cl, refusals):
    net, sub = network(cl, "10.21.0.0/24")
    port = bind(
        cl,
        net.id,
        fixed_ips=[
            {"subnet_id": sub.id, "ip_address": "10.21.0.5"},
            {"subnet_id": sub.id, "ip_address": "10.21.0.6"},
        ],
    )
    assert_refused(cl, port, "it has 2 fixed IPs (10.21.0.5, 10.21.0.6)")


def test_a_subnet_without_gateway_is_refused(cl, refusals):
    net, sub = network(cl, "10.22.0.0/24", gateway=None)
    assert sub.gateway_ip is None
    assert_refused(cl, bind(cl, net.id), "has no gateway (created with --gateway none)")


def test_a_port_holding_its_subnets_gateway_address_is_refused(cl, refusals):
    net, sub = network(cl, "10.23.0.0/24")
    port = bind(cl, net.id, fixed_ips=[{"subnet_id": sub.id, "ip_address": sub.gateway_ip}])
    assert_refused(cl, port, f"fixed IP {sub.gateway_ip} is the VMs' gateway address")


def test_a_network_overlapping_the_hosts_external_network_is_refused(cl, refusals):
    """hv1's controller: external_cidr 203.0.113.0/24 (its agent reported it)."""
    net, _ = network(cl, "203.0.113.128/25")
    assert_refused(cl, bind(cl, net.id), "203.0.113.128/25 overlaps external_cidr 203.0.113.0/24")


def test_a_network_overlapping_the_hosts_transit_range_is_refused(cl, refusals):
    """hv1's controller chose transit_cidr 240.0.0.0/10 (auto) and its agent reported it."""
    limits = next(a for a in cl.conn.network.agents() if a.host == "hv1").configuration[
        "ovsnat_host_limits"
    ]
    transit = limits["reserved"]["transit_cidr"]
    assert transit == "240.0.0.0/10", limits
    net, _ = network(cl, "240.0.7.0/24")
    assert_refused(cl, bind(cl, net.id), "240.0.7.0/24 overlaps transit_cidr 240.0.0.0/10")


def test_two_ipv4_subnets_on_one_network_are_refused(cl, refusals):
    net, _ = network(cl, "10.24.0.0/24")
    cl.operator.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.25.0.0/24")
    assert_refused(
        cl, bind(cl, net.id), "has 2 IPv4 subnets (10.24.0.0/24, 10.25.0.0/24): ovsnat serves one"
    )


def test_a_network_with_two_fabric_segments_is_refused(cl, refusals):
    net, _ = network(
        cl,
        "10.26.0.0/24",
        segments=[
            {
                "provider:network_type": "vlan",
                "provider:physical_network": "fabric",
                "provider:segmentation_id": VLAN,
            },
            {
                "provider:network_type": "vlan",
                "provider:physical_network": "fabric",
                "provider:segmentation_id": VLAN + 1,
            },
        ],
    )
    assert_refused(
        cl,
        bind(cl, net.id),
        f"has 2 segments this host reaches (vlan:fabric:{VLAN}, vlan:fabric:{VLAN + 1})",
    )


# --- what binds ------------------------------------------------------------------------------
def test_a_multi_segment_network_binds_its_fabric_segment_and_the_row_gets_its_vlan(cl, refusals):
    """ML2 omits provider:* for a network of several segments: the VLAN comes from the
    segment the port is bound to (the binding's level), as Neutron's own agents get it. A
    server booted there by Nova gets its port bound, the VLAN on its row and its lease."""
    net, _ = network(
        cl,
        "10.27.0.0/24",
        segments=[
            {
                "provider:network_type": "vlan",
                "provider:physical_network": config.ELSEWHERE_PHYSNET,
                "provider:segmentation_id": VLAN + 2,
            },
            {
                "provider:network_type": "vlan",
                "provider:physical_network": "fabric",
                "provider:segmentation_id": VLAN + 3,
            },
        ],
    )
    assert cl.conn.network.get_network(net.id).provider_segmentation_id is None
    server = boot(cl, "hv1", network=net.id)
    try:
        port = cl.conn.network.get_port(server.port_id)
        assert port.binding_vif_type == "ovs", port.binding_vif_details
        assert row_ids(cl, "hv1", server.tap)["ovsnat-vlan"] == str(VLAN + 3)
        assert row_ids(cl, "hv1", server.tap)["ovsnat-network"] == net.id
    finally:
        servers.delete(cl, server)


def test_a_bound_port_cannot_be_given_fixed_ips_it_would_be_half_served_with(cl, refusals):
    net, sub = network(cl, "10.28.0.0/24")
    port = bind(cl, net.id)
    assert port.binding_vif_type == "ovs"
    mine = port.fixed_ips[0]["ip_address"]
    # addresses Neutron did not give the port (it picks at random: .77 once, 409 duplicate)
    extra, other = [a for a in ("10.28.0.77", "10.28.0.78", "10.28.0.79") if a != mine][:2]
    with pytest.raises(
        openstack.exceptions.BadRequestException,
        match="ovsnat cannot serve port .* it has 2 fixed IPs",
    ):
        cl.conn.network.update_port(
            port.id,
            fixed_ips=[
                {"subnet_id": sub.id, "ip_address": mine},
                {"subnet_id": sub.id, "ip_address": extra},
            ],
        )
    assert [ip["ip_address"] for ip in cl.conn.network.get_port(port.id).fixed_ips] == [mine]
    cl.conn.network.update_port(
        port.id, fixed_ips=[{"subnet_id": sub.id, "ip_address": other}]
    )  # one: fine


# --- keys only where the port has a binding ------------------------------------------------
def test_a_host_without_a_binding_of_the_port_gets_no_keys_and_an_inactive_binding_does(
    cl, refusals
):
    """A port bound to hv1 whose row also appears on hv2 (a stray plug): hv2's agent asks,
    Neutron answers with no keys (positive control: a port bound to hv2, plugged in the
    same call, gets its keys). A port of which hv2 holds an inactive binding (a live
    migration's destination, made as Nova's conductor makes it) gets its keys there."""
    port = bind(cl, cl.topo.tenant_net, host="hv1")
    control = bind(cl, cl.topo.tenant_net, host="hv2")
    moving = bind(cl, cl.topo.tenant_net, host="hv1")
    plug_rows(cl, "hv2", port, control)
    try:
        keys_for_control_only(cl, "hv2", control, port)
        binding = cl.service.network.create_port_binding(moving.id, host="hv2")
        assert binding.status == "INACTIVE" and binding.vif_type == "ovs"
        plug_rows(cl, "hv2", moving)
        wait_for(
            lambda: (
                row_ids(cl, "hv2", tap(moving)).get("ovsnat-fixed-ip")
                == moving.fixed_ips[0]["ip_address"]
            ),
            10,
            interval=0.1,
            what="the keys on hv2, which holds an inactive binding",
        )
    finally:
        unplug_rows(cl, "hv2", port, control, moving)
        for p in (port, control, moving):
            cl.operator.network.delete_port(p.id)
    assert_unharmed(cl)
