"""Security groups and port security with real packets on one hypervisor, the keys written
straight into OVSDB as the contract says (any tool may write them; the OpenStack lab's tests
drive the same through Neutron's API).

vm a (FIP) and vm b are in group `default` (Neutron's: ingress from the group's members,
egress open); vm c is in group `other` (egress only). Each case changes the keys it needs and
puts them back; each "nothing arrives" has its positive control in the same test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from scapy.all import ICMP, IP, UDP, Ether

from ovsnat.lab import scenario
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import SERVER_GW, SERVER_IP, Vm
from ovsnat.lab.traffic import (
    background_tcp,
    capture,
    captured,
    ping,
    send_frames,
    start_server,
    tcp_connect,
    tcp_established,
    wait_captured,
)

pytestmark = pytest.mark.lab

SNAT, FIP = "203.0.113.11", "203.0.113.20"
DEFAULT = "d-in,in,4,any,-,g:default;d-out,out,4,any,-,-"
SSH_FROM_SERVERS = "d-ssh,in,4,tcp,22,p:198.51.100.0/24"


@pytest.fixture(scope="module")
def lab(module_lab):
    lab = module_lab
    lab.add_host("hv1")
    vms = (
        ("a", "10.0.0.21", {"ovsnat-fip": FIP, "ovsnat-sg": "default"}),
        ("b", "10.0.0.22", {"ovsnat-sg": "default"}),
        ("c", "10.0.0.23", {"ovsnat-sg": "other"}),
    )
    for name, ip, keys in vms:
        mac = f"02:00:0a:00:00:{int(ip.rsplit('.', 1)[1]):02x}"
        lab.add_vm(name, "hv1", ip, mac, {"ovsnat-fixed-ip": ip, **keys})
    bridge(lab, default=DEFAULT, other="o-out,out,4,any,-,-")
    members(lab, "default", "10.0.0.21,10.0.0.22")
    scenario.start_controller(lab, "hv1", SNAT)
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    for name in ("a", "b"):
        for port in (22, 23):
            start_server(lab, f"{name}-{port}", lab.vms[name].ns, "tcp", port)
    wait_for(
        lambda: tcp_connect(lab, lab.vms["a"].ns, SERVER_IP, 8080, timeout=0.5).ok,
        15,
        what="vm a to reach the server",
    )
    return lab


def bridge(lab, **groups: str) -> None:
    for gid, rules in groups.items():
        lab.hosts["hv1"].vsctl("br-set-external-id", "br-int", f"ovsnat-sg-{gid}", rules)


def members(lab, gid: str, ips: str) -> None:
    lab.hosts["hv1"].vsctl("br-set-external-id", "br-int", f"ovsnat-sgm-{gid}", ips)


def port_key(lab, vm: str, key: str, value: str | None) -> None:
    iface = lab.vms[vm].tap
    if value is None:
        lab.hosts["hv1"].vsctl("remove", "Interface", iface, "external_ids", key)
    else:
        lab.hosts["hv1"].vsctl("set", "Interface", iface, f"external_ids:{key}={value}")


def connects(lab, src: str, dst: str, port: int) -> bool:
    ns = lab.srv_ns if src == "srv" else lab.vms[src].ns
    return tcp_connect(lab, ns, dst, port, timeout=0.5).ok


def within(seconds: float, check, what: str) -> float:
    """Poll until check() holds; how long it took (the deadline is the assertion)."""
    t0 = time.monotonic()
    wait_for(check, seconds, what=what, interval=0.05)
    return time.monotonic() - t0


def test_the_default_group_lets_everything_out_and_nothing_in_from_outside(lab):
    assert tcp_connect(lab, lab.vms["a"].ns, SERVER_IP, 8080).peer_ip == FIP
    assert tcp_connect(lab, lab.vms["b"].ns, SERVER_IP, 8080).peer_ip == SNAT
    assert not connects(lab, "srv", FIP, 22)
    assert ping(lab.srv_ns, FIP, count=2).received == 0
    # Positive control: a rule for SSH from the servers' prefix lets exactly that in.
    bridge(lab, default=f"{DEFAULT};{SSH_FROM_SERVERS}")
    try:
        took = within(2, lambda: connects(lab, "srv", FIP, 22), "SSH through the FIP")
        assert took < 1.5, took
        assert not connects(lab, "srv", FIP, 23)
        assert ping(lab.srv_ns, FIP, count=2).received == 0
    finally:
        bridge(lab, default=DEFAULT)
    within(2, lambda: not connects(lab, "srv", FIP, 22), "SSH refused again")


def test_members_of_the_group_reach_each_other_and_others_do_not(lab):
    assert connects(lab, "b", "10.0.0.21", 22)
    assert connects(lab, "b", "10.0.0.21", 23)
    assert connects(lab, "a", "10.0.0.22", 22)
    assert ping(lab.vms["b"].ns, "10.0.0.21", count=2).received == 2
    # c is in another group: its egress is open, a's ingress does not know it.
    assert connects(lab, "c", SERVER_IP, 8080)  # positive control: c works
    assert not connects(lab, "c", "10.0.0.21", 22)
    # A member added later (c's address into default's members) gets in within 1 s.
    members(lab, "default", "10.0.0.21,10.0.0.22,10.0.0.23")
    try:
        within(1.5, lambda: connects(lab, "c", "10.0.0.21", 22), "c let in as a member")
    finally:
        members(lab, "default", "10.0.0.21,10.0.0.22")
    within(2, lambda: not connects(lab, "c", "10.0.0.21", 22), "c out again")


def test_a_removed_rule_ends_the_session_it_allowed_and_no_other(lab):
    bridge(lab, default=f"{DEFAULT};{SSH_FROM_SERVERS}")
    within(2, lambda: connects(lab, "srv", FIP, 22), "SSH through the FIP")
    outside = background_tcp(lab, lab.srv_ns, FIP, 22, hold=6)
    inside = background_tcp(lab, lab.vms["b"].ns, "10.0.0.21", 22, hold=6)
    wait_for(lambda: tcp_established(lab.srv_ns, FIP, 22) == 1, 5, what="outside session")
    wait_for(
        lambda: tcp_established(lab.vms["b"].ns, "10.0.0.21", 22) == 1, 5, what="inside session"
    )
    bridge(lab, default=DEFAULT)
    out, inn = outside.result(), inside.result()
    assert "BROKEN" in out, out
    assert "HELD" in inn, inn


def test_port_security_off_lets_any_source_out_of_that_port_only(lab):
    # c sends from an address that is not its own: dropped with port security on...
    c = lab.vms["c"]
    run(["ip", "-n", c.ns, "addr", "add", "10.0.0.99/32", "dev", "eth0"])
    try:
        assert not _spoof_leaves(lab, c.ns, "10.0.0.99")
        assert connects(lab, "c", SERVER_IP, 8080)  # positive control
        port_key(lab, "c", "ovsnat-port-security", "off")
        port_key(lab, "c", "ovsnat-sg", None)
        within(2, lambda: _spoof_leaves(lab, c.ns), "c's other source leaving with security off")
        assert not _spoof_leaves(lab, lab.vms["b"].ns, "10.0.0.98", add=True)  # b still checked
    finally:
        port_key(lab, "c", "ovsnat-port-security", None)
        port_key(lab, "c", "ovsnat-sg", "other")
        run(["ip", "-n", c.ns, "addr", "del", "10.0.0.99/32", "dev", "eth0"], check=False)


def _spoof_leaves(lab, ns: str, src: str = "10.0.0.99", add: bool = False) -> bool:
    """A UDP datagram from `src` reaches the server (seen in a capture there)."""
    if add:
        run(["ip", "-n", ns, "addr", "add", f"{src}/32", "dev", "eth0"], check=False)
    try:
        with capture(lab, "spoof", lab.srv_ns, "eth0", "udp port 9999", "in") as pcap:
            for _ in range(3):
                run(
                    [
                        lab.python()[0],
                        "-c",
                        "import socket,sys; s=socket.socket(2,2); s.bind((sys.argv[1],0)); "
                        "s.sendto(b'x',(sys.argv[2],9999))",
                        src,
                        SERVER_IP,
                    ],
                    ns=ns,
                )
                time.sleep(0.1)
        return bool(captured(pcap))
    finally:
        if add:
            run(["ip", "-n", ns, "addr", "del", f"{src}/32", "dev", "eth0"], check=False)


def test_an_administratively_down_port_sends_and_receives_nothing(lab):
    assert ping(lab.vms["b"].ns, "10.0.0.21", count=2).received == 2
    port_key(lab, "a", "ovsnat-admin", "down")
    try:
        within(
            1.5,
            lambda: ping(lab.vms["b"].ns, "10.0.0.21", count=1, wait=0.3).received == 0,
            "a cut off",
        )
        assert not connects(lab, "a", SERVER_IP, 8080)
        assert connects(lab, "b", SERVER_IP, 8080)  # positive control: b unaffected
    finally:
        port_key(lab, "a", "ovsnat-admin", None)
    within(3, lambda: ping(lab.vms["b"].ns, "10.0.0.21", count=1, wait=0.3).received == 1, "a back")


def test_an_allowed_address_pair_is_reachable_on_its_holder(lab):
    a = lab.vms["a"]
    run(["ip", "-n", a.ns, "addr", "add", "10.0.0.100/32", "dev", "eth0"])
    try:
        assert ping(lab.vms["b"].ns, "10.0.0.100", count=1, wait=0.5).received == 0
        port_key(lab, "a", "ovsnat-allowed-pairs", "10.0.0.100")
        within(
            2,
            lambda: ping(lab.vms["b"].ns, "10.0.0.100", count=1, wait=0.3).received == 1,
            "the pair's address reachable",
        )
    finally:
        port_key(lab, "a", "ovsnat-allowed-pairs", None)
        run(["ip", "-n", a.ns, "addr", "del", "10.0.0.100/32", "dev", "eth0"], check=False)


def test_icmp_errors_through_the_fip_reach_a_filtered_vm_as_related(lab):
    """The controller un-NATs an error's quoted header and sends it through the port's
    ingress rules, where it is related to the connection it quotes; the default group lets
    no ICMP in from outside otherwise (the ping from outside above)."""
    a = lab.vms["a"]
    out = ping(a.ns, SERVER_IP, count=1, ttl=2, wait=1).output
    assert "From 203.0.113.1" in out and "Time to live exceeded" in out, out
    run(["ip", "-n", a.ns, "route", "flush", "cache"])
    first = ping(a.ns, SERVER_IP, count=2, size=1450, df=True, wait=0.5)
    assert "mtu = 1400" in first.output or "mtu=1400" in first.output, first.output


def test_a_forged_icmp_error_through_the_fip_is_dropped(lab):
    """An error quoting no connection of the port's is invalid in its zone: the controller
    translates it, the port's ingress rules drop it (a real one passes: the test above)."""

    a = lab.vms["a"]
    ping(lab.srv_ns, SERVER_GW, count=1)  # the server's neighbour entry for its gateway
    gw_mac = run(["ip", "-n", lab.srv_ns, "neigh", "show", SERVER_GW]).stdout.split()[4]
    srv_mac = run(["cat", "/sys/class/net/eth0/address"], ns=lab.srv_ns).stdout.strip()
    quoted = IP(src=FIP, dst=SERVER_IP) / UDP(sport=4444, dport=5555)
    forged = Ether(src=srv_mac, dst=gw_mac) / IP(src=SERVER_IP, dst=FIP) / ICMP(type=3, code=3)
    with capture(lab, "forged", a.ns, "eth0", "icmp", "in") as pcap:
        send_frames(lab, lab.srv_ns, [bytes(forged / bytes(quoted))], count=3)
        # Positive control on the same capture: a real error reaches the VM.
        assert "Time to live exceeded" in ping(a.ns, SERVER_IP, count=1, ttl=2, wait=1).output
    errors = captured(pcap, lambda p: ICMP in p and p[ICMP].type in (3, 11))
    assert [p[ICMP].type for p in errors] == [11], errors


