"""ovsnat against a real Neutron 29 (API under uWSGI, neutron-rpc-server, RabbitMQ, SQLite),
with ovsnat's ML2 driver and, on each lab host, ovsnat's controller and ovsnat-neutron-agent.
Instances are plugged with os-vif as nova-compute plugs them; everything is driven through
openstacksdk. These tests are about Neutron's side and the agent: bindings, the keys on the
Interface rows, port status, outages of the agent, the RPC server and OVSDB, scale, idle
load. Traffic end to end: tests/test_openstack_traffic.py.

One bring-up serves the module; every test makes its own ports and floating IPs.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from datetime import datetime

import pytest

from ovsnat.lab.openstack import cloud, config, instances, nova
from ovsnat.lab.reach import Pinger
from ovsnat.lab.sh import wait_for
from tests.openstack_lab import HOSTS, all_rows, boot_static, cloud_lab, new_fip, port_status, \
    pushed, row_ids, unique, wait_active, wait_key

pytestmark = [pytest.mark.lab, pytest.mark.openstack]

TIMES: dict[str, float] = {}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cl(request):
    with cloud_lab(request, TIMES) as lab:
        yield lab


def quiet_agents(cl, window: float) -> None:
    """Wait until no agent has logged a sync for `window` seconds (an outage earlier in
    the run makes each agent sync again one heartbeat after Neutron returns)."""
    def last_sync(host: str) -> float:
        stamps = re.findall(r"^(\S+ \S+) .*(?:Neutron reachable again|agent pass failed)",
                            cl.services.agent_log(host), re.M)
        return datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S.%f").timestamp() \
            if stamps else 0.0
    wait_for(lambda: all(time.time() - last_sync(h) > window for h in HOSTS), 60,
             interval=0.5, what="the agents quiet")


# --- tests ---------------------------------------------------------------------------------
def test_agents_report_state_and_are_alive(cl):
    agents = {a.host: a for a in cl.conn.network.agents()}
    assert set(HOSTS) <= set(agents)
    for host in HOSTS:
        agent = agents[host]
        assert agent.is_alive and agent.agent_type == "ovsnat agent"
        assert agent.binary == "ovsnat-neutron-agent"
        conf = agent.configuration
        assert conf["bridge_name"] == "br-int" and conf["physical_networks"] == ["fabric"]
        assert conf["datapath_type"] == "netdev"     # read from the host's bridge


def test_idle_agents_ask_neutron_nothing_but_their_heartbeat(cl):
    """Counted at the server: neutron-rpc-server logs (debug) one 'received message' line
    per RPC request it gets and one 'Heartbeat received' line per agent heartbeat; uWSGI
    logs one line per REST request (agents make none)."""
    quiet_agents(cl, 2 * config.REPORT_INTERVAL)
    # uWSGI logs a request after its answer went out: the earlier tests' last line may land
    # a moment after their client returned. Start once the count stood still for 2 s.
    settled = []
    wait_for(lambda: settled.append(cl.services.api_requests()) or
             (len(settled) > 4 and len(set(settled[-5:])) == 1), 30, interval=0.5,
             what="the API log to settle")
    log_before = len(cl.services.rpc_log())
    api_before = cl.services.api_request_lines()
    window = 30.0
    time.sleep(window)      # the measurement itself: idle agents, nobody else talks
    log = cl.services.rpc_log()[log_before:]
    requests = len(re.findall(r"received message (?:msg_id|with unique_id)", log))
    beats = {h: len(re.findall(rf"Heartbeat received from ovsnat agent agent on host {h},",
                               log)) for h in HOSTS}
    per_min = {h: n * 60 / window for h, n in beats.items()}
    print(f"\nidle {window:.0f} s: {requests} RPC requests at the server, heartbeats "
          f"{beats} ({per_min} per minute per agent)")
    TIMES["idle RPC requests per minute (all agents)"] = requests * 60 / window
    assert all(n >= 1 for n in beats.values())      # positive control: the count works
    # A heartbeat's request line precedes its 'Heartbeat received' line by a few ms: the
    # window's end may hold the first without the second, once per agent at most.
    assert requests <= sum(beats.values()) + len(HOSTS)
    assert cl.services.api_request_lines()[len(api_before):] == []


def test_port_binds_and_its_row_gets_the_keys_within_1s_of_the_plug(cl):
    """Plugged as nova-compute plugs (not nova.boot, which returns only once Neutron's
    network-vif-plugged came: the keys are long there by then)."""
    port = nova.create_port(cl, "hv1", cl.topo.tenant_net, unique("keys"))
    assert port.binding_vif_type == "ovs", port.binding_vif_type
    details = port.binding_vif_details
    assert details["bridge_name"] == "br-int" and details["port_filter"] is True
    assert details["datapath_type"] == "netdev" and details["ovs_hybrid_plug"] is False
    spec = cloud.vif_spec(cl.conn, port, port.name)
    fixed = port.fixed_ips[0]["ip_address"]
    vm = instances.create_vm(cl.lab, unique("vm"), "hv1", spec, fixed, cloud.TENANT["cidr"],
                             cloud.TENANT["gateway"])
    plugged = instances.os_vif(cl.lab, "hv1", "plug", spec)
    seen = wait_key(cl, vm, "ovsnat-fixed-ip", fixed, timeout=5)
    TIMES["keys after os-vif plug"] = seen - plugged
    assert seen - plugged < 1.0, f"keys {seen - plugged:.2f} s after the plug"
    wait_key(cl, vm, "ovsnat-installed", "true")                    # the controller's
    net = cl.conn.network.get_network(cl.topo.tenant_net)
    assert row_ids(cl, "hv1", vm.tap) == {
        "iface-id": port.id, "attached-mac": port.mac_address, "iface-status": "active",
        "vm-uuid": port.device_id,                                   # os-vif's, untouched
        "ovsnat-fixed-ip": fixed, "ovsnat-network": net.id,
        "ovsnat-cidr": cloud.TENANT["cidr"], "ovsnat-gateway": cloud.TENANT["gateway"],
        "ovsnat-vlan": str(net.provider_segmentation_id), "ovsnat-mtu": str(net.mtu),
        "ovsnat-dns": "198.51.100.53", "ovsnat-routes": "10.9.0.0/16>10.1.0.254",
        "ovsnat-sg": ",".join(sorted(port.security_group_ids)),     # the default group
        "ovsnat-installed": "true", "ovsnat-ready": "true"}
    assert 100 <= int(net.provider_segmentation_id) <= 199


def test_each_host_has_its_own_snat_address_allocated_by_neutron(cl):
    snat = {h: cl.snat_ip(h) for h in HOSTS}
    ports = cl.conn.network.ports(network_id=cl.topo.external_net,
                                  device_owner="network:ovsnat_snat")
    by_host = {p.device_id: p.fixed_ips[0]["ip_address"] for p in ports}
    assert by_host == snat and len(set(snat.values())) == len(HOSTS), (by_host, snat)
    assert new_fip(cl).floating_ip_address not in snat.values()


def test_rpc_server_down_keeps_keys_and_converges_when_it_returns(cl):
    """Neutron unreachable for the agent (its RPC server down): a disassociation pushed
    meanwhile cannot be confirmed, so nothing is removed; it applies once Neutron answers."""
    inst = boot_static(cl, "hv2")
    fip = new_fip(cl, port_id=inst.port_id)
    wait_key(cl, inst.vm, "ovsnat-fip", fip.floating_ip_address)
    before = row_ids(cl, "hv2", inst.vm.tap)
    cl.services.stop("neutron-rpc")
    try:
        cl.conn.network.update_ip(fip, port_id=None)     # the API still works
        deadline = time.monotonic() + 12                  # > the agent's 10 s RPC timeout
        while time.monotonic() < deadline:
            assert row_ids(cl, "hv2", inst.vm.tap) == before
            time.sleep(0.5)
    finally:
        t = time.monotonic()
        cl.services.start_rpc()
    wait_key(cl, inst.vm, "ovsnat-fip", None, timeout=60)
    TIMES["rpc-server start to converged"] = time.monotonic() - t
    assert row_ids(cl, "hv2", inst.vm.tap)["ovsnat-fixed-ip"] == inst.fixed_ip
    cl.agents_alive()


def test_an_instance_on_a_flat_tenant_network_goes_out_untagged(cl):
    net = cl.conn.network.create_network(name=unique("flat"), provider_network_type="flat",
                                         provider_physical_network="fabric")
    cl.conn.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.2.0.0/24",
                                  gateway_ip="10.2.0.1")
    inst = nova.boot(cl, unique("vm"), "hv1", network_id=net.id)
    wait_key(cl, inst.vm, "ovsnat-network", net.id)
    ids = row_ids(cl, "hv1", inst.vm.tap)
    assert ids["ovsnat-cidr"] == "10.2.0.0/24" and "ovsnat-vlan" not in ids
    from ovsnat.lab import dhcpclient
    assert dhcpclient.wait_bound(cl.lab, inst.vm, timeout=20)["router"] == "10.2.0.1"
    with Pinger(inst.vm.ns, "198.51.100.10") as pinger:
        pinger.first_reply_after(time.time(), timeout=10)


def test_ovsdb_restart_keeps_keys_and_applies_changes_made_meanwhile(cl):
    """ovsdb-server restarts (rows persist in its database file); a disassociation made
    while it is down is written once the agent's OVSDB connection is back."""
    inst = boot_static(cl, "hv2")
    fip = new_fip(cl, port_id=inst.port_id)
    wait_key(cl, inst.vm, "ovsnat-fip", fip.floating_ip_address)
    ovs = cl.lab.hosts["hv2"].ovs
    ovs.stop_daemon("ovsdb-server")
    try:
        cl.conn.network.update_ip(fip, port_id=None)
        time.sleep(2)       # the agent has Neutron's answer but cannot write it
    finally:
        t = time.monotonic()
        ovs.start_db()
    wait_key(cl, inst.vm, "ovsnat-fip", None, timeout=30)
    TIMES["ovsdb-server start to converged"] = time.monotonic() - t
    assert row_ids(cl, "hv2", inst.vm.tap)["ovsnat-fixed-ip"] == inst.fixed_ip


