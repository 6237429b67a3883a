"""Through Neutron's API (a real Neutron 29 with ovsnat's ML2 driver, agents that report what
their host's controller reserves): every port ovsnat cannot serve is refused at binding
(`binding_failed` in the API's answer, the reason in the binding's vif_details and in
Neutron's log) while the other ports keep working; a multi-segment network binds on its
fabric segment and its VLAN reaches the row; a bound port cannot be given fixed IPs it could
only be half-served with; keys go only to a host that holds a binding of the port.

The decision itself is unit-tested in tests/test_neutron_binding.py; here Neutron's own code
runs it (ML2's binding loop, its retries, the bindings API, the agents' RPC).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import replace

import openstack.exceptions
import pytest

from ovsnat.lab.openstack import cloud, config, instances, nova
from ovsnat.lab.sh import wait_for
from tests.openstack_lab import HOSTS, boot_static, cloud_lab, row_ids, unique, wait_active

pytestmark = [pytest.mark.lab, pytest.mark.openstack]

TIMES: dict[str, float] = {}
REFUSED = "ovsnat_refused"


@pytest.fixture(scope="module")
def cl(request):
    """The lab, its agents restarted to report what their controllers reserve, and one
    running instance on hv1: every refusal must leave it working."""
    with cloud_lab(request, TIMES) as lab:
        for host in HOSTS:
            lab.services.stop_agent(host)
        for host in HOSTS:
            lab.services.start_agent(host, report_limits=True)
        wait_for(lambda: all(a.configuration.get("ovsnat_host_limits")
                             for a in lab.conn.network.agents() if a.host in HOSTS),
                 60, interval=0.5, what="the agents' reports of their hosts' limits")
        lab.agents_alive()
        lab.witness = boot_static(lab, "hv1")
        wait_active(lab, lab.witness.port_id)
        yield lab


def network(cl, cidr: str, gateway: str | None = "auto", v6: bool = False, **net):
    """A tenant network (a VLAN of the fabric unless `net` says otherwise) with one subnet."""
    n = cl.conn.network.create_network(name=unique("net"), project_id=cloud.PROJECT, **net)
    kw = {} if gateway == "auto" else {"gateway_ip": gateway}
    sub = cl.conn.network.create_subnet(network_id=n.id, ip_version=6 if v6 else 4,
                                        cidr=cidr, project_id=cloud.PROJECT, **kw)
    return n, sub


def bind(cl, net_id: str, host: str = "hv1", **kw):
    """A port as Nova creates it for an instance scheduled to `host`: bound in the same
    request, so its binding's outcome is in the API's answer."""
    return nova.create_port(cl, host, net_id, unique("port"), **kw)


def api_log(cl) -> str:
    with open(os.path.join(cl.services.paths.log, "neutron-api.log")) as f:
        return f.read()


def assert_refused(cl, port, why: str) -> None:
    """Refused at once (the creating request's answer), the reason on the port and in
    Neutron's log, once; the host's other ports unharmed and a good port still binds."""
    assert port.binding_vif_type == "binding_failed", port.binding_vif_type
    reason = (port.binding_vif_details or {}).get(REFUSED, "")
    assert why in reason, reason
    shown = cl.conn.network.get_port(port.id)
    assert shown.binding_vif_details.get(REFUSED) == reason and shown.status == "DOWN"
    lines = re.findall(rf"ERROR .*ovsnat: refusing to bind port {port.id} on host hv1: (.*)",
                       api_log(cl))
    assert lines and why in lines[0], lines
    assert len(lines) == 1, "ML2's retries are logged once"           # 10 attempts, 1 line
    assert_unharmed(cl)


def assert_unharmed(cl) -> None:
    w = cl.witness
    assert cl.conn.network.get_port(w.port_id).status == "ACTIVE"
    assert row_ids(cl, "hv1", w.vm.tap).get("ovsnat-installed") == "true"
    good = bind(cl, cl.topo.tenant_net)
    assert good.binding_vif_type == "ovs" and not (good.binding_vif_details or {}).get(REFUSED)
    cl.nova.network.delete_port(good.id)


# --- refusals ----------------------------------------------------------------------------
def test_an_ipv6_only_port_is_refused_at_binding(cl):
    net, _ = network(cl, "2001:db8:1::/64", v6=True)
    t = time.monotonic()
    port = bind(cl, net.id)
    TIMES["refused port create (API call)"] = time.monotonic() - t
    assert_refused(cl, port, "is not IPv4: ovsnat serves IPv4 only")


def test_a_dual_stack_port_is_refused_and_a_host_it_is_plugged_on_anyway_gets_no_keys(cl):
    net, _ = network(cl, "10.20.0.0/24")
    cl.conn.network.create_subnet(network_id=net.id, ip_version=6, cidr="2001:db8:2::/64",
                                  project_id=cloud.PROJECT)
    port = bind(cl, net.id)
    assert len(port.fixed_ips) == 2
    assert_refused(cl, port, "is not IPv4")
    good = bind(cl, cl.topo.tenant_net)         # positive control, plugged with it
    spec = cloud.vif_spec(cl.conn, good, good.name)
    refused = replace(spec, port_id=port.id, mac=port.mac_address, network_id=net.id)
    instances.os_vif(cl.lab, "hv1", "plug", refused, spec)
    try:
        wait_for(lambda: row_ids(cl, "hv1", spec.vif_name).get("ovsnat-fixed-ip"), 10,
                 interval=0.1, what="the control port's keys")
        time.sleep(1)                           # the same fetch answered both
        assert not [k for k in row_ids(cl, "hv1", refused.vif_name) if k.startswith("ovsnat")]
    finally:
        instances.os_vif(cl.lab, "hv1", "unplug", refused, spec)
        cl.nova.network.delete_port(good.id)


def test_a_port_with_two_ipv4_addresses_is_refused_not_half_served(cl):
    net, sub = network(cl, "10.21.0.0/24")
    port = bind(cl, net.id, fixed_ips=[{"subnet_id": sub.id, "ip_address": "10.21.0.5"},
                                       {"subnet_id": sub.id, "ip_address": "10.21.0.6"}])
    assert_refused(cl, port, "it has 2 fixed IPs (10.21.0.5, 10.21.0.6)")


def test_a_subnet_without_gateway_is_refused(cl):
    net, sub = network(cl, "10.22.0.0/24", gateway=None)
    assert sub.gateway_ip is None
    assert_refused(cl, bind(cl, net.id), "has no gateway (created with --gateway none)")


def test_a_port_holding_its_subnets_gateway_address_is_refused(cl):
    net, sub = network(cl, "10.23.0.0/24")
    port = bind(cl, net.id, fixed_ips=[{"subnet_id": sub.id, "ip_address": sub.gateway_ip}])
    assert_refused(cl, port, f"fixed IP {sub.gateway_ip} is the VMs' gateway address")


def test_a_network_overlapping_the_hosts_external_network_is_refused(cl):
    """hv1's controller: external_cidr 203.0.113.0/24 (its agent reported it)."""
    net, _ = network(cl, "203.0.113.128/25")
    assert_refused(cl, bind(cl, net.id),
                   "203.0.113.128/25 overlaps external_cidr 203.0.113.0/24")


def test_a_network_overlapping_the_hosts_transit_range_is_refused(cl):
    """hv1's controller chose transit_cidr 240.0.0.0/10 (auto) and its agent reported it."""
    limits = next(a for a in cl.conn.network.agents() if a.host == "hv1").configuration[
        "ovsnat_host_limits"]
    transit = limits["reserved"]["transit_cidr"]
    assert transit == "240.0.0.0/10", limits
    net, _ = network(cl, "240.0.7.0/24")
    assert_refused(cl, bind(cl, net.id), "240.0.7.0/24 overlaps transit_cidr 240.0.0.0/10")


def test_two_ipv4_subnets_on_one_network_are_refused(cl):
    net, _ = network(cl, "10.24.0.0/24")
    cl.conn.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.25.0.0/24",
                                  project_id=cloud.PROJECT)
    assert_refused(cl, bind(cl, net.id),
                   "has 2 IPv4 subnets (10.24.0.0/24, 10.25.0.0/24): ovsnat serves one")


