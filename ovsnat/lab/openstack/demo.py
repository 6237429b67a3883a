"""The narrated OpenStack demo (`ovsnat lab demo --openstack`, `make lab-openstack`): OpenStack's
own services drive ovsnat, and everything is done with the `openstack` command, as in a
cloud. Two servers boot (`openstack server create`: Nova waits for Neutron's
network-vif-plugged before the guest runs; ovsnat's DHCP configures it), a floating IP is
created and associated (`openstack floating ip create/set --port`) and reached from
outside, disassociated (`unset --port`: PAT again, unreachable) and associated again; the
server is live-migrated (`openstack server migrate --live-migration`, Nova's defaults: it
waits for the destination's network-vif-plugged before the guest moves) while the outside
holds a session to its FIP; then the other server is deleted (`openstack server delete`).
Every time printed is measured from the event that causes it. The lab stays up afterwards.
"""

from __future__ import annotations

import json
import time

from ovsnat.lab.demo import flow_summary, say, step
from ovsnat.lab.openstack import config, keystone, novalog
from ovsnat.lab.openstack import stackconf as sc
from ovsnat.lab.openstack.cloudlab import FLAVOR, IMAGE, CloudLab
from ovsnat.lab.openstack.rowwatch import RowWatch
from ovsnat.lab.openstack.servers import GUEST_PORT
from ovsnat.lab.reach import Pinger
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import SERVER_IP, Vm
from ovsnat.lab.traffic import background_tcp, tcp_connect, tcp_established

SERVER_PORT = 8080


def cli(cl: CloudLab, *args: str, operator: bool = False) -> tuple[str, float]:
    """`openstack ARGS` as the tenant (operator: the admin in the tenant's project, who may
    choose hosts and live-migrate); echoed, and returned with how long it took."""
    user = sc.ADMIN_USER if operator else sc.DEMO
    say(f"  $ openstack {' '.join(args)}" + ("   (as the cloud's admin)" if operator else ""))
    t = time.time()
    out = cl.openstack(*args, user=user, project=sc.DEMO)
    return out, time.time() - t


def seen_as(cl: CloudLab, ns: str) -> str:
    reply = tcp_connect(cl.lab, ns, SERVER_IP, SERVER_PORT)
    return reply.peer_ip if reply.ok else f"no answer ({reply.line})"


def port_of(cl: CloudLab, server_id: str):
    return cl.admin.network.ports(device_id=server_id)[0]


def the_cloud(cl: CloudLab) -> None:
    step("1. The cloud")
    say(
        "OpenStack's own services in their own namespace, every one on its loopback: "
        "Keystone, Placement, Glance, Nova (API and metadata API under uWSGI, conductor, "
        "scheduler), Neutron 29 with ovsnat's ML2 driver, RabbitMQ, MariaDB."
    )
    origin = (
        "from the cache of migrated databases"
        if cl.stack.cached
        else "migrated from nothing by each service"
    )
    say(f"  databases: {origin}")
    for agent in sorted(cl.admin.network.agents(), key=lambda a: a.host):
        say(
            f"  agent {agent.binary} on {agent.host}: alive={agent.is_alive}, bridge "
            f"{agent.configuration['bridge_name']}, physnets "
            f"{agent.configuration['physical_networks']}"
        )
    for svc in sorted(cl.admin.compute.services(), key=lambda s: (s.binary, s.host)):
        say(f"  {svc.binary} on {svc.host}: {svc.state}")
    net = cl.admin.network.get_network(cl.topo.tenant_net)
    say(
        f"  the tenant's network {net.name}: {net.provider_network_type} "
        f"{net.provider_segmentation_id} on physnet {net.provider_physical_network}, its "
        "router's gateway on 'public' (203.0.113.0/24)"
    )
    for host in cl.lab.hosts:
        say(f"  {host}'s SNAT address, a port Neutron allocated on 'public': {cl.snat_ip(host)}")


