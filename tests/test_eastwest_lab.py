"""East-west routing between a router's subnets, with real packets on two hosts (docs/routers.md,
issue 26 item 2): each host routes its own VMs' packets (TTL decremented once, as the
receiver sees it), locally or over the fabric from its own routed MAC; replies are routed
the same way on their own host; a network of another router never meets them; and the
fabric guards take routed frames only from another host's routed MAC. Every "nothing
passes" has its positive control in the same test.

Lab: hv1 and hv2 on the fabric. Router r1 (no gateway) holds tenant-a (10.1.0.0/24, VLAN
101) and tenant-c (10.2.0.0/24, VLAN 103); router r2 (no gateway) holds tenant-x
(10.3.0.0/24, VLAN 104). a1, c1 and x1 run on hv1; c2 and x2 on hv2. The lab writes the
bridge keys with ovs-vsctl, as ovsnat-neutron-agent will: each host's name and every
host's routed MAC, the three networks with their definitions, and each network's ports
on the other host as its neighbours, before the ports.
"""

from __future__ import annotations

import pytest
from scapy.all import ICMP, IP, TCP, UDP, Dot1Q, Ether

from ovsnat.lab import scenario
from ovsnat.lab.fabric import TENANT_A, LabNet
from ovsnat.lab.sh import wait_for
from ovsnat.lab.traffic import (
    capture,
    captured,
    ping,
    send_frames,
    start_server,
    tcp_connect,
    wait_captured,
)
from tests.test_networks import fabric_injector

pytestmark = pytest.mark.lab

ROUTER_MAC = scenario.ROUTER_MAC
TENANT_C = LabNet("tenant-c", "10.2.0.0/24", "10.2.0.1", 103)
TENANT_X = LabNet("tenant-x", "10.3.0.0/24", "10.3.0.1", 104)
HOSTMAC = {"hv1": "fa:16:3f:00:00:01", "hv2": "fa:16:3f:00:00:02"}
STRANGER = "fa:16:3f:00:00:63"  # looks like a routed MAC, but no host has it
SNAT = {"hv1": "203.0.113.11", "hv2": "203.0.113.21"}
VMS = {  # name: (host, network, ip, mac)
    "a1": ("hv1", TENANT_A, "10.1.0.11", "02:00:0a:01:00:0b"),
    "c1": ("hv1", TENANT_C, "10.2.0.21", "02:00:0a:02:00:15"),
    "x1": ("hv1", TENANT_X, "10.3.0.31", "02:00:0a:03:00:1f"),
    "c2": ("hv2", TENANT_C, "10.2.0.22", "02:00:0a:02:00:16"),
    "x2": ("hv2", TENANT_X, "10.3.0.32", "02:00:0a:03:00:20"),
}
ROUTERS = {TENANT_A: "r1", TENANT_C: "r1", TENANT_X: "r2"}


def bridge_keys(host: str) -> dict[str, str]:
    """What the agent writes on `host`: its name, the routed MACs, the networks of the
    routers with a local port, and each network's ports elsewhere."""
    keys = {
        "ovsnat-host": host,
        "ovsnat-router-r1": "ext=-;snat=off",
        "ovsnat-router-r2": "ext=-;snat=off",
        **{f"ovsnat-hostmac-{h}": mac for h, mac in HOSTMAC.items()},
    }
    for net, router in ROUTERS.items():
        vlan = net.vlan or "-"
        keys[f"ovsnat-net-{net.name}"] = (
            f"router={router};cidr={net.cidr};gw={net.gateway};vlan={vlan}"
        )
        elsewhere = sorted((ip, mac, h) for h, n, ip, mac in VMS.values() if n == net and h != host)
        keys[f"ovsnat-nb-{net.name}"] = ",".join(f"{ip}={mac}@{h}" for ip, mac, h in elsewhere)
    return keys


@pytest.fixture(scope="module")
def ew(module_lab):
    lab = module_lab
    for host in ("hv1", "hv2"):
        lab.add_host(host, fabric=True)
        args = [f'external_ids:{k}="{v}"' for k, v in bridge_keys(host).items()]
        lab.hosts[host].vsctl("set", "Bridge", "br-int", *args)
    for name, (host, net, ip, mac) in VMS.items():
        lab.add_vm(name, host, ip, mac, {"ovsnat-fixed-ip": ip}, net=net)
    for host in ("hv1", "hv2"):
        scenario.start_controller(lab, host, SNAT[host], fabric_port="fabric")
    for host in ("hv1", "hv2"):
        status = scenario.wait_in_sync(lab, host)
        assert not status["routing"]["problems"], status["routing"]  # the keys are clean
    for name in VMS:
        start_server(lab, f"{name}-tcp", lab.vms[name].ns, "tcp", 7000)
    wait_for(
        lambda: ping(lab.vms["x1"].ns, VMS["x2"][2], count=1, wait=0.3).received,
        15,
        what="tenant-x across the fabric",
    )
    return lab