def test_a_network_with_two_fabric_segments_is_refused(cl):
    net, _ = network(cl, "10.26.0.0/24", segments=[
        {"provider:network_type": "vlan", "provider:physical_network": "fabric",
         "provider:segmentation_id": 180},
        {"provider:network_type": "vlan", "provider:physical_network": "fabric",
         "provider:segmentation_id": 181}])
    assert_refused(cl, bind(cl, net.id), "has 2 segments this host reaches "
                   "(vlan:fabric:180, vlan:fabric:181)")


# --- what binds ------------------------------------------------------------------------------
def test_a_multi_segment_network_binds_its_fabric_segment_and_the_row_gets_its_vlan(cl):
    """ML2 omits provider:* for a network of several segments: the VLAN comes from the
    segment the port is bound to (the binding's level), as Neutron's own agents get it."""
    net, _ = network(cl, "10.27.0.0/24", segments=[
        {"provider:network_type": "vlan", "provider:physical_network":
         config.ELSEWHERE_PHYSNET, "provider:segmentation_id": 182},
        {"provider:network_type": "vlan", "provider:physical_network": "fabric",
         "provider:segmentation_id": 183}])
    assert cl.conn.network.get_network(net.id).provider_segmentation_id is None
    port = bind(cl, net.id)
    assert port.binding_vif_type == "ovs", port.binding_vif_details
    spec = cloud.vif_spec(cl.conn, port, port.name)
    instances.os_vif(cl.lab, "hv1", "plug", spec)
    try:
        wait_for(lambda: row_ids(cl, "hv1", spec.vif_name).get("ovsnat-vlan") == "183", 10,
                 interval=0.1, what="the fabric segment's VLAN on the row")
        assert row_ids(cl, "hv1", spec.vif_name)["ovsnat-network"] == net.id
    finally:
        instances.os_vif(cl.lab, "hv1", "unplug", spec)