def test_subnet_and_fixed_ip_changes_are_pushed(cl):
    """Neither reaches L2 agents through Neutron's own notifications: the driver casts."""
    net = cl.conn.network.create_network(name=unique("net"), project_id=cloud.PROJECT)
    sub = cl.conn.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.3.0.0/24",
                                        gateway_ip="10.3.0.1", project_id=cloud.PROJECT)
    inst = nova.boot(cl, unique("vm"), "hv2", network_id=net.id, dhcp=False)
    wait_key(cl, inst.vm, "ovsnat-fixed-ip", inst.fixed_ip)
    assert "ovsnat-dns" not in row_ids(cl, "hv2", inst.vm.tap)
    assert pushed(cl, inst.vm, lambda: cl.conn.network.update_subnet(
        sub, dns_nameservers=["198.51.100.54"]), "ovsnat-dns", "198.51.100.54") < 2.0
    assert pushed(cl, inst.vm, lambda: cl.conn.network.update_port(
        inst.port_id, fixed_ips=[{"subnet_id": sub.id, "ip_address": "10.3.0.77"}]),
        "ovsnat-fixed-ip", "10.3.0.77") < 2.0


def test_the_systemd_units_command_line_runs_the_agent(cl, tmp_path):
    """etc/systemd/ovsnat-neutron-agent.service's ExecStart, with this lab's paths, runs an
    agent that Neutron sees start (a new started_at) and keeps alive."""
    from tests.test_systemd import unit
    exec_start = unit(os.path.join(REPO, "etc", "systemd", "ovsnat-neutron-agent.service"))[
        "Service"]["ExecStart"].replace("\\\n", " ")
    argv = shlex.split(exec_start)
    conf = os.path.join(cl.services.paths.etc, "ovsnat-agent-hv2.conf")
    empty = tmp_path / "empty.ini"
    empty.write_text("")
    files = iter([conf, str(empty)])
    argv = [config.venv_bin(os.path.basename(argv[0]))] + \
        [next(files) if a.startswith("/etc/") else a for a in argv[1:]]
    before = next(a for a in cl.conn.network.agents() if a.host == "hv2").started_at
    cl.services.stop_agent("hv2")
    cl.lab.spawn("agent-hv2", argv, ns=cl.services.ns,
                 env={"PYTHONWARNINGS": "ignore", "SPT_NOENV": "1"})
    wait_for(lambda: next(a for a in cl.conn.network.agents()
                          if a.host == "hv2").started_at != before, 30, interval=0.2,
             what="the agent started from the unit's command line to report")
    cl.agents_alive("hv2")


