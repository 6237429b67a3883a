"""Tenant networks on a shared L2 fabric, with real packets: east-west across hosts (untagged
and tagged), two networks with the same addresses on one host through one SNAT IP at the
same time, isolation between networks, hairpin through FIPs across networks, and a live
migration that keeps an inbound FIP session and an east-west session between two hosts.

Lab: three hypervisors on one top-of-rack switch (ovsnat.lab.fabric). The default network
(10.0.0.0/24, untagged) and two tenant networks with the same CIDR, tenant-a (VLAN 101)
and tenant-b (VLAN 102); every controller has fabric_port = fabric.
"""

from __future__ import annotations

import netaddr
import pytest
from scapy.all import ARP, Dot1Q, Ether, rdpcap

from ovsnat.lab import scenario
from ovsnat.lab.fabric import TENANT_A, TENANT_B
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import (
    background_tcp,
    capture,
    ping,
    send_frames,
    start_server,
    tcp_connect,
    udp_request,
)

pytestmark = pytest.mark.lab

SNAT = {"hv1": "203.0.113.11", "hv2": "203.0.113.21", "hv3": "203.0.113.31"}
FIP_A1 = "203.0.113.41"
VMS = {  # name: (host, ip, mac, network, extra external_ids)
    "d1": ("hv1", "10.0.0.11", "02:00:0a:00:00:0b", None, {}),
    "d2": ("hv2", "10.0.0.12", "02:00:0a:00:00:0c", None, {}),
    "a1": ("hv1", "10.1.0.11", "02:00:0a:01:00:0b", TENANT_A, {"ovsnat-fip": FIP_A1}),
    "a2": ("hv2", "10.1.0.12", "02:00:0a:01:00:0c", TENANT_A, {}),
    "b1": ("hv1", "10.1.0.11", "02:00:0a:02:00:0b", TENANT_B, {}),
    "b2": ("hv2", "10.1.0.12", "02:00:0a:02:00:0c", TENANT_B, {}),
    "a3": ("hv1", "10.1.0.13", "02:00:0a:01:00:0d", TENANT_A, {}),
    "b3": ("hv1", "10.1.0.13", "02:00:0a:02:00:0d", TENANT_B, {}),
}


@pytest.fixture(scope="module")
def fab(module_lab):
    lab = module_lab
    for host in SNAT:
        lab.add_host(host, fabric=True)
    for name, (host, ip, mac, net, extra) in VMS.items():
        lab.add_vm(name, host, ip, mac, {"ovsnat-fixed-ip": ip, **extra}, net=net)
    for host, snat in SNAT.items():
        scenario.start_controller(lab, host, snat, fabric_port="fabric")
    for host in SNAT:
        scenario.wait_in_sync(lab, host)
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    start_server(lab, "srv-udp", lab.srv_ns, "udp", 8080)
    for name in VMS:
        start_server(lab, f"{name}-tcp", lab.vms[name].ns, "tcp", 7000)
    start_server(lab, "a1-udp", lab.vms["a1"].ns, "udp", 7000)
    wait_for(lambda: ping(lab.srv_ns, FIP_A1, count=1, wait=0.2).received, 15, what="a1's FIP")
    return lab


def vm(lab, name):
    return lab.vms[name]


@pytest.mark.parametrize(
    "src,dst", [("d1", "d2"), ("a1", "a2"), ("b1", "b2")], ids=["untagged", "vlan-101", "vlan-102"]
)
def test_vms_of_one_network_talk_across_hosts(fab, src, dst):
    s, d = vm(fab, src), vm(fab, dst)
    assert ping(s.ns, d.ip).received == 3
    reply = tcp_connect(fab, s.ns, d.ip, 7000)
    assert reply.ok and reply.peer_ip == s.ip, reply.line  # no NAT between them
    assert tcp_connect(fab, d.ns, s.ip, 7000).peer_ip == d.ip