def test_a_bound_port_cannot_be_given_fixed_ips_it_would_be_half_served_with(cl):
    net, sub = network(cl, "10.28.0.0/24")
    port = bind(cl, net.id)
    assert port.binding_vif_type == "ovs"
    mine = port.fixed_ips[0]["ip_address"]
    with pytest.raises(openstack.exceptions.BadRequestException,
                       match="ovsnat cannot serve port .* it has 2 fixed IPs"):
        cl.conn.network.update_port(port.id, fixed_ips=[
            {"subnet_id": sub.id, "ip_address": mine},
            {"subnet_id": sub.id, "ip_address": "10.28.0.77"}])
    assert [ip["ip_address"] for ip in cl.conn.network.get_port(port.id).fixed_ips] == [mine]
    cl.conn.network.update_port(port.id, fixed_ips=[{"subnet_id": sub.id,
                                                     "ip_address": "10.28.0.78"}])   # one: fine


# --- keys only where the port has a binding ------------------------------------------------
def test_a_host_without_a_binding_of_the_port_gets_no_keys_and_an_inactive_binding_does(cl):
    """A port bound to hv1 whose row also appears on hv2 (a stray plug): hv2's agent asks,
    Neutron answers with no keys (positive control: a port bound to hv2, plugged in the
    same call, gets its keys). A port of which hv2 holds an inactive binding (a live
    migration's destination, made as Nova's conductor makes it) gets its keys there."""
    port = bind(cl, cl.topo.tenant_net, host="hv1")
    control = bind(cl, cl.topo.tenant_net, host="hv2")
    moving = bind(cl, cl.topo.tenant_net, host="hv1")
    spec, ctl, dest = (cloud.vif_spec(cl.conn, p, p.name) for p in (port, control, moving))
    instances.os_vif(cl.lab, "hv2", "plug", spec, ctl)
    try:
        wait_for(lambda: row_ids(cl, "hv2", ctl.vif_name).get("ovsnat-fixed-ip"), 10,
                 interval=0.1, what="the control port's keys on hv2")
        wait_for(lambda: re.search(rf"port {port.id} has no usable binding on host hv2",
                                   cl.services.rpc_log()), 10, interval=0.1,
                 what="Neutron's answer to hv2 about the port")
        assert not [k for k in row_ids(cl, "hv2", spec.vif_name) if k.startswith("ovsnat")]
        binding = cl.nova.network.create_port_binding(moving.id, host="hv2")
        assert binding.status == "INACTIVE" and binding.vif_type == "ovs"
        instances.os_vif(cl.lab, "hv2", "plug", dest)
        wait_for(lambda: row_ids(cl, "hv2", dest.vif_name).get("ovsnat-fixed-ip") ==
                 moving.fixed_ips[0]["ip_address"], 10, interval=0.1,
                 what="the keys on hv2, which holds an inactive binding")
    finally:
        instances.os_vif(cl.lab, "hv2", "unplug", spec, ctl, dest)
    assert_unharmed(cl)