def ip_of(name: str) -> str:
    return VMS[name][2]


def echo_requests_from(src: str):
    return lambda p: ICMP in p and p[IP].src == ip_of(src) and p[ICMP].type == 8


@pytest.mark.parametrize("dst", ["c1", "c2"], ids=["same-host", "across-hosts"])
def test_two_subnets_of_one_router_talk_routed_once_and_symmetrically(ew, dst):
    a1, c = ew.vms["a1"], ew.vms[dst]
    with (
        capture(ew, f"at-{dst}", c.ns, "eth0", "icmp") as at_dst,
        capture(ew, f"at-a1-{dst}", a1.ns, "eth0", "icmp") as at_a1,
    ):
        result = ping(a1.ns, c.ip, count=3)
        assert result.received == 3, result.output
        wait_captured(at_a1, lambda p: ICMP in p and p[ICMP].type == 0, what="the replies")
    requests = captured(at_dst, echo_requests_from("a1"))
    assert requests, "a1's echo requests at the destination"
    # Routed once on a1's host: TTL 64 - 1, from the router MAC (never a routed MAC).
    assert {(p[IP].ttl, p.src) for p in requests} == {(63, ROUTER_MAC)}
    replies = captured(at_a1, lambda p: ICMP in p and p[ICMP].type == 0)
    assert {(p[IP].src, p[IP].ttl, p.src) for p in replies} == {(c.ip, 63, ROUTER_MAC)}
    # TCP both ways, each side seeing the other's own address (no NAT on the way).
    there = tcp_connect(ew, a1.ns, c.ip, 7000)
    back = tcp_connect(ew, c.ns, a1.ip, 7000)
    assert there.ok and there.peer_ip == a1.ip, there.line
    assert back.ok and back.peer_ip == c.ip, back.line


def test_routed_frames_cross_the_fabric_from_each_hosts_routed_mac(ew):
    a1, c2 = ew.vms["a1"], ew.vms["c2"]
    tor = ew.ns_name("tor")
    with (
        capture(ew, "from-hv1", tor, "hv1", "vlan and icmp", "in") as out1,
        capture(ew, "from-hv2", tor, "hv2", "vlan and icmp", "in") as out2,
    ):
        assert ping(a1.ns, c2.ip, count=2).received == 2
        wait_captured(out2, lambda p: ICMP in p and p[ICMP].type == 0, what="the reply")
    sent = captured(out1, lambda p: ICMP in p and p[IP].dst == c2.ip)
    back = captured(out2, lambda p: ICMP in p and p[IP].dst == a1.ip)
    assert sent and back
    # hv1 routes into tenant-c (VLAN 103), hv2 the reply into tenant-a (VLAN 101).
    assert {(p.src, p.dst, p[Dot1Q].vlan) for p in sent} == {(HOSTMAC["hv1"], c2.mac, 103)}
    assert {(p.src, p.dst, p[Dot1Q].vlan) for p in back} == {(HOSTMAC["hv2"], a1.mac, 101)}
    # A TTL that would expire at the router is answered from the gateway, not routed.
    out = a1.exec("ping", "-n", "-c", "1", "-W", "1", "-t", "1", c2.ip, check=False).stdout
    assert f"From {TENANT_A.gateway}" in out and "exceeded" in out, out


def test_networks_of_different_routers_never_meet(ew):
    a1, c1, x1, x2 = (ew.vms[n] for n in ("a1", "c1", "x1", "x2"))
    # Positive controls: r1 routes between its networks, tenant-x switches across hosts.
    assert tcp_connect(ew, a1.ns, ew.vms["c2"].ip, 7000).ok
    assert tcp_connect(ew, x1.ns, x2.ip, 7000).ok
    for src, dst in ((a1, x2), (a1, x1), (x1, c1), (x2, a1)):
        reply = tcp_connect(ew, src.ns, dst.ip, 7000, timeout=1)
        assert not reply.ok, f"{src.name} reached {dst.name}: {reply.line}"
    assert ping(x1.ns, a1.ip, count=2, wait=0.5).received == 0


def forged(src_mac: str, dst, src_ip: str, marker: int) -> bytes:
    return bytes(
        Ether(src=src_mac, dst=dst.mac)
        / Dot1Q(vlan=TENANT_C.vlan)
        / IP(src=src_ip, dst=dst.ip, ttl=63)
        / UDP(sport=marker, dport=marker)
    )


