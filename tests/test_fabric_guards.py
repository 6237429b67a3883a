"""What the fabric may not do, with real frames injected on the top-of-rack switch: speak
with a local VM's MAC or the router's, send routed traffic through a host, have its gateway
ARP answered; and what never appears on it: anything of the external side. Every "nothing
arrived" check has a frame that must arrive, sent last, in the same capture.

Lab: hv1 runs a1 (10.1.0.11) and a3 (10.1.0.13), hv2 runs a2 (10.1.0.12), all in tenant-a
(VLAN 101). Frames are injected from a port of the switch of their own (`injp`). A frame
injected with a VM's MAC teaches the switch a wrong port: each test that does so has the VM
announce itself again before it ends.
"""

from __future__ import annotations

import sys

import pytest
from scapy.all import ARP, IP, UDP, Dot1Q, Ether, rdpcap

from ovsnat.lab import scenario
from ovsnat.lab.fabric import TENANT_A
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import capture, ping, send_frames
from tests.test_networks import fabric_injector

pytestmark = pytest.mark.lab

ROUTER_MAC = scenario.ROUTER_MAC
STRANGER = "02:00:0a:01:00:63"  # a MAC no VM has: a remote VM for the switch
FIP = "203.0.113.51"


@pytest.fixture(scope="module")
def guarded(module_lab):
    lab = module_lab
    lab.add_host("hv1", fabric=True)
    lab.add_host("hv2", fabric=True)
    lab.add_vm(
        "a1",
        "hv1",
        "10.1.0.11",
        "02:00:0a:01:00:0b",
        {"ovsnat-fixed-ip": "10.1.0.11"},
        net=TENANT_A,
    )
    lab.add_vm(
        "a3",
        "hv1",
        "10.1.0.13",
        "02:00:0a:01:00:0d",
        {"ovsnat-fixed-ip": "10.1.0.13"},
        net=TENANT_A,
    )
    lab.add_vm(
        "a2",
        "hv2",
        "10.1.0.12",
        "02:00:0a:01:00:0c",
        {"ovsnat-fixed-ip": "10.1.0.12"},
        net=TENANT_A,
    )
    scenario.start_controller(lab, "hv1", "203.0.113.11", fabric_port="fabric")
    scenario.start_controller(lab, "hv2", "203.0.113.21", fabric_port="fabric")
    wait_for(
        lambda: ping(lab.vms["a2"].ns, "10.1.0.13", count=1, wait=0.3).received,
        15,
        what="east-west across the fabric",
    )
    return lab


def emit_udp(lab, vm, dst: str, port: int) -> None:
    """One datagram from the VM's own kernel (no answer expected)."""
    run(
        [
            sys.executable,
            "-c",
            "import socket; socket.socket(socket.AF_INET, "
            f"socket.SOCK_DGRAM).sendto(b'x', ('{dst}', {port}))",
        ],
        ns=vm.ns,
    )


def udp_to(
    dst_vm, src_mac: str, dst_mac: str | None = None, dst_ip: str | None = None, marker: int = 5555
) -> bytes:
    return bytes(
        Ether(src=src_mac, dst=dst_mac or dst_vm.mac)
        / Dot1Q(vlan=101)
        / IP(src="10.1.0.99", dst=dst_ip or dst_vm.ip)
        / UDP(sport=marker, dport=marker)
    )


def test_frames_from_the_fabric_with_a_local_vms_or_the_routers_mac_are_dropped(guarded):
    a1, a3 = guarded.vms["a1"], guarded.vms["a3"]
    inject = fabric_injector(guarded)
    try:
        with capture(guarded, "a3-udp", a3.ns, "eth0", "udp port 5555") as pcap:
            send_frames(
                guarded,
                guarded.ns_name("tor"),
                [udp_to(a3, a1.mac), udp_to(a3, ROUTER_MAC), udp_to(a3, STRANGER)],
                iface=inject,
            )
            wait_for(
                lambda: any(p.src == STRANGER for p in rdpcap(pcap)),
                5,
                what="the frame of a remote VM (the positive control)",
            )
        sources = {p.src for p in rdpcap(pcap)}
        assert sources == {STRANGER}, sources
    finally:
        guarded.announce(a1, "garp", wait=True)  # the switch learns a1's port again
    wait_for(
        lambda: ping(guarded.vms["a2"].ns, a1.ip, count=1, wait=0.3).received,
        5,
        what="a1 reachable across the fabric again",
    )