def trace(lab, *args: str) -> str:
    host = lab.hosts["hv1"]
    conf = os.path.join(host.rundir, "ovsnat.conf")
    out = subprocess.run(
        [sys.executable, "-m", "ovsnat.cli", "trace", *args, "--config", conf],
        capture_output=True,
        text=True,
        env=dict(os.environ, **host.ovs.env),
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_trace_names_the_port_whose_groups_refuse_and_the_rule_that_allows(lab):
    refused = trace(lab, "outside", FIP, "tcp", "22")
    assert "dropped in table 72 (sg_in)" in refused, refused
    assert "refused by the security groups of port tapa" in refused, refused
    bridge(lab, default=f"{DEFAULT};{SSH_FROM_SERVERS}")
    try:
        within(2, lambda: connects(lab, "srv", FIP, 22), "SSH through the FIP")
        allowed = trace(lab, "outside", FIP, "tcp", "22")
        assert "leaves port tapa as 198.51.100.10:40000 -> 10.0.0.21:22" in allowed, allowed
        assert "[security group default rule d-ssh]" in allowed, allowed
    finally:
        bridge(lab, default=DEFAULT)


def test_a_vip_moves_between_two_ports_with_its_fip(lab):
    """keepalived's way on one host: a and b both have the VIP as an allowed pair (and a FIP
    on it); whoever announces it (a master's gratuitous ARP) gets it, from its network and
    through the FIP; c, without the pair, cannot take it (its own traffic works: the
    control). a's server listens on 7001, b's on 7002: a connection tells who answered."""
    vip, vip_fip = "10.0.0.100", "203.0.113.30"
    for name, port in (("a", 7001), ("b", 7002)):
        start_server(lab, f"{name}-{port}", lab.vms[name].ns, "tcp", port)
    bridge(lab, default=f"{DEFAULT};v,in,4,tcp,7001-7002,p:198.51.100.0/24")
    for name in ("a", "b"):
        port_key(lab, name, "ovsnat-allowed-pairs", vip)
        port_key(lab, name, "ovsnat-pair-fips", f"{vip}={vip_fip}")
    try:
        for holder, other, port in (("a", "b", 7001), ("b", "a", 7002)):
            unhold(lab, other, vip)
            hold(lab, holder, vip)
            within(2, lambda: connects(lab, other, vip, port), f"the VIP on {holder}")
            within(3, lambda: connects(lab, "srv", vip_fip, port), f"its FIP on {holder}")
        unhold(lab, "b", vip)
        assert connects(lab, "c", SERVER_IP, 8080)  # c works
        hold(lab, "c", vip)
        assert not _spoof_leaves(lab, lab.vms["c"].ns, vip)  # c has no pair: not its VIP
    finally:
        for name in ("a", "b"):
            port_key(lab, name, "ovsnat-pair-fips", None)
            port_key(lab, name, "ovsnat-allowed-pairs", None)
        for name in ("a", "b", "c"):
            unhold(lab, name, vip)
        bridge(lab, default=DEFAULT)


def hold(lab, name: str, vip: str) -> None:
    """The VM takes the VIP and announces it, as a VRRP master does."""
    vm = lab.vms[name]
    run(["ip", "-n", vm.ns, "addr", "add", f"{vip}/32", "dev", "eth0"], check=False)
    lab.announce(Vm(vm.name, vm.ns, vip, vm.mac, vm.host, vm.tap), wait=True, count=1)


def unhold(lab, name: str, vip: str) -> None:
    run(["ip", "-n", lab.vms[name].ns, "addr", "del", f"{vip}/32", "dev", "eth0"], check=False)


def test_a_stateless_group_lets_replies_out_only_by_its_own_rules(lab):
    """b in a stateless group allowing TCP 22 in and nothing out: a's connection reaches it
    but b's answer does not leave; a rule letting everything out completes it."""
    assert connects(lab, "a", "10.0.0.22", 22)  # control: b in default (stateful)
    bridge(lab, sl="stateless;s-in,in,4,tcp,22,-")
    port_key(lab, "b", "ovsnat-sg", "sl")
    try:
        within(2, lambda: not connects(lab, "a", "10.0.0.22", 22), "b's answers held back")
        bridge(lab, sl="stateless;s-in,in,4,tcp,22,-;s-out,out,4,any,-,-")
        within(2, lambda: connects(lab, "a", "10.0.0.22", 22), "b's answers let out")
        assert not connects(lab, "a", "10.0.0.22", 23)  # still only 22 in
    finally:
        port_key(lab, "b", "ovsnat-sg", "default")


def test_a_members_address_from_outside_is_not_a_member(lab):
    """A frame from the external segment with a remote-group member's fixed IP as source is
    spoofed (a member reaches a port from inside): the member rule does not let it in.
    Control in the same capture: a rule for that port from the outside's prefix."""
    out_mac = json.loads(run(["ip", "-n", lab.out_ns, "-j", "link", "show", "eth0"]).stdout)
    fip_mac = "02:5a:" + ":".join(f"{int(b):02x}" for b in FIP.split("."))

    def frame(src: str, dport: int) -> bytes:
        ip = IP(src=src, dst=FIP) / UDP(sport=5555, dport=dport) / (b"x" * 20)
        return bytes(Ether(src=out_mac[0]["address"], dst=fip_mac) / ip)

    bridge(lab, default=f"{DEFAULT};d-x,in,4,udp,7777,p:198.51.100.0/24")
    try:
        with capture(lab, "member-spoof", lab.vms["a"].ns, "eth0", "udp", "in") as pcap:
            send_frames(lab, lab.out_ns, [frame("10.0.0.22", 9999)], count=3)
            send_frames(lab, lab.out_ns, [frame("198.51.100.77", 7777)], count=3)
            wait_captured(pcap, lambda p: UDP in p and p[UDP].dport == 7777, 5)
        got = {(p[IP].src, p[UDP].dport) for p in captured(pcap, lambda p: UDP in p)}
        assert got == {("198.51.100.77", 7777)}, got
    finally:
        bridge(lab, default=DEFAULT)
