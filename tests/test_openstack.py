"""ovsnat driven by OpenStack's own services: Keystone, Placement, Glance, Nova (API and
metadata API under uWSGI, conductor, scheduler, a nova-compute per hypervisor with the lab's
virt driver), Neutron 29 with ovsnat's ML2 driver behind Keystone, RabbitMQ and MariaDB, in
the lab's services namespace (ovsnat/lab/openstack/stack.py), and on each lab host ovsnat's
controller and ovsnat-neutron-agent. Servers are booted and deleted by Nova, through the
`openstack` command or openstacksdk, as in a cloud. These tests are about the services, Nova's
boot with its defaults, Neutron's side and the agent: bindings, the keys on the Interface
rows, port status, outages of the agent, the RPC server and OVSDB, scale, idle load. Traffic
end to end and live migration: tests/test_openstack_traffic.py.

One bring-up serves the module; every test makes its own servers and floating IPs.
"""

from __future__ import annotations

import configparser
import glob
import json
import os
import re
import shlex
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from ovsnat.lab.openstack import cloudlab, config, novalog, servers
from ovsnat.lab.openstack import stackconf as sc
from ovsnat.lab.openstack.rowwatch import RowWatch
from ovsnat.lab.reach import Pinger
from ovsnat.lab.sh import LabError, run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import tcp_connect

# Neutron's routers' cases (issue 26) run here too, on this module's lab.
from tests.external_cases import *  # noqa: E402,F403
from tests.metadata_cases import *  # noqa: E402,F403
from tests.openstack_lab import (
    HOSTS,
    all_rows,
    boot,
    cloud_lab,
    new_fip,
    port_status,
    pushed,
    row_ids,
    unique,
    wait_key,
)
from tests.router_cases import *  # noqa: E402,F403

pytestmark = [pytest.mark.lab, pytest.mark.openstack]

TIMES: dict[str, float] = {}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cl(request):
    with cloud_lab(request, TIMES) as lab:
        TIMES["memory of the services and hosts, MiB (PSS)"] = sum(lab.stack.memory().values())
        yield lab


def quiet_agents(cl, window: float) -> None:
    """Wait until no agent has logged a sync for `window` seconds (an outage earlier in
    the run makes each agent sync again one heartbeat after Neutron returns)."""

    def last_sync(host: str) -> float:
        stamps = re.findall(
            r"^(\S+ \S+) .*(?:Neutron reachable again|agent pass failed)",
            cl.stack.agent_log(host),
            re.M,
        )
        return datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S.%f").timestamp() if stamps else 0.0

    wait_for(
        lambda: all(time.time() - last_sync(h) > window for h in HOSTS),
        60,
        interval=0.5,
        what="the agents quiet",
    )


# --- the services and Nova's boot ----------------------------------------------------------
def test_the_services_answer_and_nova_knows_both_hypervisors(cl):
    catalog = {s.type for s in cl.admin.identity.services()}
    computes = {s.host for s in cl.admin.compute.services() if s.binary == "nova-compute"}
    binaries = {s.binary for s in cl.admin.compute.services() if s.state == "up"}
    hypervisors = {h.name for h in cl.admin.compute.hypervisors()}
    image = cl.admin.image.get_image(cl.image)
    assert {"identity", "compute", "placement", "image", "network"} <= catalog
    assert set(HOSTS) <= computes and set(HOSTS) <= hypervisors
    assert {"nova-conductor", "nova-scheduler", "nova-compute"} <= binaries
    assert image.status == "active" and image.size == len(cloudlab.IMAGE_DATA)
    # the metadata API (nova.wsgi.metadata under uWSGI) lists its versions
    with (
        cl.inside(),
        urllib.request.urlopen(f"http://127.0.0.1:{sc.METADATA_PORT}/", timeout=10) as r,
    ):
        versions = r.read().decode()
    assert "latest" in versions.split()
    # Neutron and Nova are behind Keystone: without a token, 401
    for port in (config.API_PORT, sc.NOVA_PORT):
        with cl.inside(), pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(
                f"http://127.0.0.1:{port}/v2.0/ports"
                if port == config.API_PORT
                else f"http://127.0.0.1:{port}/v2.1/servers",
                timeout=10,
            )
        assert refused.value.code == 401


