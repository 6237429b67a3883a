"""The narrated OpenStack demo (`ovsnat lab demo --openstack`, `make lab-openstack`): Neutron
drives ovsnat. Two instances boot by DHCP, a floating IP is associated through the API and
reached from outside, disassociated (PAT again, unreachable), associated again, and the
instance is live-migrated the way Nova does it (with Nova's wait for network-vif-plugged from
the destination) while the outside holds a session to its FIP.
Every time printed is measured from the event that causes it (Neutron's answer, the plug).
The lab stays up afterwards."""

from __future__ import annotations

import re
import time

from ovsnat.lab import dhcpclient
from ovsnat.lab.demo import flow_summary, say, step
from ovsnat.lab.openstack import cloud, config, nova
from ovsnat.lab.openstack.cloudlab import CloudLab
from ovsnat.lab.openstack.novaapi import VIF_PLUGGED
from ovsnat.lab.reach import Pinger
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import background_tcp, tcp_connect, tcp_established

SERVER_PORT = 8080


def seen_as(cl: CloudLab, inst: nova.Instance) -> str:
    reply = tcp_connect(cl.lab, inst.vm.ns, SERVER_IP, SERVER_PORT)
    return reply.peer_ip if reply.ok else f"no answer ({reply.line})"


def wait_active(cl: CloudLab, inst: nova.Instance) -> None:
    wait_for(lambda: cl.conn.network.get_port(inst.port_id).status == "ACTIVE", 30,
             interval=0.1, what=f"{inst.name}'s port ACTIVE")


def the_cloud(cl: CloudLab) -> None:
    step("1. The cloud")
    say("RabbitMQ and a real Neutron 29 (API under uWSGI, rpc-server) with ovsnat's ML2 "
        "driver, in their own namespace.")
    if cl.services.db == "mariadb":
        heads = ", ".join(re.findall(r"^(\w+) \(head\)", cl.services.schema, re.M))
        say(f"  database: MariaDB, schema by Neutron's migrations (neutron-db-manage upgrade "
            f"heads), now at the heads {heads}")
    else:
        say("  database: SQLite, schema from Neutron's models (SQLite cannot run the "
            "migrations; `--db mariadb` runs them)")
    say("Two hypervisors, each its own Open vSwitch, ovsnat's controller and "
        "ovsnat-neutron-agent.")
    for agent in sorted(cl.conn.network.agents(), key=lambda a: a.host):
        say(f"  agent {agent.binary} on {agent.host}: alive={agent.is_alive}, bridge "
            f"{agent.configuration['bridge_name']}, physnets "
            f"{agent.configuration['physical_networks']}")
    net = cl.conn.network.get_network(cl.topo.tenant_net)
    say(f"  tenant network {net.name}: {net.provider_network_type} "
        f"{net.provider_segmentation_id} on physnet {net.provider_physical_network}, "
        "router with a gateway on 'public' (203.0.113.0/24)")
    for host in cl.lab.hosts:
        say(f"  {host}'s SNAT address, a port Neutron allocated on 'public': "
            f"{cl.snat_ip(host)}")


def boot_two(cl: CloudLab) -> tuple[nova.Instance, nova.Instance]:
    step("2. Two instances, booted as Nova boots them, configured by DHCP")
    say("  (port bound to the host through the API, the paused guest's tap, os-vif's plug;")
    say("   Nova waits for Neutron's network-vif-plugged before the guest runs, then the")
    say("   guest's udhcpc; ovsnat answers from the port's Neutron record)")
    pair = (nova.boot(cl, "inst-a", "hv1"), nova.boot(cl, "inst-b", "hv2"))
    for inst in pair:
        say(f"  {inst.name} on {inst.host}: network-vif-plugged reached Nova's API "
            f"{inst.vif_plugged_at - inst.plugged_at:.2f} s after the plug (the port ACTIVE: "
            "its flows confirmed, ovsnat-installed); the guest runs")
    for inst in pair:
        lease = dhcpclient.wait_bound(cl.lab, inst.vm, timeout=30)
        wait_active(cl, inst)
        say(f"  {inst.name} on {inst.host}: lease {lease['ip']}/{lease['mask']} router "
            f"{lease['router']} DNS {lease['dns'].strip()} MTU {lease['mtu']} "
            f"({dhcpclient.bound_at(cl.lab, inst.vm) - inst.plugged_at:.1f} s after the "
            "plug); port ACTIVE")
    for inst in pair:
        say(f"  {inst.name} -> server: the server sees {seen_as(cl, inst)} "
            f"({inst.host}'s SNAT address: PAT)")
    a, b = pair
    reply = tcp_connect(cl.lab, a.vm.ns, b.fixed_ip, nova.GUEST_PORT)
    say(f"  {a.name} (hv1) -> {b.name} (hv2) across the fabric: {b.name} sees "
        f"{reply.peer_ip} (no NAT inside a network)")
    return pair


