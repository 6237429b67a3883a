"""Neutron's routers through the real Neutron (issue 26, item 1 of item 7): servers Nova
boots, subnets and routers made through Neutron's API, and what the datapath then does. A
subnet on no router is an isolated L2 segment; a router interface routes it; removing the
interface and `--disable-snat` end live PAT sessions within LIMIT of Neutron's answer, FIPs
kept. Every "nothing passes" has its positive control in the same test.

Cases only: test_openstack.py collects them on its lab (one bring-up for both).
"""

from __future__ import annotations

import re
import time

import pytest

from ovsnat.lab.openstack import servers
from ovsnat.lab.openstack.cloudlab import SERVER_PORT
from ovsnat.lab.reach import Pinger
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import background_tcp, ping, tcp_connect, tcp_established
from tests.openstack_lab import boot, new_fip, unique, wait_key
from tests.secgroup_keys import wait_bridge

__all__ = [
    "test_a_subnet_is_routed_only_through_a_router_interface",
    "test_disable_snat_ends_a_live_pat_session_and_keeps_the_fip",
    "test_router_ports_are_active_and_what_ovsnat_does_not_do_is_refused",
    "test_a_floating_ip_is_active_while_a_host_has_it_live_and_down_otherwise",
    "test_east_west_between_a_routers_subnets_on_one_host_and_across_hosts",
]

LIMIT = 1.0  # s from Neutron's answer: the bound for a removal to take effect
ROUTER_TIMES: dict[str, float] = {}


def _subnet(cl, third: int):
    net = cl.tenant.network.create_network(name=unique("rnet"))
    sub = cl.tenant.network.create_subnet(
        network_id=net.id, ip_version=4, cidr=f"10.{third}.0.0/24", gateway_ip=f"10.{third}.0.1"
    )
    return net, sub


def _goes_out(cl, server) -> bool:
    return tcp_connect(cl.lab, server.ns, SERVER_IP, SERVER_PORT, timeout=0.5).ok


def _net_key(cl, host: str, net_id: str, value: str) -> None:
    key = f"ovsnat-net-{net_id}"
    wait_bridge(cl, host, lambda ids: ids.get(key) == value, f"{key}={value} on {host}")


def _pat_stops(cl, server, change) -> tuple[float, str]:
    """Under a live PAT session of `server` (TCP echoes every 10 ms, a 10 ms ping through
    PAT: the replies before the change are the positive control), make `change` through
    the API: (seconds from Neutron's answer to the last ping reply, the session's end)."""
    session = background_tcp(cl.lab, server.ns, SERVER_IP, SERVER_PORT, hold=8)
    wait_for(lambda: tcp_established(server.ns, SERVER_IP, SERVER_PORT), 10, what="the PAT session")
    with Pinger(server.ns, SERVER_IP, interval=0.01) as pinger:
        pinger.first_reply_after(time.time(), timeout=5)
        change()
        answered = time.time()
        last = pinger.silent_after(answered, quiet=1.0, timeout=5)
    return last, session.result(timeout=30)


def test_a_subnet_is_routed_only_through_a_router_interface(cl):
    """On no router: its servers talk across hosts and get DHCP (they booted with a lease),
    nothing leaves. `router add subnet`: out through PAT. `router remove subnet` under a
    live PAT session: it ends within LIMIT of Neutron's answer."""
    net, sub = _subnet(cl, 4)
    a, b = servers.boot_many(cl, [(unique("vm"), "hv1", net.id), (unique("vm"), "hv2", net.id)])
    _net_key(cl, "hv1", net.id, "router=-")
    assert ping(a.ns, b.fixed_ip, count=2, wait=1).received > 0  # L2 across the fabric
    assert not _goes_out(cl, a)
    cl.tenant.network.add_interface_to_router(cl.topo.router, subnet=sub.id)
    answered = time.time()
    wait_for(lambda: _goes_out(cl, a), 5, interval=0.05, what="PAT after router add subnet")
    ROUTER_TIMES["router add subnet -> PAT works (s, from the answer)"] = time.time() - answered
    last, outcome = _pat_stops(
        cl, a, lambda: cl.tenant.network.remove_interface_from_router(cl.topo.router, sub.id)
    )
    ROUTER_TIMES["router remove subnet -> last PAT reply (s)"] = last
    print(ROUTER_TIMES)
    assert last < LIMIT, f"PAT still answered {last:.2f} s after the interface went"
    assert "BROKEN" in outcome, outcome
    assert ping(a.ns, b.fixed_ip, count=2, wait=1).received > 0  # still one L2 segment