def boot_two(cl: CloudLab) -> dict[str, dict]:
    step("2. Two servers, booted by Nova, configured by ovsnat's DHCP")
    say("  (Nova binds the port to the host, its nova-compute plugs it with os-vif, creates")
    say("   the guest paused, waits for Neutron's network-vif-plugged: ovsnat's agent reports")
    say("   the port up once the controller confirmed its flows; then the guest runs)")
    booted = {}
    for name, host in (("inst-a", "hv1"), ("inst-b", "hv2")):
        out, took = cli(
            cl,
            "server",
            "create",
            "--flavor",
            FLAVOR,
            "--image",
            IMAGE,
            "--network",
            "tenant-a",
            "--host",
            host,
            "--wait",
            "-f",
            "json",
            name,
            operator=True,
        )
        server = json.loads(out)
        guest = cl.guest(server["id"])
        port = port_of(cl, server["id"])
        event = novalog.first_event(cl.stack.paths, novalog.VIF_PLUGGED, port.id, 0.0)
        build = novalog.compute_seconds(
            cl.stack.paths, host, r"Took ([\d.]+) seconds to build", server["id"]
        )
        say(
            f"  {name}: {server['status']} on {server['OS-EXT-SRV-ATTR:host']} after "
            f"{took:.1f} s (Nova's build {build:.1f} s); network-vif-plugged reached Nova's "
            f"API {event.at - guest.times['created']:.2f} s after the paused guest's tap "
            f"appeared, and the guest ran {guest.times['resumed'] - event.at:.2f} s later"
        )
        booted[name] = {"id": server["id"], "port": port.id, "host": host}
    for name, b in booted.items():
        guest = cl.guest(b["id"])
        lease = wait_for(guest.lease, 30, interval=0.05, what=f"{name}'s DHCP lease")
        b["ip"], b["ns"] = lease["ip"], guest.ns
        say(
            f"  {name} on {b['host']}: lease {lease['ip']}/{lease['mask']} router "
            f"{lease['router']} DNS {lease['dns'].strip()} MTU {lease['mtu']} "
            f"({guest.bound_at() - guest.times['resumed']:.1f} s after the guest ran); port "
            f"{cl.admin.network.get_port(b['port']).status}"
        )
    for name, b in booted.items():
        say(
            f"  {name} -> server: the server sees {seen_as(cl, b['ns'])} ({b['host']}'s SNAT "
            "address: PAT)"
        )
    a, b = booted["inst-a"], booted["inst-b"]
    reply = tcp_connect(cl.lab, a["ns"], b["ip"], GUEST_PORT)
    say(
        f"  inst-a (hv1) -> inst-b (hv2) across the fabric: inst-b sees {reply.peer_ip} (no "
        "NAT inside a network)"
    )
    return booted


def floating_ip(cl: CloudLab, inst: dict) -> str:
    step("3. A floating IP for inst-a, with `openstack floating ip`")
    say("  (Neutron's default security group lets nothing in from outside the group: the")
    say("   tenant opens ping and the servers' TCP port, as tenants do)")
    cli(cl, "security", "group", "rule", "create", "--protocol", "icmp", "default")
    cli(
        cl,
        "security",
        "group",
        "rule",
        "create",
        "--protocol",
        "tcp",
        "--dst-port",
        str(GUEST_PORT),
        "default",
    )
    out, _ = cli(
        cl, "floating", "ip", "create", "public", "-f", "value", "-c", "floating_ip_address"
    )
    address = out.strip()
    with Pinger(cl.lab.srv_ns, address) as pinger:
        _, took = cli(cl, "floating", "ip", "set", "--port", inst["port"], address)
        answered = pinger.first_reply_after(time.time(), timeout=10)
        say(
            f"  associated {address} (the command took {took:.1f} s): the server's pings "
            f"answered {answered:.2f} s after it returned"
        )
        reply = tcp_connect(cl.lab, cl.lab.srv_ns, address, GUEST_PORT)
        say(
            f"  server -> {address}:{GUEST_PORT}: reaches inst-a, which sees {reply.peer_ip}; "
            f"inst-a -> server is seen as {seen_as(cl, inst['ns'])}"
        )
        step("4. Disassociated: inst-a is back on PAT, its floating IP unreachable")
        cli(cl, "floating", "ip", "unset", "--port", address)
        gone = pinger.silent_after(time.time(), quiet=1.0, timeout=5)
        say(
            f"  no reply later than {gone:.2f} s after the command returned, nor for a second since"
        )
        say(f"  inst-a -> server: seen as {seen_as(cl, inst['ns'])} (PAT)")
        cli(cl, "floating", "ip", "set", "--port", inst["port"], address)
        say(
            f"  associated again: answers {pinger.first_reply_after(time.time(), 10):.2f} s "
            "after the command returned"
        )
    return address


