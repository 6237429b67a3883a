"""Static 1:1 NAT and per-host PAT, proven with real packets through a real OVS.

The flows come from the compiler and are installed with `ovs-ofctl --bundle` (no controller),
so these tests judge the pipeline alone. Lab: hv1 runs vm1 (FIP 203.0.113.10), vm2 (PAT) and
vm3 (FIP 203.0.113.12); hv2 has a tiny PAT range (4 ports) for vm4; the server 198.51.100.10
sits behind the outside router 203.0.113.1.
"""

from __future__ import annotations

import pytest
from scapy.all import ARP, IP, TCP, UDP, Dot1Q, Ether, Raw, rdpcap

from ovsnat.compile.pipeline import CLASSIFY, EGRESS, INGRESS, PAT_GUARD, PAT_IN
from ovsnat.lab import scenario
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import (
    capture,
    captured,
    ping,
    send_frames,
    start_server,
    tcp_connect,
    udp_request,
    wait_captured,
)

FIP1, FIP3, SNAT1, SNAT2 = "203.0.113.10", "203.0.113.12", "203.0.113.11", "203.0.113.21"
pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def nat(module_lab):
    lab = module_lab
    lab.add_host("hv1")
    lab.add_host("hv2")
    lab.add_vm(
        "vm1",
        "hv1",
        "10.0.0.11",
        "02:00:0a:00:00:0b",
        {"ovsnat-fixed-ip": "10.0.0.11", "ovsnat-fip": FIP1},
    )
    lab.add_vm("vm2", "hv1", "10.0.0.12", "02:00:0a:00:00:0c", {"ovsnat-fixed-ip": "10.0.0.12"})
    lab.add_vm(
        "vm3",
        "hv1",
        "10.0.0.13",
        "02:00:0a:00:00:0d",
        {"ovsnat-fixed-ip": "10.0.0.13", "ovsnat-fip": FIP3},
    )
    lab.add_vm("vm4", "hv2", "10.0.0.14", "02:00:0a:00:00:0e", {"ovsnat-fixed-ip": "10.0.0.14"})
    scenario.program_with_ofctl(lab, "hv1", scenario.host_config(lab, "hv1", SNAT1))
    scenario.program_with_ofctl(
        lab,
        "hv2",
        scenario.host_config(lab, "hv2", SNAT2, snat_port_min=20000, snat_port_max=20003),
    )
    for proto in ("tcp", "udp"):
        start_server(lab, f"srv-{proto}", lab.srv_ns, proto, 8080)
        for vm in ("vm1", "vm2", "vm3"):
            start_server(lab, f"{vm}-{proto}", lab.vms[vm].ns, proto, 7000)
    return lab


def vm(lab, name):
    return lab.vms[name]


# --- static 1:1 NAT (floating IP) --------------------------------------------------------
def test_outside_reaches_vm1_through_its_fip(nat):
    assert ping(nat.srv_ns, FIP1).received == 3
    reply = tcp_connect(nat, nat.srv_ns, FIP1, 7000)
    assert reply.ok and reply.peer_ip == SERVER_IP, reply.line  # vm1 sees the real client
    reply = udp_request(nat, nat.srv_ns, FIP1, 7000)
    assert reply.ok and reply.peer_ip == SERVER_IP, reply.line


def test_vm1_reaches_outside_and_the_far_end_sees_its_fip(nat):
    assert ping(vm(nat, "vm1").ns, SERVER_IP).received == 3
    for proto in (tcp_connect, udp_request):
        reply = proto(nat, vm(nat, "vm1").ns, SERVER_IP, 8080)
        assert reply.ok and reply.peer_ip == FIP1, reply.line


def test_arp_for_a_fip_is_answered_on_the_uplink_with_the_fips_own_mac(nat):
    run(["ip", "-n", nat.out_ns, "neigh", "flush", "dev", "eth0"])
    assert ping(nat.out_ns, FIP1, count=1).received == 1
    neigh = run(["ip", "-n", nat.out_ns, "neigh", "show", FIP1]).stdout
    assert "02:5a:cb:00:71:0a" in neigh, neigh
    assert ping(nat.out_ns, SNAT1, count=1).received == 0  # nothing answers ICMP on SNAT IP
    neigh = run(["ip", "-n", nat.out_ns, "neigh", "show", SNAT1]).stdout
    assert "02:5a:cb:00:71:0b" in neigh, neigh