def test_agents_report_state_and_are_alive(cl):
    agents = {a.host: a for a in cl.admin.network.agents()}
    assert set(HOSTS) <= set(agents)
    for host in HOSTS:
        agent = agents[host]
        assert agent.is_alive and agent.agent_type == "ovsnat agent"
        assert agent.binary == "ovsnat-neutron-agent"
        conf = agent.configuration
        assert conf["bridge_name"] == "br-int" and conf["physical_networks"] == ["fabric"]
        assert conf["datapath_type"] == "netdev"  # read from the host's bridge


def test_nova_boots_a_server_to_active_with_its_defaults_and_deletes_it(cl):
    """`openstack server create --wait` as the tenant: Nova (vif_plugging_is_fatal, its
    default 300 s timeout) binds the port (ovsnat's driver: vif_type ovs on the agent's
    bridge and datapath), nova-compute plugs it with os-vif; ovsnat's agent writes the
    keys within 1 s of the row, the controller confirms the flows, the agent reports the
    port up; Nova's API receives network-vif-plugged after the paused guest's tap exists and
    the guest runs only then. ovsnat's DHCP configures it, it reaches the outside through
    PAT. `openstack server delete --wait` leaves no guest, row or port."""
    files = glob.glob(os.path.join(cl.stack.paths.etc, "nova*.conf"))
    conf = configparser.ConfigParser(strict=False, interpolation=None)
    conf.read(files)
    assert conf.get("DEFAULT", "vif_plugging_is_fatal") == "true"
    text = "".join(Path(f).read_text() for f in files)
    assert "vif_plugging_timeout" not in text and "live_migration_wait_for_vif_plug" not in text

    t0 = time.time()
    server = json.loads(
        cl.openstack(
            "server",
            "create",
            "--flavor",
            cloudlab.FLAVOR,
            "--image",
            cloudlab.IMAGE,
            "--network",
            "tenant-a",
            "--wait",
            "-f",
            "json",
            unique("vm"),
        )
    )
    TIMES["server create --wait (the CLI's start and polls included)"] = time.time() - t0
    assert server["status"] == "ACTIVE", server
    host = cl.admin.compute.get_server(server["id"]).compute_host
    ports = cl.admin.network.ports(device_id=server["id"])
    assert host in HOSTS and len(ports) == 1
    port = ports[0]
    assert port.status == "ACTIVE" and port.binding_host_id == host
    assert port.binding_vif_type == "ovs"
    details = port.binding_vif_details
    assert details["bridge_name"] == "br-int" and details["port_filter"] is True
    assert details["datapath_type"] == "netdev" and details["ovs_hybrid_plug"] is False
    guest = cl.guest(server["id"])
    assert guest is not None and guest.host == host and guest.state == "running"
    tap = guest.nics[0].tap
    net = cl.admin.network.get_network(cl.topo.tenant_net)
    fixed = port.fixed_ips[0]["ip_address"]
    assert row_ids(cl, host, tap) == {
        "iface-id": port.id,
        "attached-mac": port.mac_address,
        "iface-status": "active",
        "vm-uuid": server["id"],  # os-vif's, untouched
        "ovsnat-fixed-ip": fixed,
        "ovsnat-network": net.id,
        "ovsnat-cidr": "10.1.0.0/24",
        "ovsnat-gateway": "10.1.0.1",
        "ovsnat-vlan": str(net.provider_segmentation_id),
        "ovsnat-mtu": str(net.mtu),
        "ovsnat-dns": "198.51.100.53",
        "ovsnat-routes": "10.9.0.0/16>10.1.0.254",
        "ovsnat-sg": ",".join(sorted(port.security_group_ids)),  # the default group
        "ovsnat-device-id": server["id"],  # for the metadata proxy (issue 29)
        "ovsnat-project": port.project_id,
        "ovsnat-installed": "true",
        "ovsnat-ready": "true",
    }
    assert 100 <= int(net.provider_segmentation_id) <= 199
    assert cl.lab.hosts[host].ofport(tap) > 0

    # The driver created the guest paused, Neutron's event reached Nova after that, and
    # only then did the guest run (libvirt's _create_guest_with_network)
    event = novalog.first_event(cl.stack.paths, novalog.VIF_PLUGGED, port.id, t0)
    assert event is not None and event.server == server["id"] and event.host == host
    assert guest.times["created"] < event.at <= guest.times["resumed"]
    TIMES["boot: the paused guest's tap to network-vif-plugged at Nova"] = (
        event.at - guest.times["created"]
    )
    TIMES["Nova's build (nova-compute's log)"] = novalog.compute_seconds(
        cl.stack.paths, host, r"Took ([\d.]+) seconds to build", server["id"]
    )

    lease = wait_for(guest.lease, 20, interval=0.1, what="the guest's DHCP lease")
    assert lease["ip"] == fixed and lease["router"] == "10.1.0.1"
    reply = wait_for(
        lambda: (r := tcp_connect(cl.lab, guest.ns, SERVER_IP, cloudlab.SERVER_PORT)).ok and r,
        15,
        interval=0.2,
        what="the outside server from the guest",
    )
    assert reply.peer_ip == cl.snat_ip(host), reply

    t0 = time.time()
    cl.openstack("server", "delete", "--wait", server["id"])
    TIMES["server delete --wait"] = time.time() - t0
    assert cl.guest(server["id"]) is None
    assert guest.ns not in run(["ip", "netns", "list"]).stdout
    assert row_ids(cl, host, tap) == {}  # os-vif unplugged
    assert cl.admin.network.find_port(port.id) is None  # Nova deleted its port