def test_routed_frames_from_the_fabric_never_leave_on_the_uplink(guarded):
    a3 = guarded.vms["a3"]
    inject = fabric_injector(guarded)
    routed = udp_to(a3, STRANGER, dst_mac=ROUTER_MAC, dst_ip=SERVER_IP, marker=5556)
    with capture(guarded, "uplink-5556", guarded.ext_ns, "hv1", "udp", "in") as pcap:
        send_frames(guarded, guarded.ns_name("tor"), [routed], iface=inject)
        emit_udp(guarded, a3, SERVER_IP, 9)
        wait_for(
            lambda: any(
                IP in p and p[IP].dst == SERVER_IP and p[UDP].dport == 9 for p in rdpcap(pcap)
            ),
            5,
            what="a3's own datagram to the server on the uplink (positive control)",
        )
    assert not [p for p in rdpcap(pcap) if UDP in p and p[UDP].dport == 5556]


def test_gateway_arp_from_the_fabric_is_not_answered(guarded):
    inject = fabric_injector(guarded)
    tor = guarded.ns_name("tor")

    def who_has(ip: str) -> bytes:
        return bytes(
            Ether(src=STRANGER, dst="ff:ff:ff:ff:ff:ff")
            / Dot1Q(vlan=101)
            / ARP(op=1, hwsrc=STRANGER, psrc="10.1.0.99", pdst=ip)
        )

    with capture(guarded, "injp-arp", tor, inject, "arp") as pcap:
        send_frames(guarded, tor, [who_has("10.1.0.1"), who_has("10.1.0.13")], iface=inject)
        wait_for(
            lambda: any(
                ARP in p and p[ARP].op == 2 and p[ARP].psrc == "10.1.0.13" for p in rdpcap(pcap)
            ),
            5,
            what="a3's ARP reply (positive control)",
        )
    replies = [p[ARP].psrc for p in rdpcap(pcap) if ARP in p and p[ARP].op == 2]
    assert "10.1.0.1" not in replies


def test_nothing_of_the_external_side_appears_on_the_fabric(guarded):
    """A FIP goes live on hv1 (probes, GARPs), PAT and FIP traffic flow: the fabric sees
    none of it (no FIP, SNAT IP or their MACs). a3's own GARP does cross (control)."""
    a1, a3 = guarded.vms["a1"], guarded.vms["a3"]
    tor = guarded.ns_name("tor")
    with capture(guarded, "fabric-all", tor, "br0") as pcap:
        guarded.hosts["hv1"].vsctl("set", "Interface", a1.tap, f'external_ids:ovsnat-fip="{FIP}"')
        wait_for(
            lambda: ping(guarded.srv_ns, FIP, count=1, wait=0.2).received, 5, what="a1's FIP live"
        )
        emit_udp(guarded, a3, SERVER_IP, 9)
        guarded.announce(a3, "garp", wait=True)
        wait_for(
            lambda: any(ARP in p and p[ARP].psrc == a3.ip for p in rdpcap(pcap)),
            5,
            what="a3's GARP on the fabric (positive control)",
        )
    external = [
        p
        for p in rdpcap(pcap)
        if (
            ARP in p
            and (p[ARP].psrc.startswith("203.0.113.") or p[ARP].pdst.startswith("203.0.113."))
        )
        or (IP in p and (p[IP].src.startswith("203.0.113.") or p[IP].dst.startswith("203.0.113.")))
        or p.src.startswith("02:5a:")
        or p.dst.startswith("02:5a:")
    ]
    assert not external, [p.summary() for p in external]
    guarded.hosts["hv1"].vsctl("remove", "Interface", a1.tap, "external_ids", "ovsnat-fip")