def test_disable_snat_ends_a_live_pat_session_and_keeps_the_fip(cl):
    """A router of its own (the module's router stays as it is): `--disable-snat` under a
    live PAT session ends it within LIMIT; a FIP on the same subnet keeps answering from
    outside, before and after; `--enable-snat` brings PAT back."""
    net, sub = _subnet(cl, 5)
    router = cl.tenant.network.create_router(
        name=unique("router"), external_gateway_info={"network_id": cl.topo.external_net}
    )
    cl.tenant.network.add_interface_to_router(router, subnet=sub.id)
    pat, floating = servers.boot_many(
        cl, [(unique("vm"), "hv1", net.id), (unique("vm"), "hv2", net.id)]
    )
    fip = new_fip(cl, port_id=floating.port_id)
    wait_key(cl, floating, "ovsnat-fip", fip.floating_ip_address)
    with Pinger(cl.lab.srv_ns, fip.floating_ip_address) as outside:
        outside.first_reply_after(time.time(), timeout=10)
        wait_for(lambda: _goes_out(cl, pat), 10, what="PAT through the new router")

        def disable() -> None:
            gateway = {"network_id": cl.topo.external_net, "enable_snat": False}
            cl.admin.network.update_router(router, external_gateway_info=gateway)

        last, outcome = _pat_stops(cl, pat, disable)
        ROUTER_TIMES["router set --disable-snat -> last PAT reply (s)"] = last
        assert last < LIMIT, f"PAT still answered {last:.2f} s after --disable-snat"
        assert "BROKEN" in outcome, outcome
        outside.first_reply_after(time.time(), timeout=5)  # the FIP answers all along
    assert outside.gap() < LIMIT, outside.gap()
    cl.admin.network.update_router(
        router, external_gateway_info={"network_id": cl.topo.external_net, "enable_snat": True}
    )
    wait_for(lambda: _goes_out(cl, pat), 5, interval=0.05, what="PAT after --enable-snat")


def test_router_ports_are_active_and_what_ovsnat_does_not_do_is_refused(cl):
    """ovsnat-router (ovsnat.neutron.l3_plugin): the module's router's interface and
    gateway ports are ACTIVE (ovsnat routes on every host; no L3 agent binds them); extra
    routes are refused by Neutron's API (positive control: renaming the router works),
    and the extensions ovsnat does not do are not listed."""
    import openstack.exceptions

    aliases = {e.alias for e in cl.admin.network.extensions()}
    assert {"router", "ext-gw-mode"} <= aliases
    assert not aliases & {"extraroute", "extraroute-atomic", "l3-ha", "qos-fip", "dvr"}, aliases
    ports = list(cl.admin.network.ports(device_id=cl.topo.router))
    statuses = {(p.device_owner, p.status) for p in ports}
    assert statuses == {
        ("network:router_interface", "ACTIVE"),
        ("network:router_gateway", "ACTIVE"),
    }
    router = cl.tenant.network.update_router(cl.topo.router, name=unique("renamed"))
    assert router.name.startswith("renamed")
    route = {"destination": "10.9.0.0/24", "nexthop": "10.1.0.5"}
    try:
        cl.tenant.network.update_router(cl.topo.router, routes=[route])
    except openstack.exceptions.BadRequestException as e:
        assert "routes" in str(e), e
    else:
        raise AssertionError("Neutron accepted a router route ovsnat would ignore")


def _fip_status(cl, fip_id: str) -> str:
    return cl.admin.network.get_ip(fip_id).status