def test_the_keys_are_on_the_row_within_1s_of_os_vifs_plug(cl):
    """A server booted with a port its user made: from the row os-vif made in nova-compute
    to the agent's keys on it, the controller's confirmation and Nova's event, each as
    ovsdb-server or Nova's API logged it."""
    port = cl.tenant.network.create_port(network_id=cl.topo.tenant_net, name=unique("keys"))
    with RowWatch(cl.lab, "hv1", ("tap" + port.id)[:14]) as row:
        servers.boot(cl, unique("vm"), "hv1", port=port.id, lease=False)
        inserted = row.inserted_at()
        keys = row.key_at("ovsnat-fixed-ip") - inserted
        installed = row.key_at("ovsnat-installed") - inserted
    event = novalog.first_event(cl.stack.paths, novalog.VIF_PLUGGED, port.id, inserted)
    TIMES["keys on the row after os-vif's row"] = keys
    TIMES["ovsnat-installed after os-vif's row"] = installed
    TIMES["boot: network-vif-plugged at Nova after os-vif's row"] = event.at - inserted
    assert keys < 1.0, f"keys {keys:.2f} s after the row"
    assert port_status(cl, port.id) == "ACTIVE"


def test_each_host_has_its_own_snat_address_allocated_by_neutron(cl):
    snat = {h: cl.snat_ip(h) for h in HOSTS}
    ports = cl.admin.network.ports(
        network_id=cl.topo.external_net, device_owner="network:ovsnat_snat"
    )
    by_host = {p.device_id: p.fixed_ips[0]["ip_address"] for p in ports}
    assert by_host == snat and len(set(snat.values())) == len(HOSTS), (by_host, snat)
    assert new_fip(cl).floating_ip_address not in snat.values()


def test_idle_agents_ask_neutron_nothing_but_their_heartbeat(cl):
    """Counted at the server: neutron-rpc-server logs (debug) one 'received message' line
    per RPC request it gets and one 'Heartbeat received' line per agent heartbeat. The
    agents hold no credentials for Neutron's REST API (Keystone guards it: every request
    without a token is refused), so any REST request in the window is someone else's:
    Nova's periodic tasks; counted for the record."""
    agent_conf = Path(cl.stack.paths.etc, "ovsnat-agent-hv1.conf").read_text()
    assert "password" not in agent_conf and "auth_" not in agent_conf
    quiet_agents(cl, 2 * config.REPORT_INTERVAL)
    log_before = len(cl.stack.rpc_log())
    api_before = cl.stack.api_requests()
    window = 3.0 * config.REPORT_INTERVAL  # three heartbeats of each agent
    time.sleep(window)  # the measurement itself: idle agents, nobody else talks
    log = cl.stack.rpc_log()[log_before:]
    requests = len(re.findall(r"received message (?:msg_id|with unique_id)", log))
    beats = {
        h: len(re.findall(rf"Heartbeat received from ovsnat agent agent on host {h},", log))
        for h in HOSTS
    }
    print(
        f"\nidle {window:.0f} s: {requests} RPC requests at the server, heartbeats "
        f"{beats}; {cl.stack.api_requests() - api_before} REST requests (Nova's)"
    )
    TIMES["idle RPC requests per minute (all agents)"] = requests * 60 / window
    TIMES["idle REST requests per minute (Nova's periodic tasks)"] = (
        (cl.stack.api_requests() - api_before) * 60 / window
    )
    assert all(n >= 1 for n in beats.values())  # positive control: the count works
    # A heartbeat's request line precedes its 'Heartbeat received' line by a few ms: the
    # window's end may hold the first without the second, once per agent at most.
    assert requests <= sum(beats.values()) + len(HOSTS)