def test_equal_fixed_ips_of_two_networks_pat_to_one_server_port_at_once(fab):
    """a3 and b3 are both 10.1.0.13 on hv1 (PAT), both talking to the server's port 8080 from
    source port 45000 at the same time: each session gets its own echoes (a mixed-up reply
    shows as MIXED), through the one SNAT IP."""
    a3, b3 = vm(fab, "a3"), vm(fab, "b3")
    for v in (a3, b3):
        reply = tcp_connect(fab, v.ns, SERVER_IP, 8080)
        assert reply.peer_ip == SNAT["hv1"], reply.line
    sessions = [
        background_tcp(fab, v.ns, SERVER_IP, 8080, hold=3, src_port=45000) for v in (a3, b3)
    ]
    wait_for(
        lambda: conntrack_to_server(fab, 45000) >= 2, 5, what="both sessions in hv1's network zones"
    )
    results = [s.result() for s in sessions]
    assert all("HELD" in r for r in results), results
    zones = fab.hosts["hv1"].appctl("dpctl/dump-conntrack", "zone=65000")
    transit = netaddr.IPNetwork(scenario.status(fab, "hv1")["transit_cidr"])
    transits = {
        src
        for line in zones.splitlines()
        if "dport=8080" in line
        for src in [line.split("src=")[1].split(",")[0]]
        if netaddr.IPAddress(src) in transit
    }
    assert len(transits) >= 2, zones  # each network under its own transit address


def conntrack_to_server(lab, sport: int) -> int:
    """Entries of hv1's VLAN network zones for connections from source port `sport`."""
    total = 0
    for zone in (60101, 60102):
        out = lab.hosts["hv1"].appctl("dpctl/dump-conntrack", f"zone={zone}")
        total += sum(1 for line in out.splitlines() if f"sport={sport}," in line)
    return total


def test_no_frame_of_one_network_reaches_the_other(fab):
    """a1 reaches 10.1.0.12 in its network (a2); b2, with the same address in tenant-b,
    sees nothing of it. ARP injected on the fabric in one VLAN reaches only that VLAN's VM."""
    a1, a2, b1, b2 = (vm(fab, n) for n in ("a1", "a2", "b1", "b2"))
    with (
        capture(fab, "b2-eth0", b2.ns, "eth0", f"ether src {a1.mac}") as b2_pcap,
        capture(fab, "a2-eth0", a2.ns, "eth0", f"ether src {a1.mac}") as a2_pcap,
    ):
        run(["ip", "-n", a1.ns, "neigh", "flush", "dev", "eth0"])
        assert ping(a1.ns, a2.ip).received == 3
        wait_for(lambda: len(rdpcap(a2_pcap)) >= 3, 5, what="a1's frames at a2")
    assert not rdpcap(b2_pcap)
    inject = fabric_injector(fab)
    for vlan, hears, deaf in ((101, a1, b1), (102, b1, a1)):
        request = (
            Ether(src="02:00:00:00:99:01", dst="ff:ff:ff:ff:ff:ff")
            / Dot1Q(vlan=vlan)
            / ARP(op=1, hwsrc="02:00:00:00:99:01", psrc="10.1.0.99", pdst="10.1.0.11")
        )
        with (
            capture(fab, f"hear-{vlan}", hears.ns, "eth0", "arp host 10.1.0.99") as heard,
            capture(fab, f"deaf-{vlan}", deaf.ns, "eth0", "arp host 10.1.0.99") as missed,
        ):
            send_frames(fab, fab.ns_name("tor"), [bytes(request)], iface=inject)
            wait_for(lambda: len(rdpcap(heard)) >= 1, 5, what=f"VLAN {vlan}'s ARP at its VM")
        assert not rdpcap(missed), f"VLAN {vlan}'s ARP reached the other network"


def fabric_injector(lab) -> str:
    """A port of the top-of-rack switch to inject frames from (created once)."""
    ns = lab.ns_name("tor")
    if "injp" not in run(["ip", "-n", ns, "link", "show"]).stdout:
        run(["ip", "-n", ns, "link", "add", "inj", "type", "veth", "peer", "name", "injp"])
        for dev in ("inj", "injp"):
            run(["ethtool", "-K", dev, "tx", "off"], ns=ns, check=False)
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        run(["ip", "-n", ns, "link", "set", "inj", "master", "br0"])
    return "injp"


