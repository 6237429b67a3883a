"""Traffic end to end, with a real Neutron in charge: instances booted and migrated the way
Nova does it, addresses from ovsnat's DHCP, floating IPs associated through the API, and real
packets between the instances and the lab's outside world. Each hypervisor runs ovsnat's
controller (no default network, SNAT address from Neutron) and ovsnat-neutron-agent.

Times are measured from the event that matters: Neutron's answer to the API call, os-vif's
plug, RabbitMQ's return; reachability comes from a pinger that runs all along and keeps each
reply's receive time (ovsnat.lab.reach), so polling never adds to a measurement.
"""

from __future__ import annotations

import time

import pytest

from ovsnat.lab import dhcpclient
from ovsnat.lab.openstack import cloud, instances, nova
from ovsnat.lab.reach import Pinger
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import background_tcp, tcp_connect, tcp_established
from tests.openstack_lab import boot_static, cloud_lab, new_fip, port_status, row_ids, \
    unique, wait_active, wait_key

pytestmark = [pytest.mark.lab, pytest.mark.openstack]

TIMES: dict[str, float] = {}
LIMIT = 2.0                 # s: the bound for every push to take effect
SERVER_PORT = 8080


@pytest.fixture(scope="module")
def cl(request):
    with cloud_lab(request, TIMES) as lab:
        yield lab


def seen_as(cl, inst) -> str | None:
    """The address the outside server sees for a connection from the instance."""
    reply = tcp_connect(cl.lab, inst.vm.ns, SERVER_IP, SERVER_PORT)
    return reply.peer_ip if reply.ok else None


def quick_arp(inst) -> None:
    """The guest asks ARP again every 100 ms (Linux: every second), so a time measured
    from inside it is ovsnat's, not the guest's ARP retry timer."""
    run(["sysctl", "-qw", "net.ipv4.neigh.eth0.retrans_time_ms=100"], ns=inst.vm.ns)


# --- tests ---------------------------------------------------------------------------------
def test_instances_configured_by_dhcp_reach_out_through_pat_and_each_other(cl):
    """Two instances that know nothing but their MAC: ovsnat's DHCP hands each its Neutron
    port's address and its subnet's gateway, DNS, routes and MTU; each goes out through its
    host's SNAT address (a port Neutron allocated on the external network); they talk
    across the fabric (VLAN of their Neutron network) with their own addresses."""
    a, b = nova.boot(cl, unique("vm"), "hv1"), nova.boot(cl, unique("vm"), "hv2")
    subnet = cl.conn.network.get_subnet(cl.topo.tenant_subnet)
    for inst in (a, b):
        lease = dhcpclient.wait_bound(cl.lab, inst.vm, timeout=20)
        TIMES[f"DHCP lease after plug ({inst.host})"] = \
            dhcpclient.bound_at(cl.lab, inst.vm) - inst.plugged_at
        assert lease["ip"] == inst.fixed_ip and lease["router"] == subnet.gateway_ip
        assert lease["dns"].split() == subnet.dns_nameservers
        assert lease["mtu"] == str(cl.conn.network.get_network(cl.topo.tenant_net).mtu)
        assert "10.9.0.0/16 10.1.0.254" in lease["staticroutes"]
    snat = {h: cl.snat_ip(h) for h in ("hv1", "hv2")}
    assert seen_as(cl, a) == snat["hv1"] and seen_as(cl, b) == snat["hv2"]
    reply = tcp_connect(cl.lab, a.vm.ns, b.fixed_ip, nova.GUEST_PORT)
    assert reply.ok and reply.peer_ip == a.fixed_ip      # east-west: no NAT in a network
    assert port_status(cl, a.port_id) == port_status(cl, b.port_id) == "ACTIVE"


def test_plug_to_working_nat_within_2s_and_the_port_goes_active(cl):
    """From os-vif's plug returning to the guest's first answer from the outside server
    (through PAT), and the port ACTIVE: the transition that makes Neutron send Nova
    network-vif-plugged. Unplugged, the port goes DOWN."""
    port = nova.create_port(cl, "hv2", cl.topo.tenant_net, unique("plug"))
    spec = cloud.vif_spec(cl.conn, port, port.name)
    fixed = port.fixed_ips[0]["ip_address"]
    vm = instances.create_vm(cl.lab, unique("vm"), "hv2", spec, fixed, cloud.TENANT["cidr"],
                             cloud.TENANT["gateway"])
    inst = nova.Instance(vm.name, port.id, fixed, vm, spec, 0.0, dhcp=False)
    quick_arp(inst)
    with Pinger(vm.ns, SERVER_IP) as pinger:
        plugged = instances.os_vif(cl.lab, "hv2", "plug", spec)
        nat = pinger.first_reply_after(plugged, timeout=10)
    wait_active(cl, port.id)
    active = time.time() - plugged
    TIMES["plug -> NAT (first reply from outside)"] = nat
    TIMES["plug -> port ACTIVE (seen by polling the API)"] = active
    print(f"\nplug -> NAT {nat:.2f} s, plug -> ACTIVE <= {active:.2f} s")
    assert nat < LIMIT
    assert seen_as(cl, inst) == cl.snat_ip("hv2")
    instances.os_vif(cl.lab, "hv2", "unplug", spec)
    wait_for(lambda: port_status(cl, port.id) == "DOWN", 20, interval=0.1,
             what="the port DOWN after the unplug")