# --- outages -------------------------------------------------------------------------------
@pytest.mark.openstack_long  # a 20 s outage of a service: make test-openstack-long
def test_rpc_server_down_keeps_keys_and_converges_when_it_returns(cl):
    """Neutron unreachable for the agent (its RPC server down): a disassociation pushed
    meanwhile cannot be confirmed, so nothing is removed; it applies once Neutron answers."""
    server = boot(cl, "hv2", lease=False)
    fip = new_fip(cl, port_id=server.port_id)
    wait_key(cl, server, "ovsnat-fip", fip.floating_ip_address)
    # the controller's own marker (the FIP live here) comes after the agent's keys
    wait_key(cl, server, "ovsnat-fip-live", fip.floating_ip_address)
    before = row_ids(cl, "hv2", server.tap)
    cl.stack.stop("neutron-rpc")
    try:
        cl.tenant.network.update_ip(fip, port_id=None)  # the API still works
        deadline = time.monotonic() + 12  # > the agent's 10 s RPC timeout
        while time.monotonic() < deadline:
            assert row_ids(cl, "hv2", server.tap) == before
            time.sleep(0.5)
    finally:
        t, restarted = time.monotonic(), time.time()
        cl.stack.start_rpc()
    wait_key(cl, server, "ovsnat-fip", None, timeout=60)
    TIMES["rpc-server start to converged"] = time.monotonic() - t
    assert row_ids(cl, "hv2", server.tap)["ovsnat-fixed-ip"] == server.fixed_ip
    cl.agents_alive(since=restarted)  # the next test binds ports on them


def test_ovsdb_restart_keeps_keys_and_applies_changes_made_meanwhile(cl):
    """ovsdb-server restarts (rows persist in its database file); a disassociation made
    while it is down is written once the agent's OVSDB connection is back."""
    server = boot(cl, "hv2", lease=False)
    fip = new_fip(cl, port_id=server.port_id)
    wait_key(cl, server, "ovsnat-fip", fip.floating_ip_address)
    ovs = cl.lab.hosts["hv2"].ovs
    ovs.stop_daemon("ovsdb-server")
    try:
        cl.tenant.network.update_ip(fip, port_id=None)
        time.sleep(2)  # the agent has Neutron's answer but cannot write it
    finally:
        t = time.monotonic()
        ovs.start_db()
    wait_key(cl, server, "ovsnat-fip", None, timeout=30)
    TIMES["ovsdb-server start to converged"] = time.monotonic() - t
    assert row_ids(cl, "hv2", server.tap)["ovsnat-fixed-ip"] == server.fixed_ip


# --- Neutron's changes -------------------------------------------------------------------------
def test_a_server_on_a_flat_tenant_network_goes_out_untagged(cl):
    """The admin's flat provider network on the fabric, given to the tenant's project."""
    net = cl.admin.network.create_network(
        name=unique("flat"),
        provider_network_type="flat",
        provider_physical_network="fabric",
        project_id=cl.topo.project,
    )
    sub = cl.admin.network.create_subnet(
        network_id=net.id,
        ip_version=4,
        cidr="10.2.0.0/24",
        gateway_ip="10.2.0.1",
        project_id=cl.topo.project,
    )
    # On a router, or it is isolated (docs/routers.md): no PAT to reach the server with.
    cl.tenant.network.add_interface_to_router(cl.topo.router, subnet=sub.id)
    server = boot(cl, "hv1", network=net.id)
    ids = row_ids(cl, "hv1", server.tap)
    assert ids["ovsnat-network"] == net.id
    assert ids["ovsnat-cidr"] == "10.2.0.0/24" and "ovsnat-vlan" not in ids
    assert server.guest.lease()["router"] == "10.2.0.1"
    with Pinger(server.ns, "198.51.100.10") as pinger:
        pinger.first_reply_after(time.time(), timeout=10)