def migrate(cl: CloudLab, inst: dict, address: str) -> None:
    step("5. Live-migrate inst-a to hv2 with Nova's defaults, under an inbound session")
    say(
        f"  the server holds a TCP session to {address}:{GUEST_PORT} (an echo every 10 ms) "
        "and pings it every 10 ms"
    )
    say(
        "  Nova's defaults: the source waits for network-vif-plugged from hv2 before the "
        "guest moves (live_migration_wait_for_vif_plug, up to 300 s, fatal)"
    )
    session = background_tcp(cl.lab, cl.lab.srv_ns, address, GUEST_PORT, hold=12)
    wait_for(
        lambda: tcp_established(cl.lab.srv_ns, address, GUEST_PORT), 10, what="the inbound session"
    )
    novalog.wait_notifier_idle(cl.stack.paths)
    tap = cl.guest(inst["id"]).nics[0].tap
    with (
        Pinger(cl.lab.srv_ns, address, interval=0.01) as pinger,
        RowWatch(cl.lab, "hv2", tap) as row,
    ):
        requested = time.time()
        cli(
            cl,
            "server",
            "migrate",
            "--live-migration",
            "--host",
            "hv2",
            "--wait",
            "inst-a",
            operator=True,
        )
        pinger.first_reply_after(time.time(), timeout=5)
        row_at = row.inserted_at()
    event = novalog.first_event(cl.stack.paths, novalog.VIF_PLUGGED, inst["port"], requested)
    moved = cl.guest(inst["id"]).times["moved"]
    for name, at in (
        ("live migration requested", requested),
        ("os-vif's row on hv2 (pre_live_migration, no tap yet)", row_at),
        ("network-vif-plugged from hv2 at Nova's API", event.at),
        ("the guest on hv2 (its tap moved, QEMU's RARPs)", moved),
    ):
        say(f"  {at - requested:5.2f} s  {name}")
    say(
        f"  the wait: network-vif-plugged reached Nova's API {event.at - row_at:.2f} s after "
        f"os-vif created the port's row on hv2 ({event.at - requested:.2f} s after the "
        "request), before the guest's tap existed there: hv2's agent reported the port up "
        "from ovsnat-ready (its controller accepted the keys) because hv2's binding was "
        "inactive"
    )
    say(
        f"  the inbound session: {session.result().strip().splitlines()[-1]}; longest ping "
        f"gap {pinger.gap():.2f} s, {pinger.lost()} pings lost"
    )
    server = cl.admin.compute.get_server(inst["id"])
    port = cl.admin.network.get_port(inst["port"])
    bindings = [(b.host, b.status) for b in cl.admin.network.port_bindings(inst["port"])]
    say(
        f"  Nova: {server.status} on {server.compute_host}; Neutron: port {port.status} on "
        f"{port.binding_host_id}, bindings {bindings}"
    )
    guest = cl.guest(inst["id"])
    guest.renew()
    wait_for(
        lambda: f"renew {inst['ip']}" in guest.dhcp_events(), 10, what="the lease renewed on hv2"
    )
    say("  inst-a's DHCP client renewed its lease: hv2's ovsnat answered")
    inst["host"] = "hv2"


def delete(cl: CloudLab, inst: dict) -> None:
    step("6. Delete inst-b")
    tap = cl.guest(inst["id"]).nics[0].tap
    _, took = cli(cl, "server", "delete", "--wait", "inst-b")
    row = cl.lab.hosts[inst["host"]].vsctl("--if-exists", "get", "Interface", tap, "name")
    gone = cl.admin.network.find_port(inst["port"]) is None
    say(
        f"  gone after {took:.1f} s: guest {'gone' if cl.guest(inst['id']) is None else 'left'}"
        f", {inst['host']}'s row {'gone' if not row.strip() else 'left'}, port "
        f"{'deleted' if gone else 'left'}"
    )


def explore(cl: CloudLab, booted: dict[str, dict]) -> None:
    step("7. Flows per host, and how to look around")
    for name, b in booted.items():  # the flow summary names each server's flows
        guest = cl.guest(b["id"])
        if guest is None:
            continue
        ids = (
            cl.lab.hosts[guest.host]
            .vsctl("--if-exists", "get", "Interface", guest.nics[0].tap, "external_ids")
            .strip()
        )
        cl.lab.vms[name] = Vm(
            name,
            guest.ns,
            b["ip"],
            guest.nics[0].mac,
            guest.host,
            guest.nics[0].tap,
            {k: v for k, v in _parse_map(ids).items() if k.startswith("ovsnat-")},
        )
    for host in cl.lab.hosts:
        say(flow_summary(cl.lab, host))
    env = " ".join(f"{k}={v}" for k, v in keystone.cli_env(sc.DEMO, sc.DEMO).items())
    say(
        f"  the cloud, as the tenant: ip netns exec {cl.stack.ns} env {env} "
        f"{config.venv_bin('openstack')} server list"
    )
    for h in cl.lab.hosts.values():
        say(
            f"  {h.name}: OVS_RUNDIR={h.rundir} ovs-vsctl --columns=name,external_ids list "
            "Interface"
        )
    say(f"  logs: {cl.stack.paths.log}")
    say(f"  remove: ovsnat lab down {cl.lab.id}")


def _parse_map(text: str) -> dict[str, str]:
    """An ovs-vsctl map column ({a="b", c=d}) as a dict."""
    import re

    return {k: v.strip('"') for k, v in re.findall(r'([\w-]+)=("[^"]*"|[^,}]*)', text)}


def run_demo(cl: CloudLab) -> None:
    the_cloud(cl)
    booted = boot_two(cl)
    address = floating_ip(cl, booted["inst-a"])
    migrate(cl, booted["inst-a"], address)
    delete(cl, booted["inst-b"])
    explore(cl, booted)