def test_arp_for_a_fip_from_a_vm_is_not_answered(nat):
    """Positive control: a request for the VMs' gateway, sent after the ones for the FIP, is
    answered into the same capture (only replies for the FIP count: vm2's kernel may refresh
    its own gateway entry meanwhile)."""
    vm2 = vm(nat, "vm2")
    request = Ether(src=vm2.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=vm2.mac, psrc=vm2.ip, pdst=FIP1
    )
    control = Ether(src=vm2.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=vm2.mac, psrc=vm2.ip, pdst="10.0.0.1"
    )
    with capture(nat, "arp-vm2", vm2.ns, "eth0", "arp") as pcap:
        send_frames(nat, vm2.ns, [bytes(request)], count=3)
        send_frames(nat, vm2.ns, [bytes(control)])
        wait_captured(
            pcap,
            lambda p: ARP in p and p[ARP].op == 2 and p[ARP].psrc == "10.0.0.1",
            what="the gateway's ARP reply (control)",
        )
    replies = captured(pcap, lambda p: ARP in p and p[ARP].op == 2 and p[ARP].psrc == FIP1)
    assert replies == []


# --- PAT -----------------------------------------------------------------------------------
def test_vm2_without_fip_goes_out_through_pat(nat):
    host = nat.hosts["hv1"]
    for proto in (tcp_connect, udp_request):
        reply = proto(nat, vm(nat, "vm2").ns, SERVER_IP, 8080)
        assert reply.ok and reply.peer_ip == SNAT1, reply.line
        assert 20000 <= reply.peer_port <= 29999, reply.line
    assert ping(vm(nat, "vm2").ns, SERVER_IP).received == 3
    conns = host.appctl("dpctl/dump-conntrack", "zone=65000")
    assert "src=10.0.0.12" in conns and f"dst={SNAT1}" in conns, conns
    assert "icmp" in conns and "tcp" in conns and "udp" in conns, conns


def test_unsolicited_inbound_to_the_snat_ip_is_dropped(nat):
    """Positive control: pat_in's default drop counted at least the SYN and the 3 datagrams
    (so they reached the host); >=, since other unsolicited packets would count too."""
    before = scenario.flow_packets(nat, "hv1", PAT_IN, "priority=0")
    reply = tcp_connect(nat, nat.srv_ns, SNAT1, 20000, timeout=1)
    assert not reply.ok
    reply = udp_request(nat, nat.srv_ns, SNAT1, 25000, timeout=0.5)
    assert not reply.ok
    assert scenario.counter_reaches(nat, "hv1", PAT_IN, before + 4, "priority=0") >= before + 4


def test_inbound_to_a_vm_without_fip_is_dropped(nat):
    """Even when the outside routes the internal network at this host's FIP or SNAT MAC.
    Positive control: ingress's default drop counts at least the 2 pings and the SYN, so
    they did reach the host (other traffic may add to it, hence >=)."""
    for via in (SNAT1, FIP1):
        run(["ip", "-n", nat.out_ns, "route", "replace", "10.0.0.0/24", "via", via])
        try:
            before = scenario.flow_packets(nat, "hv1", INGRESS, "priority=0 ")
            assert ping(nat.out_ns, vm(nat, "vm2").ip, count=2, wait=0.5).received == 0
            assert not tcp_connect(nat, nat.out_ns, vm(nat, "vm2").ip, 7000, timeout=1).ok
            assert (
                scenario.counter_reaches(nat, "hv1", INGRESS, before + 3, "priority=0 ")
                >= before + 3
            ), via
        finally:
            run(["ip", "-n", nat.out_ns, "route", "del", "10.0.0.0/24"])


def test_fip_beats_pat_for_the_same_vm(nat):
    reply = tcp_connect(nat, vm(nat, "vm3").ns, SERVER_IP, 8080)
    assert reply.ok and reply.peer_ip == FIP3, reply.line
    # Positive control: a PAT VM's connection, made now, is in the same dump.
    assert tcp_connect(nat, vm(nat, "vm2").ns, SERVER_IP, 8080).peer_ip == SNAT1
    conns = nat.hosts["hv1"].appctl("dpctl/dump-conntrack", "zone=65000")
    assert "src=10.0.0.12" in conns, conns
    assert "src=10.0.0.13" not in conns, conns