def test_subnet_and_fixed_ip_changes_are_pushed(cl):
    """Neither reaches L2 agents through Neutron's own notifications: the driver casts."""
    net = cl.tenant.network.create_network(name=unique("net"))
    sub = cl.tenant.network.create_subnet(
        network_id=net.id, ip_version=4, cidr="10.3.0.0/24", gateway_ip="10.3.0.1"
    )
    server = boot(cl, "hv2", network=net.id, lease=False)
    wait_key(cl, server, "ovsnat-fixed-ip", server.fixed_ip)
    assert "ovsnat-dns" not in row_ids(cl, "hv2", server.tap)
    new_ip = "10.3.0.77" if server.fixed_ip != "10.3.0.77" else "10.3.0.78"  # a change
    assert (
        pushed(
            cl,
            server,
            lambda: cl.tenant.network.update_subnet(sub, dns_nameservers=["198.51.100.54"]),
            "ovsnat-dns",
            "198.51.100.54",
        )
        < 2.0
    )
    assert (
        pushed(
            cl,
            server,
            lambda: cl.tenant.network.update_port(
                server.port_id, fixed_ips=[{"subnet_id": sub.id, "ip_address": new_ip}]
            ),
            "ovsnat-fixed-ip",
            new_ip,
        )
        < 2.0
    )


def test_the_systemd_units_command_line_runs_the_agent(cl, tmp_path):
    """etc/systemd/ovsnat-neutron-agent.service's ExecStart, with this lab's paths, runs an
    agent that Neutron sees start (a new started_at) and keeps alive."""
    from tests.test_systemd import unit

    exec_start = unit(os.path.join(REPO, "etc", "systemd", "ovsnat-neutron-agent.service"))[
        "Service"
    ]["ExecStart"].replace("\\\n", " ")
    argv = shlex.split(exec_start)
    conf = os.path.join(cl.stack.paths.etc, "ovsnat-agent-hv2.conf")
    empty = tmp_path / "empty.ini"
    empty.write_text("")
    files = iter([conf, str(empty)])
    argv = [config.venv_bin(os.path.basename(argv[0]))] + [
        next(files) if a.startswith("/etc/") else a for a in argv[1:]
    ]
    before = next(a for a in cl.admin.network.agents() if a.host == "hv2").started_at
    cl.stack.stop_agent("hv2")
    cl.lab.spawn(
        "agent-hv2", argv, ns=cl.stack.ns, env={"PYTHONWARNINGS": "ignore", "SPT_NOENV": "1"}
    )
    wait_for(
        lambda: next(a for a in cl.admin.network.agents() if a.host == "hv2").started_at != before,
        30,
        interval=0.2,
        what="the agent started from the unit's command line to report",
    )
    cl.agents_alive("hv2")