def test_100_ports_on_a_host_converge_after_an_agent_restart(cl):
    """100 ports on hv1, plugged by os-vif, all with their keys and ACTIVE. The agent stops;
    meanwhile 10 ports get a FIP, 2 are deleted, one changes its fixed IP, one is unplugged,
    a new one is plugged, and a real instance gets a FIP. Restarted, the agent makes every
    row right (the new port ACTIVE too, the unplugged one DOWN) and the instance's FIP
    answers from outside."""
    net = cl.conn.network.create_network(name=unique("scale"), project_id=cloud.PROJECT)
    sub = cl.conn.network.create_subnet(network_id=net.id, ip_version=4,
                                        cidr="10.50.0.0/23", gateway_ip="10.50.0.1",
                                        allocation_pools=[{"start": "10.50.0.2",
                                                           "end": "10.50.1.200"}],
                                        project_id=cloud.PROJECT)
    cl.conn.network.add_interface_to_router(cl.topo.router, subnet=sub.id)  # for its FIPs
    t = time.monotonic()
    ports = make_ports(cl, net.id, 101)
    TIMES["101 ports created (one bulk API call)"] = time.monotonic() - t
    late = ports.pop()
    specs = {p.id: cloud.vif_spec(cl.conn, p, p.name) for p in ports + [late]}
    instances.create_taps(cl.lab, "hv1", [s.vif_name for s in specs.values()])
    t = time.monotonic()
    instances.os_vif(cl.lab, "hv1", "plug", *[specs[p.id] for p in ports])
    converge(cl, {p.id: expected(p) for p in ports}, specs)
    TIMES["100 ports: plug to keys and ACTIVE"] = time.monotonic() - t
    guest = boot_static(cl, "hv1")
    wait_active(cl, guest.port_id)

    cl.services.stop_agent("hv1")
    gone = ports.pop()
    try:
        fip = new_fip(cl, port_id=guest.port_id)
        changed = change_ports_meanwhile(cl, ports, sub.id)
        instances.os_vif(cl.lab, "hv1", "plug", specs[late.id])
        instances.os_vif(cl.lab, "hv1", "unplug", specs[gone.id])
    finally:
        t = time.monotonic()
        cl.services.start_agent("hv1")
    want = {p.id: expected(p, changed) for p in ports + [late]}
    converge(cl, want, specs)
    TIMES["100 ports: agent start to converged"] = time.monotonic() - t
    wait_for(lambda: port_status(cl, gone.id) == "DOWN", 20, interval=0.2,
             what="the port unplugged while the agent was away DOWN")
    with Pinger(cl.lab.srv_ns, fip.floating_ip_address) as pinger:
        pinger.first_reply_after(time.time(), timeout=10)
    cl.agents_alive()