# --- spoofing and tagging -----------------------------------------------------------------
def _payload(p) -> bytes:
    return bytes(p[Raw].load) if Raw in p else b""


def _outside_sees(nat, name, frames, src_ns, control: bytes, bpf="udp port 9999"):
    """Send frames (3 rounds) then one round of `control`, a frame that must get out; wait
    for the control at the server, so the capture holds everything sent before it."""
    with capture(nat, name, nat.srv_ns, "eth0", bpf) as pcap:
        send_frames(nat, src_ns, frames, count=3)
        send_frames(nat, src_ns, [control])
        wait_captured(
            pcap,
            lambda p: _payload(p) == b"control-" + name.encode(),
            what="the control frame at the server",
        )
    return rdpcap(pcap)


def _control(vm, name: str) -> bytes:
    return bytes(
        Ether(src=vm.mac, dst=scenario.ROUTER_MAC)
        / IP(src=vm.ip, dst=SERVER_IP)
        / UDP(sport=4449, dport=9999)
        / f"control-{name}".encode()
    )


def test_spoofed_source_ip_or_mac_from_a_vm_is_dropped(nat):
    vm2 = vm(nat, "vm2")
    good = (
        Ether(src=vm2.mac, dst=scenario.ROUTER_MAC)
        / IP(src=vm2.ip, dst=SERVER_IP)
        / UDP(sport=4444, dport=9999)
        / b"ok"
    )
    spoof_ip = (
        Ether(src=vm2.mac, dst=scenario.ROUTER_MAC)
        / IP(src="10.0.0.11", dst=SERVER_IP)
        / UDP(sport=4445, dport=9999)
        / b"spoof-ip"
    )
    spoof_mac = (
        Ether(src="02:00:0a:00:00:0b", dst=scenario.ROUTER_MAC)
        / IP(src=vm2.ip, dst=SERVER_IP)
        / UDP(sport=4446, dport=9999)
        / b"spoof-mac"
    )
    fip_src = (
        Ether(src=vm2.mac, dst=scenario.ROUTER_MAC)
        / IP(src=FIP1, dst=SERVER_IP)
        / UDP(sport=4447, dport=9999)
        / b"spoof-fip"
    )
    seen = _outside_sees(
        nat,
        "spoof",
        [bytes(f) for f in (good, spoof_ip, spoof_mac, fip_src)],
        vm2.ns,
        _control(vm2, "spoof"),
    )
    assert [p.summary() for p in seen if _payload(p).startswith(b"spoof")] == []
    good_seen = [p for p in seen if _payload(p) == b"ok"]
    assert len(good_seen) == 3, [p.summary() for p in seen]  # all 3 copies of `good`
    sports = {p[UDP].sport for p in good_seen}
    assert sports <= set(range(20000, 30000)), sports  # translated by PAT


def test_vlan_tagged_frame_from_a_vm_is_dropped(nat):
    """The tagged frames never get out (the untagged control sent after them does), and
    classify's default drop counted at least them (other traffic may add to it)."""
    vm2 = vm(nat, "vm2")
    tagged = (
        Ether(src=vm2.mac, dst=scenario.ROUTER_MAC)
        / Dot1Q(vlan=5)
        / IP(src=vm2.ip, dst=SERVER_IP)
        / UDP(sport=4450, dport=9999)
        / b"tagged"
    )
    before = scenario.flow_packets(nat, "hv1", CLASSIFY, "priority=0 ")
    seen = _outside_sees(nat, "vlan", [bytes(tagged)], vm2.ns, _control(vm2, "vlan"))
    assert [p.summary() for p in seen if _payload(p) == b"tagged"] == []
    assert scenario.counter_reaches(nat, "hv1", CLASSIFY, before + 3, "priority=0 ") >= before + 3