def test_a_floating_ip_is_active_while_a_host_has_it_live_and_down_otherwise(cl):
    """Neutron's view follows the datapath (ovsnat-fip-live, reported by the agent): DOWN
    unassociated, ACTIVE once its host answers for it (and it does: pinged from outside),
    DOWN at once when it is disassociated, while it stops answering."""
    server = boot(cl, "hv1")
    fip = new_fip(cl)
    address = fip.floating_ip_address
    assert _fip_status(cl, fip.id) == "DOWN"
    with Pinger(cl.lab.srv_ns, address) as outside:
        cl.tenant.network.update_ip(fip, port_id=server.port_id)
        answered = time.time()
        wait_for(lambda: _fip_status(cl, fip.id) == "ACTIVE", 5, what="the FIP ACTIVE")
        ROUTER_TIMES["FIP associated -> ACTIVE in Neutron (s)"] = time.time() - answered
        outside.first_reply_after(answered, timeout=5)  # it is live indeed
        cl.tenant.network.update_ip(fip, port_id=None)
        gone = time.time()
        assert _fip_status(cl, fip.id) == "DOWN"  # set with the disassociation itself
        outside.silent_after(gone, quiet=1.0, timeout=5)
    # hv1's controller let go of it (its marker gone, which the agent reports): still DOWN.
    wait_key(cl, server, "ovsnat-fip-live", None)
    assert _fip_status(cl, fip.id) == "DOWN"
    print(ROUTER_TIMES)


def _routed_once(result) -> bool:
    """Every echo reply came back and with TTL 63: routed once, on the replier's host."""
    ttls = re.findall(r"ttl=(\d+)", result.output)
    return result.received == result.sent and ttls and set(ttls) == {"63"}


@pytest.mark.openstack_long  # tests/test_eastwest_lab.py covers the datapath in make test
def test_east_west_between_a_routers_subnets_on_one_host_and_across_hosts(cl):
    """Two subnets of one router without a gateway (east-west needs none), and a network on
    a router of its own. A server reaches the other subnet's servers on its own host and on
    the other host, every reply with TTL 63, and the far one reaches it back the same way:
    each direction routed once, on its sender's host. The other router's server is reached
    by none of them (the same pings within the router are the positive control). Then the
    third subnet moves to the first router, its server running: hv1, which holds no port of
    it, hears of it with the router's other networks, and both ways are routed."""
    (net_a, sub_a), (net_b, sub_b), (net_c, sub_c) = (_subnet(cl, i) for i in (6, 7, 8))
    router = cl.tenant.network.create_router(name=unique("router"))
    other = cl.tenant.network.create_router(name=unique("router"))
    for sub in (sub_a, sub_b):
        cl.tenant.network.add_interface_to_router(router, subnet=sub.id)
    cl.tenant.network.add_interface_to_router(other, subnet=sub_c.id)
    a, near, far, c = servers.boot_many(
        cl,
        [
            (unique("vm"), "hv1", net_a.id),
            (unique("vm"), "hv1", net_b.id),
            (unique("vm"), "hv2", net_b.id),
            (unique("vm"), "hv2", net_c.id),
        ],
    )
    for src, dst, where in ((a, near, "on hv1"), (a, far, "hv1 -> hv2"), (far, a, "hv2 -> hv1")):
        wait_for(
            lambda: ping(src.ns, dst.fixed_ip, count=1, wait=0.5).received,
            10,
            what=f"{src.fixed_ip} -> {dst.fixed_ip} east-west {where}",
        )
        result = ping(src.ns, dst.fixed_ip, count=3, interval=0.05, wait=1)
        assert _routed_once(result), result.output
    for src in (a, far):
        assert ping(src.ns, c.fixed_ip, count=2, interval=0.05, wait=0.5).received == 0
        assert ping(c.ns, src.fixed_ip, count=2, interval=0.05, wait=0.5).received == 0
    assert ping(a.ns, far.fixed_ip, count=1, wait=1).received == 1  # still: the control
    cl.tenant.network.remove_interface_from_router(other, subnet=sub_c.id)
    cl.tenant.network.add_interface_to_router(router, subnet=sub_c.id)
    answered = time.time()
    wait_for(
        lambda: ping(a.ns, c.fixed_ip, count=1, wait=0.3).received,
        5,
        interval=0.05,
        what="east-west hv1 -> hv2 to a subnet that joined the router",
    )
    ROUTER_TIMES["router add subnet -> east-west across hosts (s, from the answer)"] = (
        time.time() - answered
    )
    for src, dst in ((a, c), (c, a)):
        result = ping(src.ns, dst.fixed_ip, count=3, interval=0.05, wait=1)
        assert _routed_once(result), result.output