# --- helpers of the scale test -----------------------------------------------------------
def make_ports(cl, network_id: str, n: int) -> list:
    return list(cl.nova.network.create_ports([
        {"network_id": network_id, "name": f"scale-{i}", "project_id": cloud.PROJECT,
         "device_owner": "compute:nova", "device_id": f"scale-{i}",
         "binding_host_id": "hv1"} for i in range(n)]))


def change_ports_meanwhile(cl, ports: list, subnet_id: str) -> dict:
    """FIPs for 10 ports, 2 ports deleted, one new fixed IP; returns port id -> what its
    keys should now say (a FIP, None for deleted, a new fixed IP)."""
    changed: dict = {}
    for p in ports[:10]:
        changed[p.id] = {"ovsnat-fip": new_fip(cl, port_id=p.id).floating_ip_address}
    for p in ports[10:12]:
        cl.nova.network.delete_port(p.id)
        changed[p.id] = None
    cl.conn.network.update_port(ports[12].id,
                                fixed_ips=[{"subnet_id": subnet_id, "ip_address": "10.50.1.250"}])
    changed[ports[12].id] = {"ovsnat-fixed-ip": "10.50.1.250"}
    return changed


def expected(port, changed: dict | None = None) -> dict | None:
    """The agent's keys this port's row should carry (None: none, the port is gone)."""
    if changed and port.id in changed and changed[port.id] is None:
        return None
    keys = {"ovsnat-fixed-ip": port.fixed_ips[0]["ip_address"]}
    return {**keys, **((changed or {}).get(port.id) or {})}


def converge(cl, want: dict, specs: dict, timeout: float = 60) -> None:
    """Wait until every row carries what `want` says and every port that exists is ACTIVE."""
    def rows_right() -> bool:
        rows = all_rows(cl, "hv1")
        for pid, keys in want.items():
            ids = rows.get(specs[pid].vif_name, {})
            managed = {k: v for k, v in ids.items() if k in ("ovsnat-fixed-ip", "ovsnat-fip")}
            if keys is None and managed or keys is not None and managed != keys:
                return False
        return True
    wait_for(rows_right, timeout, interval=0.2, what="every row's keys")
    alive = {pid for pid, keys in want.items() if keys is not None}
    wait_for(lambda: alive <= {p.id for p in cl.conn.network.ports(status="ACTIVE",
                                                                   device_owner="compute:nova")},
             timeout, interval=0.2, what="every port ACTIVE")