def test_vm_traffic_the_host_does_not_serve_is_dropped_and_counted(nat):
    """Multicast and the metadata address are dropped at classify, each by its own flow,
    and never reach the outside. The VMs' own background traffic (IPv6 solicitations) hits
    other drop flows of the same priority, so each flow is read alone and only required to
    have counted at least these frames; a normal request sent after them is the positive
    control that the capture saw everything sent before it."""
    vm2 = vm(nat, "vm2")
    frames = {
        "nw_dst=224.0.0.0/4": Ether(src=vm2.mac, dst="01:00:5e:00:00:fb")
        / IP(src=vm2.ip, dst="224.0.0.251")
        / UDP(sport=5353, dport=5353),
        "nw_dst=169.254.169.254": Ether(src=vm2.mac, dst=scenario.ROUTER_MAC)
        / IP(src=vm2.ip, dst="169.254.169.254")
        / UDP(sport=5000, dport=80),
    }
    before = {m: scenario.flow_packets(nat, "hv1", CLASSIFY, "priority=400", m) for m in frames}
    with capture(nat, "not-served", nat.ext_ns, "hv1", "udp") as pcap:
        send_frames(nat, vm2.ns, [bytes(f) for f in frames.values()])
        assert udp_request(nat, vm2.ns, SERVER_IP, 8080).peer_ip == SNAT1
        wait_for(
            lambda: any(IP in p and p[IP].dst == SERVER_IP for p in rdpcap(pcap)),
            5,
            what="the positive control in the capture",
        )
    for match, count in before.items():
        assert (
            scenario.counter_reaches(nat, "hv1", CLASSIFY, count + 1, "priority=400", match)
            >= count + 1
        ), match
    assert not [
        p for p in rdpcap(pcap) if IP in p and p[IP].dst in ("224.0.0.251", "169.254.169.254")
    ]


# --- east-west and hairpin -----------------------------------------------------------------
def test_vms_on_one_host_talk_directly_including_arp(nat):
    vm1, vm2 = vm(nat, "vm1"), vm(nat, "vm2")
    run(["ip", "-n", vm1.ns, "neigh", "flush", "dev", "eth0"])
    assert ping(vm1.ns, vm2.ip).received == 3
    reply = tcp_connect(nat, vm1.ns, vm2.ip, 7000)
    assert reply.ok and reply.peer_ip == vm1.ip, reply.line
    assert "02:00:0a:00:00:0c" in run(["ip", "-n", vm1.ns, "neigh", "show", vm2.ip]).stdout


def test_vm_answers_arp_only_for_itself_claiming_another_ip_is_dropped(nat):
    """Positive control: vm2's honest request for vm3, sent after the claims, reaches vm3."""
    vm2 = vm(nat, "vm2")
    claim = Ether(src=vm2.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=2, hwsrc=vm2.mac, psrc="10.0.0.11", pdst="10.0.0.13", hwdst="ff:ff:ff:ff:ff:ff"
    )
    control = Ether(src=vm2.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=vm2.mac, psrc=vm2.ip, pdst="10.0.0.13"
    )
    with capture(nat, "arp-claim", vm(nat, "vm3").ns, "eth0", "arp") as pcap:
        send_frames(nat, vm2.ns, [bytes(claim)], count=2)
        send_frames(nat, vm2.ns, [bytes(control)])
        wait_captured(
            pcap,
            lambda p: (
                ARP in p and p[ARP].op == 1 and p[ARP].psrc == vm2.ip and p[ARP].pdst == "10.0.0.13"
            ),
            what="vm2's request at vm3 (control)",
        )
    assert captured(pcap, lambda p: ARP in p and p[ARP].psrc == "10.0.0.11") == []


@pytest.mark.parametrize(
    "client,fip,seen_as",
    [
        ("vm1", FIP1, FIP1),  # a FIP VM to its own FIP
        ("vm3", FIP1, FIP3),  # a FIP VM to another local VM's FIP
        ("vm2", FIP1, SNAT1),  # a PAT VM to a local FIP: its source is translated too
    ],
)
def test_hairpin_to_a_local_fip(nat, client, fip, seen_as):
    for proto in (tcp_connect, udp_request):
        reply = proto(nat, vm(nat, client).ns, fip, 7000)
        assert reply.ok and reply.peer_ip == seen_as, reply.line
    assert ping(vm(nat, client).ns, fip).received == 3