def test_the_fabric_takes_routed_frames_only_from_another_hosts_routed_mac(ew):
    c1 = ew.vms["c1"]
    inject = fabric_injector(ew)
    frames = [
        forged(STRANGER, c1, ip_of("a1"), 5601),  # an unknown routed-looking MAC
        forged(HOSTMAC["hv1"], c1, ip_of("a1"), 5602),  # c1's own host's routed MAC
        forged(HOSTMAC["hv2"], c1, ip_of("x2"), 5603),  # known, but from another router
        forged(ROUTER_MAC, c1, ip_of("a1"), 5604),  # the router MAC never crosses
        forged(HOSTMAC["hv2"], c1, ip_of("a1"), 5605),  # the control: delivered
    ]
    with capture(ew, "c1-forged", c1.ns, "eth0", "udp") as pcap:
        send_frames(ew, ew.ns_name("tor"), frames, iface=inject)
        [control] = wait_captured(
            pcap, lambda p: UDP in p and p[UDP].dport == 5605, what="the known routed MAC's frame"
        )
    ports = {p[UDP].dport for p in captured(pcap, lambda p: UDP in p)}
    assert ports == {5605}, ports
    assert control.src == ROUTER_MAC and control[IP].ttl == 63  # not routed a second time


def test_switched_traffic_of_a_routed_network_still_crosses_the_fabric(ew):
    """A network's own sources are its switched traffic, not routed-looking: c1 and c2
    talk directly (their own MACs, TTL untouched), beside routing."""
    c1, c2 = ew.vms["c1"], ew.vms["c2"]
    with capture(ew, "c2-switched", c2.ns, "eth0", "tcp port 7000") as pcap:
        assert tcp_connect(ew, c1.ns, c2.ip, 7000).ok
        [syn] = wait_captured(pcap, lambda p: TCP in p and p[IP].src == c1.ip)[:1]
    assert syn.src == c1.mac and syn[IP].ttl == 64


def set_keys(lab, keys: dict[str, str]) -> None:
    """The same bridge keys on both hosts, as both agents would write them."""
    for host in ("hv1", "hv2"):
        lab.hosts[host].vsctl(
            "set", "Bridge", "br-int", *[f'external_ids:{k}="{v}"' for k, v in keys.items()]
        )


def reaches(lab, src: str, dst: str) -> bool:
    return tcp_connect(lab, lab.vms[src].ns, ip_of(dst), 7000, timeout=1).ok


def test_detaching_a_network_from_its_router_stops_east_west_and_attaching_it_resumes(ew):
    detached = f"router=-;cidr={TENANT_C.cidr};gw={TENANT_C.gateway};vlan={TENANT_C.vlan}"
    attached = bridge_keys("hv1")["ovsnat-net-tenant-c"]
    assert reaches(ew, "a1", "c2") and reaches(ew, "a1", "c1")
    try:
        set_keys(ew, {"ovsnat-net-tenant-c": detached})
        wait_for(lambda: not reaches(ew, "a1", "c2"), 5, what="a1 to c2 stopped")
        assert not reaches(ew, "a1", "c1") and not reaches(ew, "c2", "a1")
        assert reaches(ew, "c1", "c2")  # tenant-c itself: an isolated L2 segment, working
    finally:
        set_keys(ew, {"ovsnat-net-tenant-c": attached})
    wait_for(lambda: reaches(ew, "a1", "c2"), 5, what="a1 to c2 routed again")
    assert reaches(ew, "c1", "a1")


def test_a_routed_packet_meets_the_destination_ports_security_groups(ew):
    c2 = ew.vms["c2"]
    hv2 = ew.hosts["hv2"]
    hv2.vsctl(
        "set",
        "Bridge",
        "br-int",
        'external_ids:ovsnat-sg-pingonly="i1,in,4,icmp,-,-;o1,out,4,any,-,-"',
    )
    try:
        hv2.vsctl("set", "Interface", c2.tap, "external_ids:ovsnat-sg=pingonly")
        wait_for(lambda: not reaches(ew, "a1", "c2"), 5, what="TCP to c2 refused by its group")
        assert ping(ew.vms["a1"].ns, c2.ip, count=2).received == 2  # ICMP allowed: control
    finally:
        hv2.vsctl("remove", "Interface", c2.tap, "external_ids", "ovsnat-sg")
    wait_for(lambda: reaches(ew, "a1", "c2"), 5, what="TCP to c2 unfiltered again")