# --- scale ------------------------------------------------------------------------------------
# Both sizes long (20 servers: about 60 s), to keep `make test` within its 25 minutes.
@pytest.mark.openstack_long
@pytest.mark.parametrize("count", [20, 100])
def test_servers_on_a_host_converge_after_an_agent_restart(cl, count):
    """`count` servers booted by Nova on hv1, all with their keys and ACTIVE. The agent
    stops; meanwhile Nova boots one more there (its port bound while Neutron still counts
    the agent alive, its guest paused: Nova waits for the event), 10 ports get a FIP, Nova
    deletes 2 servers, one port changes its fixed IP, an operator removes one server's OVS
    port (`ovs-vsctl del-port`), and a server gets a FIP. Restarted, the agent makes every
    row right: the late server goes ACTIVE (Nova got its event), the removed port DOWN,
    and the server's FIP answers from outside. (100 servers: `make test-openstack-long`.)"""
    net = cl.tenant.network.create_network(name=unique("scale"))
    # The port moved below takes 10.50.1.250: outside the pool, so Neutron never gave it to
    # one of the servers first (it did once: 409, "already allocated").
    sub = cl.tenant.network.create_subnet(
        network_id=net.id,
        ip_version=4,
        cidr="10.50.0.0/23",
        gateway_ip="10.50.0.1",
        allocation_pools=[{"start": "10.50.0.2", "end": "10.50.1.200"}],
    )
    cl.tenant.network.add_interface_to_router(cl.topo.router, subnet=sub.id)  # for FIPs
    t = time.monotonic()
    booted = servers.boot_many(
        cl, [(f"scale-{i}", "hv1") for i in range(count)], network=net.id, lease=False
    )
    TIMES[f"{count} servers booted by Nova on one host (requests to ACTIVE)"] = time.monotonic() - t
    rows = all_rows(cl, "hv1")
    assert all(rows[s.tap].get("ovsnat-fixed-ip") == s.fixed_ip for s in booted)
    watched = booted[0]
    watched.wait_lease()

    cl.stack.stop_agent("hv1")
    late = unique("late")
    try:
        late_id = cl.operator.compute.create_server(
            name=late,
            flavor_id=cl.flavor,
            image_id=cl.image,
            networks=[{"uuid": net.id}],
            host="hv1",
        ).id
        late_bound(cl, late_id)
        fip = new_fip(cl, port_id=watched.port_id)
        changed = {
            s.port_id: {"ovsnat-fip": new_fip(cl, s.port_id).floating_ip_address}
            for s in booted[1:11]
        }
        changed[watched.port_id] = {"ovsnat-fip": fip.floating_ip_address}
        for gone in booted[11:13]:
            servers.delete(cl, gone)
            changed[gone.port_id] = None
        moved = booted[13]
        cl.admin.network.update_port(
            moved.port_id, fixed_ips=[{"subnet_id": sub.id, "ip_address": "10.50.1.250"}]
        )
        changed[moved.port_id] = {"ovsnat-fixed-ip": "10.50.1.250"}
        removed = booted[14]
        cl.lab.hosts["hv1"].vsctl("del-port", "br-int", removed.tap)
    finally:
        t = time.monotonic()
        cl.stack.start_agent("hv1")
    late_server = servers.wait_active(cl, late_id, late)
    want = {s.port_id: s for s in booted if s is not removed}
    want[late_server.port_id] = late_server
    converge(cl, want, changed)
    TIMES[f"{count} servers: agent start to converged"] = time.monotonic() - t
    wait_for(
        lambda: port_status(cl, removed.port_id) == "DOWN",
        20,
        interval=0.2,
        what="the port removed while the agent was away DOWN",
    )
    with Pinger(cl.lab.srv_ns, fip.floating_ip_address) as pinger:
        pinger.first_reply_after(time.time(), timeout=10)
    cl.agents_alive()


def late_bound(cl, server_id: str, timeout: float = 60) -> None:
    """Until Nova has had the server's port bound (its agent stopped, Neutron still counts
    it alive: agent_down_time, 75 s, after its last heartbeat); binding_failed fails."""

    def bound():
        ports = list(cl.admin.network.ports(device_id=server_id))
        vif = ports[0].binding_vif_type if ports else "unbound"
        return None if vif == "unbound" else vif

    vif = wait_for(bound, timeout, interval=0.2, what=f"the port of {server_id} bound")
    assert vif == "ovs", f"the late server's port: {vif} (Neutron counted the agent dead?)"


def converge(cl, want: dict, changed: dict, timeout: float = 60) -> None:
    """Until every server's row carries its fixed IP (or the new one) and its FIP if it got
    one, the deleted servers' rows are gone, and every port that should be is ACTIVE."""

    def expected(port_id: str, server) -> dict | None:
        if port_id in changed and changed[port_id] is None:
            return None
        return {"ovsnat-fixed-ip": server.fixed_ip, **(changed.get(port_id) or {})}

    def wrong() -> dict:
        rows, out = all_rows(cl, "hv1"), {}
        for port_id, server in want.items():
            ids = rows.get(server.tap, {})
            managed = {k: v for k, v in ids.items() if k in ("ovsnat-fixed-ip", "ovsnat-fip")}
            keys = expected(port_id, server)
            if keys is None and managed or keys is not None and managed != keys:
                out[server.name] = (managed, keys)
        return out

    try:
        wait_for(lambda: not wrong(), timeout, interval=0.2, what="every row's keys")
    except LabError:
        raise LabError(f"rows not converged (server: (row's keys, expected)): {wrong()}") from None
    alive = {pid for pid in want if expected(pid, want[pid]) is not None}
    wait_for(
        lambda: (
            alive
            <= {p.id for p in cl.admin.network.ports(status="ACTIVE", device_owner="compute:nova")}
        ),
        timeout,
        interval=0.2,
        what="every port ACTIVE",
    )