@pytest.mark.parametrize(
    "client,seen_as",
    [("b1", SNAT["hv1"]), ("a1", FIP_A1), ("d1", SNAT["hv1"])],
    ids=["other-network-pat", "own-fip", "default-network-pat"],
)
def test_hairpin_through_a_fip_works_within_and_across_networks(fab, client, seen_as):
    for proto in (tcp_connect, udp_request):
        reply = proto(fab, vm(fab, client).ns, FIP_A1, 7000)
        assert reply.ok and reply.peer_ip == seen_as, reply.line


def test_status_and_trace_show_networks_and_trace_tells_equal_addresses_apart(fab):
    import json

    st = json.loads(scenario.cli(fab, "hv1", "status", "--json").stdout)
    nets = {n["name"]: n for n in st["networks"]}
    assert nets["tenant-a"]["vlan"] == 101 and nets["tenant-b"]["vlan"] == 102
    assert nets["tenant-a"]["cidr"] == nets["tenant-b"]["cidr"] == "10.1.0.0/24"
    assert nets["(default)"]["vlan"] is None and st["fabric_port"] == "fabric"
    assert {v["name"]: v["network"] for v in st["vms"]}["tapb3"] == "tenant-b"
    ambiguous = scenario.cli(fab, "hv1", "trace", "10.1.0.13", SERVER_IP, "tcp", "80")
    assert ambiguous.returncode == 2
    assert (
        "10.1.0.13 is in several networks (tenant-a, tenant-b): add --network" in ambiguous.stderr
    )
    for net, vlan in (("tenant-a", 101), ("tenant-b", 102)):
        out = json.loads(
            scenario.cli(
                fab,
                "hv1",
                "trace",
                "--json",
                "--network",
                net,
                "10.1.0.13",
                "10.1.0.12",
                "tcp",
                "7000",
            ).stdout
        )
        assert out["verdict"]["where"] == f"the fabric in VLAN {vlan}", out["verdict"]
    routed = json.loads(
        scenario.cli(
            fab,
            "hv1",
            "trace",
            "--json",
            "--network",
            "tenant-b",
            "10.1.0.13",
            SERVER_IP,
            "tcp",
            "80",
        ).stdout
    )
    assert routed["verdict"]["where"] == "the uplink"
    assert "net_pat_out" in [s["role"] for s in routed["steps"]]
    dump = scenario.cli(fab, "hv1", "dump").stdout
    assert "network tenant-a" in dump and "network tenant-b" in dump


def test_migration_keeps_an_inbound_fip_session_and_an_east_west_session(fab):
    """a1 (FIP) moves from hv1 to hv3 while the server holds a session to its FIP and a2 (on
    hv2) one to its fixed IP across the fabric; QEMU's RARP, relayed onto the fabric in
    VLAN 101, tells the switch where a1 is now."""
    a1, a2 = vm(fab, "a1"), vm(fab, "a2")
    inbound = background_tcp(fab, fab.srv_ns, FIP_A1, 7000, hold=6)
    east_west = background_tcp(fab, a2.ns, a1.ip, 7000, hold=6)
    wait_for(lambda: "tapa1" in fab.hosts["hv1"].vsctl("list-ports", "br-int"), 5, what="a1 on hv1")
    try:
        fab.move_vm(a1, "hv3")
        results = inbound.result(), east_west.result()
        assert all("HELD" in r for r in results), results
        assert tcp_connect(fab, a1.ns, SERVER_IP, 8080).peer_ip == FIP_A1
    finally:
        fab.move_vm(a1, "hv1")
        wait_for(
            lambda: tcp_connect(fab, a2.ns, a1.ip, 7000, timeout=0.5).ok, 10, what="a1 back on hv1"
        )