def test_fip_reachable_within_2s_of_association_and_gone_within_2s_of_disassociation(cl):
    """20 times: associate through the API, the FIP answers from outside; disassociate, it
    stops answering and the instance is back on PAT. Measured from Neutron's answer; the
    worst of 20 is the result. Each silence is followed by replies on the same pinger at
    the next association: the positive control that the path itself still works."""
    inst = boot_static(cl, "hv1")
    wait_active(cl, inst.port_id)
    fip = new_fip(cl)
    address = fip.floating_ip_address
    reach, gone, rows, end_to_end = [], [], [], []
    with Pinger(cl.lab.srv_ns, address) as pinger:
        for _ in range(20):
            t = time.time()
            cl.conn.network.update_ip(fip, port_id=inst.port_id)
            answered = time.time()
            reach.append(pinger.first_reply_after(answered, timeout=10))
            end_to_end.append(answered + reach[-1] - t)
            rows.append(wait_key(cl, inst.vm, "ovsnat-fip", address) - answered)
            cl.conn.network.update_ip(fip, port_id=None)
            gone.append(pinger.silent_after(time.time(), quiet=0.5, timeout=LIMIT))
    TIMES["FIP reachable after the API answered, worst of 20"] = max(reach)
    TIMES["FIP unreachable after the API answered, worst of 20"] = max(gone)
    TIMES["FIP associate, API call included, worst of 20"] = max(end_to_end)
    TIMES["FIP key on the row after the API answered, worst of 20"] = max(rows)
    print(f"\nFIP reachable: worst {max(reach):.3f} s, median {sorted(reach)[10]:.3f} s; "
          f"unreachable: worst {max(gone):.3f} s, median {sorted(gone)[10]:.3f} s "
          f"(from Neutron's answer); with the API call: worst {max(end_to_end):.3f} s")
    assert max(reach) < LIMIT and max(gone) < LIMIT
    assert seen_as(cl, inst) == cl.snat_ip("hv1")        # disassociated: PAT again
    assert "ovsnat-fip" not in row_ids(cl, "hv1", inst.vm.tap)


def test_neutron_api_down_30s_traffic_unharmed_nothing_removed(cl):
    """The API stops for 30 s: a FIP keeps answering (10 ms pings, none lost), a PAT TCP
    session keeps echoing, no key moves on any row. After it returns, a disassociation
    through it takes effect within 2 s."""
    fip_vm, pat_vm = boot_static(cl, "hv2"), boot_static(cl, "hv1")
    fip = new_fip(cl, port_id=fip_vm.port_id)
    address = fip.floating_ip_address
    wait_key(cl, fip_vm.vm, "ovsnat-fip", address)
    wait_for(lambda: tcp_connect(cl.lab, cl.lab.srv_ns, address, nova.GUEST_PORT).ok, 10,
             what="the FIP to answer")                       # positive control
    before = {vm.tap: row_ids(cl, vm.host, vm.tap) for vm in (fip_vm.vm, pat_vm.vm)}
    outage = 30.0
    session = background_tcp(cl.lab, pat_vm.vm.ns, SERVER_IP, SERVER_PORT, hold=outage + 2)
    wait_for(lambda: tcp_established(pat_vm.vm.ns, SERVER_IP, SERVER_PORT), 10,
             what="the PAT session")
    with Pinger(cl.lab.srv_ns, address, interval=0.01) as pinger:
        stopped = time.time()
        cl.services.stop_api()
        try:
            assert not cl.services.api_answers()
            while time.time() - stopped < outage:
                assert before == {vm.tap: row_ids(cl, vm.host, vm.tap)
                                  for vm in (fip_vm.vm, pat_vm.vm)}
                time.sleep(1)
        finally:
            cl.services.start_api()
            cl.services.wait_api()
    assert pinger.since(stopped)[-1] >= stopped + outage      # it answered all along
    assert pinger.lost() == 0 and pinger.gap() < 0.5, (pinger.lost(), pinger.gap())
    assert "HELD" in session.result()
    with Pinger(cl.lab.srv_ns, address) as after:
        after.first_reply_after(time.time(), timeout=5)     # it answers before the change
        cl.conn.network.update_ip(fip, port_id=None)
        gone = after.silent_after(time.time(), quiet=0.5, timeout=LIMIT)
    TIMES["FIP gone after the API outage (from the answer)"] = gone
    assert gone < LIMIT


