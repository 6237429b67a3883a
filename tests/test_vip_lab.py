"""A keepalived VIP across two hypervisors: a (hv1) and b (hv2) have the VIP as an allowed
address pair with a FIP on it; whoever announces the VIP (a VRRP master's gratuitous ARP)
gets it, from the network across the fabric and from outside through the FIP, and the other
host lets go of it (it hears the ARP over the fabric). c (hv2) is the network's client. a's
server listens on 7001, b's on 7002: a connection tells who answered."""

from __future__ import annotations

import pytest

from ovsnat.lab import scenario
from ovsnat.lab.fabric import TENANT_A
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import Vm
from ovsnat.lab.traffic import (
    capture,
    captured,
    ping,
    send_frames,
    start_server,
    tcp_connect,
    wait_captured,
)

pytestmark = pytest.mark.lab

VIP, VIP_FIP = "10.1.0.250", "203.0.113.60"
GROUP = "in-web,in,4,tcp,7001-7002,-;in-vms,in,4,any,-,p:10.1.0.0/24;out,out,4,any,-,-"


@pytest.fixture(scope="module")
def lab(module_lab):
    return build(module_lab)


def build(lab):
    lab.add_host("hv1", fabric=True)
    lab.add_host("hv2", fabric=True)
    pair = {"ovsnat-sg": "web", "ovsnat-allowed-pairs": VIP, "ovsnat-pair-fips": f"{VIP}={VIP_FIP}"}
    for name, host, n, keys in (
        ("a", "hv1", 11, pair),
        ("b", "hv2", 12, pair),
        ("c", "hv2", 13, {}),
    ):
        ip = f"10.1.0.{n}"
        mac = f"02:00:0a:01:00:{n:02x}"
        lab.add_vm(name, host, ip, mac, {"ovsnat-fixed-ip": ip, **keys}, net=TENANT_A)
    for host in ("hv1", "hv2"):
        lab.hosts[host].vsctl("br-set-external-id", "br-int", "ovsnat-sg-web", GROUP)
    scenario.start_controller(lab, "hv1", "203.0.113.11", fabric_port="fabric")
    scenario.start_controller(lab, "hv2", "203.0.113.21", fabric_port="fabric")
    for name, port in (("a", 7001), ("b", 7002)):
        start_server(lab, f"{name}-{port}", lab.vms[name].ns, "tcp", port)
    wait_for(
        lambda: ping(lab.vms["c"].ns, "10.1.0.11", count=1, wait=0.3).received,
        15,
        what="east-west across the fabric",
    )
    return lab


def hold(lab, name: str) -> None:
    vm = lab.vms[name]
    run(["ip", "-n", vm.ns, "addr", "add", f"{VIP}/32", "dev", "eth0"], check=False)
    lab.announce(Vm(vm.name, vm.ns, VIP, vm.mac, vm.host, vm.tap), wait=True, count=1)


def release(lab, name: str) -> None:
    run(["ip", "-n", lab.vms[name].ns, "addr", "del", f"{VIP}/32", "dev", "eth0"], check=False)


def reaches(lab, ns: str, dst: str, port: int) -> bool:
    return tcp_connect(lab, ns, dst, port, timeout=0.5).ok


def test_the_vip_and_its_fip_follow_the_vm_that_announces_it(lab):
    c = lab.vms["c"].ns
    for holder, other, port in (("a", "b", 7001), ("b", "a", 7002), ("a", "b", 7001)):
        release(lab, other)
        hold(lab, holder)
        wait_for(lambda: reaches(lab, c, VIP, port), 2, what=f"the VIP on {holder} from c")
        wait_for(
            lambda: reaches(lab, lab.srv_ns, VIP_FIP, port), 3, what=f"the VIP's FIP on {holder}"
        )


def test_the_holder_never_answers_the_vip_fips_announcement_by_another_host(lab):
    """The new holder's host announces the VIP's FIP with a GARP from the FIP's own MAC. The
    host the VIP left may not have heard of the move yet (its fabric ARP is still on the
    way): it must not answer that GARP, or its answer, sourced from the FIP's MAC, pulls the
    external switch back to it (seen as a VIP failover flake under load). Positive control:
    the same host answers an ordinary request for the FIP, before and after, in one capture."""
    from scapy.all import ARP, Ether

    release(lab, "b")
    hold(lab, "a")
    wait_for(lambda: reaches(lab, lab.srv_ns, VIP_FIP, 7001), 3, what="the VIP's FIP on a")
    router = run(["ip", "-n", lab.out_ns, "-br", "link", "show", "eth0"]).stdout.split()[2]

    def request(tag: int) -> bytes:
        return bytes(
            Ether(src=router, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=router, psrc=f"203.0.113.{tag}", pdst=VIP_FIP)
        )

    def answers(pcap: str, to: str) -> list:
        return captured(pcap, lambda p: ARP in p and p[ARP].op == 2 and p[ARP].pdst == to)

    with capture(lab, "vip-arp-hv1", lab.ext_ns, "hv1", "arp", "in") as pcap:
        send_frames(lab, lab.out_ns, [request(2)])
        fip_mac = wait_captured(
            pcap, lambda p: ARP in p and p[ARP].op == 2 and p[ARP].pdst == "203.0.113.2"
        )[0][ARP].hwsrc
        garp = Ether(src=router, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, hwsrc=fip_mac, psrc=VIP_FIP, pdst=VIP_FIP
        )
        send_frames(lab, lab.out_ns, [bytes(garp), request(3)])
        wait_captured(pcap, lambda p: ARP in p and p[ARP].op == 2 and p[ARP].pdst == "203.0.113.3")
        assert answers(pcap, VIP_FIP) == [], "hv1 answered another host's GARP for the FIP"