def floating_ip(cl: CloudLab, inst: nova.Instance):
    step(f"3. A floating IP for {inst.name}, through Neutron's API")
    fip = cl.conn.network.create_ip(floating_network_id=cl.topo.external_net,
                                    project_id=cloud.PROJECT)
    address = fip.floating_ip_address
    with Pinger(cl.lab.srv_ns, address) as pinger:
        cl.conn.network.update_ip(fip, port_id=inst.port_id)
        answered = time.time()
        took = pinger.first_reply_after(answered, timeout=10)
        say(f"  associated {address}: the server's pings answered {took:.2f} s after "
            "Neutron's answer")
        reply = tcp_connect(cl.lab, cl.lab.srv_ns, address, nova.GUEST_PORT)
        say(f"  server -> {address}:{nova.GUEST_PORT}: reaches {inst.name}, which sees "
            f"{reply.peer_ip}; {inst.name} -> server is seen as {seen_as(cl, inst)}")
        step(f"4. Disassociated: {inst.name} is back on PAT, {address} unreachable")
        cl.conn.network.update_ip(fip, port_id=None)
        gone = pinger.silent_after(time.time(), quiet=1.0, timeout=5)
        say(f"  no reply {gone:.2f} s after Neutron's answer, nor for a second since")
        say(f"  {inst.name} -> server: seen as {seen_as(cl, inst)} (PAT)")
        cl.conn.network.update_ip(fip, port_id=inst.port_id)
        say(f"  associated again: answers {pinger.first_reply_after(time.time(), 10):.2f} s "
            "after Neutron's answer")
    return address


def migrate(cl: CloudLab, inst: nova.Instance, address: str) -> None:
    step(f"5. Live-migrate {inst.name} to hv2 the way Nova does it, under an inbound session")
    say(f"  the server holds a TCP session to {address}:{nova.GUEST_PORT} (an echo every "
        "10 ms) and pings it every 10 ms")
    session = background_tcp(cl.lab, cl.lab.srv_ns, address, nova.GUEST_PORT, hold=8)
    wait_for(lambda: tcp_established(cl.lab.srv_ns, address, nova.GUEST_PORT), 10,
             what="the inbound session")
    say(f"  Nova's defaults: the source waits for network-vif-plugged from hv2 before the "
        f"guest moves (live_migration_wait_for_vif_plug, up to "
        f"{nova.VIF_PLUGGING_TIMEOUT:.0f} s, fatal)")
    with Pinger(cl.lab.srv_ns, address, interval=0.01) as pinger:
        steps = nova.live_migrate(cl, inst, "hv2").steps
        pinger.first_reply_after(time.time(), timeout=5)
    t0 = steps["binding created"]
    for name, at in sorted(steps.items(), key=lambda step: step[1]):
        say(f"  {at - t0:5.2f} s  {name}")
    waited = steps[VIF_PLUGGED] - steps["row created at destination"]
    say(f"  the wait: network-vif-plugged reached Nova's API {waited:.2f} s after os-vif "
        "created the port's row on hv2, before the guest's tap existed there: hv2's agent "
        "reported the port up from ovsnat-ready (its controller accepted the keys) because "
        "hv2's binding was inactive")
    say(f"  the inbound session: {session.result().strip().splitlines()[-1]}; longest ping "
        f"gap {pinger.gap():.2f} s, {pinger.lost()} pings lost")
    wait_active(cl, inst)
    port = cl.conn.network.get_port(inst.port_id)
    bindings = [(b.host, b.status) for b in cl.nova.network.port_bindings(inst.port_id)]
    say(f"  Neutron: port {port.status} on {port.binding_host_id}; bindings {bindings}")
    dhcpclient.renew(cl.lab, inst.vm)
    wait_for(lambda: f"renew {inst.fixed_ip}" in dhcpclient.events(cl.lab, inst.vm), 10,
             what="the lease renewed on hv2")
    say(f"  {inst.name}'s DHCP client renewed its lease: hv2's ovsnat answered")


def explore(cl: CloudLab) -> None:
    step("6. Flows per host, and how to look around")
    for vm in cl.lab.vms.values():      # the agent's keys name each VM's flows' owner
        ids = cl.lab.hosts[vm.host].vsctl("--if-exists", "get", "Interface", vm.tap,
                                          "external_ids").strip()
        vm.external_ids = {k: v for k, v in _parse_map(ids).items() if k.startswith("ovsnat-")}
    for host in cl.lab.hosts:
        say(flow_summary(cl.lab, host))
    py = config.venv_bin("python")
    say(f"  Neutron's ports: ip netns exec {cl.services.ns} curl -s "
        f"{cl.services.endpoint}/v2.0/ports -H 'X-Roles: admin'")
    say(f"  agents: ip netns exec {cl.services.ns} {py} -c \"import openstack; "
        f"c = openstack.connect(auth_type='none', auth={{'endpoint': "
        f"'{cl.services.endpoint}'}}); print([(a.host, a.is_alive) for a in "
        "c.network.agents()])\"")
    for h in cl.lab.hosts.values():
        say(f"  {h.name}: OVS_RUNDIR={h.rundir} ovs-vsctl --columns=name,external_ids list "
            "Interface")
    say(f"  logs: {cl.services.paths.log}")
    say(f"  remove: ovsnat lab down {cl.lab.id}")


def _parse_map(text: str) -> dict[str, str]:
    """An ovs-vsctl map column ({a="b", c=d}) as a dict."""
    import re
    return {k: v.strip('"') for k, v in re.findall(r'([\w-]+)=("[^"]*"|[^,}]*)', text)}


def run_demo(cl: CloudLab) -> None:
    the_cloud(cl)
    a, _ = boot_two(cl)
    address = floating_ip(cl, a)
    migrate(cl, a, address)
    explore(cl)