# --- TTL -------------------------------------------------------------------------------------
def test_ttl_1_goes_no_further_than_the_nat_hop_and_is_counted(nat):
    """The TTL-1 flows (which send time exceeded back, tests/test_reliability.py) count at
    least these pings (>=: another VM's TTL-1 packet would count too); the TTL-3 pings after
    them are the positive control."""
    egress = scenario.flow_packets(nat, "hv1", EGRESS, "nw_ttl=1")
    assert ping(vm(nat, "vm1").ns, SERVER_IP, count=2, ttl=1, wait=0.5).received == 0
    assert ping(vm(nat, "vm2").ns, SERVER_IP, count=2, ttl=1, wait=0.5).received == 0
    assert scenario.counter_reaches(nat, "hv1", EGRESS, egress + 4, "nw_ttl=1") >= egress + 4
    ingress = scenario.flow_packets(nat, "hv1", INGRESS, "nw_ttl=1")
    # TTL 2 from the server: the router forwards it with TTL 1 to the FIP.
    assert ping(nat.srv_ns, FIP1, count=2, ttl=2, wait=0.5).received == 0
    assert scenario.counter_reaches(nat, "hv1", INGRESS, ingress + 2, "nw_ttl=1") >= ingress + 2
    # One more hop of TTL and it gets through: each routed path decrements exactly once.
    assert ping(nat.srv_ns, FIP1, count=1, ttl=3).received == 1
    assert ping(vm(nat, "vm1").ns, SERVER_IP, count=1, ttl=3).received == 1


# --- fragments --------------------------------------------------------------------------------
@pytest.mark.parametrize("client,expect_src", [("vm1", FIP1), ("vm2", SNAT1)])
def test_fragmented_udp_out_of_a_vm_arrives_intact_both_ways(nat, client, expect_src):
    reply = udp_request(nat, vm(nat, client).ns, SERVER_IP, 8080, size=3000)
    assert reply.ok and reply.peer_ip == expect_src, reply.line
    assert "len=3000" in reply.line and "reply_len=3000" in reply.line, reply.line


def test_fragmented_udp_from_outside_into_a_fip_arrives_intact_both_ways(nat):
    reply = udp_request(nat, nat.srv_ns, FIP1, 7000, size=3000)
    assert reply.ok and reply.peer_ip == SERVER_IP, reply.line
    assert "len=3000" in reply.line and "reply_len=3000" in reply.line, reply.line


# --- PAT exhaustion ---------------------------------------------------------------------------
def test_exhausted_pat_range_fails_new_connections_and_never_leaks_a_private_source(nat):
    vm4 = vm(nat, "vm4")
    guard = scenario.flow_packets(nat, "hv2", PAT_GUARD, "priority=0")
    with capture(nat, "leak", nat.out_ns, "eth0", "ip") as pcap:
        results = [tcp_connect(nat, vm4.ns, SERVER_IP, 8080, timeout=1) for _ in range(8)]
    ok = [r for r in results if r.ok]
    assert len(ok) == 4, [r.line for r in results]
    assert {r.peer_ip for r in ok} == {SNAT2}
    assert {r.peer_port for r in ok} == {20000, 20001, 20002, 20003}
    leaked = [p for p in rdpcap(pcap) if IP in p and p[IP].src.startswith("10.")]
    assert leaked == [], leaked[:3]
    # Positive control: the capture saw the 4 translated sessions go out.
    assert {
        p[TCP].sport
        for p in rdpcap(pcap)
        if TCP in p and p[IP].src == SNAT2 and p[IP].dst == SERVER_IP
    } == {20000, 20001, 20002, 20003}
    assert scenario.counter_reaches(nat, "hv2", PAT_GUARD, guard + 1, "priority=0") > guard


# --- ICMP errors through PAT ------------------------------------------------------------------
def test_icmp_errors_reach_a_pat_vm_translated_by_conntrack(nat):
    """Time exceeded and fragmentation needed from beyond the NAT hop are +rel to the PAT
    connection: conntrack restores the VM's address in both headers."""
    vm2 = vm(nat, "vm2")
    out = ping(vm2.ns, SERVER_IP, count=1, ttl=2, wait=1).output
    assert "From 203.0.113.1" in out and "Time to live exceeded" in out, out
    run(["ip", "-n", vm2.ns, "route", "flush", "cache"])
    first = ping(vm2.ns, SERVER_IP, count=2, size=1450, df=True, wait=0.5)
    assert "mtu = 1400" in first.output or "mtu=1400" in first.output, first.output
    assert "mtu 1400" in run(["ip", "-n", vm2.ns, "route", "get", SERVER_IP]).stdout