def test_rabbitmq_down_30s_an_association_meanwhile_takes_effect_within_2s_of_its_return(cl):
    """The broker stops for 30 s. Traffic does not care (FIP pinged every 10 ms, a PAT TCP
    session of another instance); a FIP associated through the API meanwhile (the API
    answers; its push is lost with the broker) stays dark, and answers within 2 s of
    RabbitMQ's return."""
    old_vm, new_vm = boot_static(cl, "hv1"), boot_static(cl, "hv2")
    pat_vm = boot_static(cl, "hv2")
    old = new_fip(cl, port_id=old_vm.port_id)
    wait_key(cl, old_vm.vm, "ovsnat-fip", old.floating_ip_address)
    wait_for(lambda: tcp_connect(cl.lab, cl.lab.srv_ns, old.floating_ip_address,
                                 nova.GUEST_PORT).ok, 10, what="the old FIP to answer")
    wait_active(cl, new_vm.port_id)
    fip = new_fip(cl)
    outage = 30.0
    pinger = Pinger(cl.lab.srv_ns, old.floating_ip_address, interval=0.01)
    session = background_tcp(cl.lab, pat_vm.vm.ns, SERVER_IP, SERVER_PORT, hold=outage + 8)
    wait_for(lambda: tcp_established(pat_vm.vm.ns, SERVER_IP, SERVER_PORT), 10,
             what="the PAT session")
    with pinger, Pinger(cl.lab.srv_ns, fip.floating_ip_address) as watch:
        stopped = time.time()
        cl.services.stop_rabbit()
        try:
            t = time.monotonic()
            cl.conn.network.update_ip(fip, port_id=new_vm.port_id)
            TIMES["FIP associate with RabbitMQ down (API call)"] = time.monotonic() - t
            while time.time() - stopped < outage:
                assert "ovsnat-fip" not in row_ids(cl, "hv2", new_vm.vm.tap)
                time.sleep(1)
            assert not watch.since(0)            # dark all along (answers below: control)
        finally:
            back = cl.services.restart_rabbit()
        took = watch.first_reply_after(back, timeout=30)
    TIMES["FIP reachable after RabbitMQ's return (associated while it was down)"] = took
    print(f"\nRabbitMQ back after {back - stopped:.1f} s; "
          f"the FIP associated meanwhile answered {took:.2f} s after its return")
    assert pinger.since(stopped)[-1] >= back                 # it answered all along
    assert pinger.lost() == 0 and pinger.gap() < 0.5, (pinger.lost(), pinger.gap())
    assert "HELD" in session.result()
    assert took < LIMIT
    cl.agents_alive()


def test_nova_style_live_migration_keeps_an_inbound_fip_session(cl):
    """An instance with a FIP, booted by DHCP on hv1, moves to hv2 the way Nova moves it
    (binding created on hv2, plug there, the guest moves, binding activated, unplug on hv1,
    hv1's binding deleted) while the server holds a TCP session to its FIP and pings it
    every 10 ms. The session survives; afterwards the port is ACTIVE on hv2 only, and
    hv2's ovsnat renews the guest's lease."""
    inst = nova.boot(cl, unique("vm"), "hv1")
    dhcpclient.wait_bound(cl.lab, inst.vm, timeout=20)
    fip = new_fip(cl, port_id=inst.port_id)
    address = fip.floating_ip_address
    wait_for(lambda: tcp_connect(cl.lab, cl.lab.srv_ns, address, nova.GUEST_PORT).ok, 10,
             what="the FIP to answer before the move")
    session = background_tcp(cl.lab, cl.lab.srv_ns, address, nova.GUEST_PORT, hold=8)
    wait_for(lambda: tcp_established(cl.lab.srv_ns, address, nova.GUEST_PORT), 10,
             what="the inbound session")
    with Pinger(cl.lab.srv_ns, address, interval=0.01) as pinger:
        steps = nova.live_migrate(cl, inst, "hv2").steps
        pinger.first_reply_after(time.time(), timeout=5)
    held, gap = session.result(), pinger.gap()
    TIMES["live migration: API and os-vif steps"] = \
        steps["source binding deleted"] - steps["binding created"]
    TIMES["live migration: longest ping gap"] = gap
    print(f"\nlive migration: {held.strip().splitlines()[-1]}, ping gap {gap:.2f} s, "
          f"{pinger.lost()} pings lost")
    assert "HELD" in held, held
    assert gap < LIMIT
    wait_active(cl, inst.port_id)
    bindings = list(cl.nova.network.port_bindings(inst.port_id))
    assert [(b.host, b.status) for b in bindings] == [("hv2", "ACTIVE")]
    assert cl.conn.network.get_port(inst.port_id).binding_host_id == "hv2"
    assert row_ids(cl, "hv1", inst.vm.tap) == {}
    assert row_ids(cl, "hv2", inst.vm.tap)["ovsnat-fip"] == address
    dhcpclient.renew(cl.lab, inst.vm)
    wait_for(lambda: f"renew {inst.fixed_ip}" in dhcpclient.events(cl.lab, inst.vm), 10,
             what="the lease renewed on hv2")
    assert tcp_connect(cl.lab, cl.lab.srv_ns, address, nova.GUEST_PORT).ok
