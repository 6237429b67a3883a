"""Reliability and security with real packets: faults, garbage input, attacks, exhaustion,
ICMP errors through FIPs and bundle atomicity. docs/reliability.md lists every case."""

from __future__ import annotations

import json
import re
import sys
import time

import pytest
from scapy.all import ARP, IP, UDP, Ether, Raw, rdpcap

from ovsnat.lab import scenario
from ovsnat.lab.sh import pid_alive, run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import (
    background_ping,
    background_tcp,
    capture,
    captured,
    parse_ping,
    ping,
    send_frames,
    start_server,
    tcp_connect,
    tcp_established,
    udp_request,
    wait_captured,
)
from tests.test_controller import SNAT, converged, flow_table, installed_text, vm_ids

pytestmark = pytest.mark.lab
FIP = "203.0.113.10"


def ovsnat_status(lab, host="hv1") -> dict:
    out = scenario.cli(lab, host, "status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def rel_host(module_lab):
    """hv1: vm1 (FIP), vm2 and vm3 (PAT); the server answers TCP/UDP 8080."""
    lab = module_lab
    lab.add_host("hv1")
    lab.add_vm("vm1", "hv1", "10.0.0.11", "02:00:0a:00:00:0b", vm_ids("10.0.0.11", FIP))
    lab.add_vm("vm2", "hv1", "10.0.0.12", "02:00:0a:00:00:0c", vm_ids("10.0.0.12"))
    lab.add_vm("vm3", "hv1", "10.0.0.13", "02:00:0a:00:00:0d", vm_ids("10.0.0.13"))
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    start_server(lab, "srv-udp", lab.srv_ns, "udp", 8080)
    start_server(lab, "vm1-tcp", lab.vms["vm1"].ns, "tcp", 7000)
    scenario.start_controller(lab, "hv1", SNAT)
    wait_for(lambda: ping(lab.srv_ns, FIP, count=1, wait=0.2).received, 15, what="FIP up")
    return lab


def log_since(lab, offset: int) -> str:
    return scenario.controller_log(lab, "hv1")[offset:]


def restart_controller(lab) -> None:
    """Stop and start hv1's controller; wait until the new one found the flows in sync
    (read from its own part of the log: the log holds every earlier run's lines too)."""
    scenario.stop_controller(lab, "hv1")
    offset = len(scenario.controller_log(lab, "hv1"))
    scenario.start_controller(lab, "hv1")
    wait_for(
        lambda: "flows in sync" in log_since(lab, offset),
        20,
        what="the restarted controller to find the flows in sync",
    )


@pytest.fixture
def rel(rel_host):
    """The module's host as every test expects it: its controller running (a test that
    failed midway may have left it stopped or the meters changed) and its flows settled."""
    lab = rel_host
    host = lab.hosts["hv1"]
    scenario.install_meters(host)
    info = lab.procs.get("ctl-hv1")
    if not info or not pid_alive(info["pid"]):
        offset = len(scenario.controller_log(lab, "hv1"))
        scenario.start_controller(lab, "hv1")
        wait_for(
            lambda: re.search(r"datapath \w+ connected", log_since(lab, offset)),
            20,
            what="the controller to connect",
        )
    converged(lab)
    return lab


# --- faults ---------------------------------------------------------------------------------------
def test_three_controller_restarts_under_load_lose_nothing(rel):
    host = rel.hosts["hv1"]
    converged(rel)
    before = flow_table(host)
    pinger = background_ping(rel.srv_ns, FIP, interval=0.01, duration=9)
    inbound = background_tcp(rel, rel.srv_ns, FIP, 7000, hold=9)
    outbound = background_tcp(rel, rel.vms["vm2"].ns, SERVER_IP, 8080, hold=9)
    wait_for(
        lambda: (
            tcp_established(rel.srv_ns, FIP, 7000)
            and tcp_established(rel.vms["vm2"].ns, SERVER_IP, 8080)
        ),
        5,
        what="both sessions to be up",
    )
    for _ in range(3):
        restart_controller(rel)
    result = parse_ping(pinger.result())
    assert result.lost == 0, result.output[-300:]
    assert "HELD" in inbound.result() and "HELD" in outbound.result()
    after = flow_table(host)
    assert set(after) == set(before)
    assert all(after[c][0] >= before[c][0] and after[c][1] >= before[c][1] for c in after)


def test_openflow_connection_flapping_loses_nothing(rel):
    host = rel.hosts["hv1"]
    pinger = background_ping(rel.srv_ns, FIP, interval=0.01, duration=4)
    for _ in range(5):
        host.appctl("bridge/reconnect", "br-int")
        time.sleep(0.5)  # on purpose: flaps spread over the ping's 4 s
    result = parse_ping(pinger.result())
    assert result.lost == 0, result.output[-300:]
    converged(rel)


@pytest.mark.parametrize("order", ["ovs-first", "controller-first"])
def test_start_order_does_not_matter(make_lab, order):
    lab = make_lab()
    host = lab.add_host("hv1")
    vm1 = lab.add_vm("vm1", "hv1", "10.0.0.11", "02:00:0a:00:00:0b", vm_ids("10.0.0.11", FIP))
    if order == "controller-first":
        scenario.write_config(lab, "hv1", SNAT)
        host.ovs.stop()
        scenario.start_controller(lab, "hv1", point_bridge=False)  # OVS is down
        wait_for(
            lambda: re.search(r"OVSDB \S+: .*retrying", scenario.controller_log(lab, "hv1")),
            20,
            what="the controller to find OVSDB absent and retry",
        )
        host.ovs.start()
        host.vsctl("set-controller", "br-int", f"tcp:127.0.0.1:{scenario.OF_PORT}")
        host.vsctl("set", "controller", "br-int", "max_backoff=1000")
    else:
        scenario.start_controller(lab, "hv1", SNAT)
    start_server(lab, "vm1-tcp", vm1.ns, "tcp", 7000)
    wait_for(
        lambda: tcp_connect(lab, lab.srv_ns, FIP, 7000, timeout=0.3).ok,
        20,
        what="vm1's FIP to work",
    )
    converged(lab)


def test_ovs_vswitchd_crash_restores_fip_and_new_pat_within_two_seconds(make_lab):
    lab = make_lab()
    host = lab.add_host("hv1")
    lab.add_vm("vm1", "hv1", "10.0.0.11", "02:00:0a:00:00:0b", vm_ids("10.0.0.11", FIP))
    vm2 = lab.add_vm("vm2", "hv1", "10.0.0.12", "02:00:0a:00:00:0c", vm_ids("10.0.0.12"))
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    scenario.start_controller(lab, "hv1", SNAT)
    wait_for(lambda: ping(lab.srv_ns, FIP, count=1, wait=0.2).received, 15, what="FIP up")
    session = background_tcp(lab, vm2.ns, SERVER_IP, 8080, hold=6)
    wait_for(lambda: tcp_established(vm2.ns, SERVER_IP, 8080), 5, what="the PAT session to be up")
    offset = len(scenario.controller_log(lab, "hv1"))
    host.ovs.stop_daemon("ovs-vswitchd", kill=True)  # crash: SIGKILL
    host.ovs.start_vswitchd()
    t0 = time.monotonic()
    wait_for(
        lambda: re.search(r"datapath \w+ connected", log_since(lab, offset)),
        10,
        what="the reconnect",
    )
    wait_for(
        lambda: (
            ping(lab.srv_ns, FIP, count=1, wait=0.1).received
            and tcp_connect(lab, vm2.ns, SERVER_IP, 8080, timeout=0.3).peer_ip == SNAT
        ),
        5,
        what="FIP and new PAT sessions",
    )
    assert time.monotonic() - t0 <= 2.5
    converged(lab)
    ours = [
        line
        for line in host.ofctl("dump-flows", "br-int", "--no-stats").splitlines()
        if "cookie=0xa" in line
    ]
    assert ours and len(ours) == len(set(ours)), "a flow was installed twice"
    # Userspace conntrack died with ovs-vswitchd: the open PAT session is gone.
    assert "BROKEN" in session.result()


# --- bad input ------------------------------------------------------------------------------------
GOOD = {"iface-id": "zz-bad", "attached-mac": "02:00:0a:00:01:01", "ovsnat-fixed-ip": "10.0.0.101"}
BAD_IDS = [
    # (what is wrong, external_ids overrides, text the one error line must contain)
    ("fixed IP not an address", {"ovsnat-fixed-ip": "10.0.0.300"}, "is not an IPv4 address"),
    ("fixed IP word", {"ovsnat-fixed-ip": "abc"}, "is not an IPv4 address"),
    ("fixed IP empty", {"ovsnat-fixed-ip": ""}, "ovsnat-fixed-ip is missing"),
    ("fixed IP short", {"ovsnat-fixed-ip": "10.0.0"}, "is not an IPv4 address"),
    ("fixed IP IPv6", {"ovsnat-fixed-ip": "fd00::5"}, "is not an IPv4 address"),
    ("fixed IP leading zero", {"ovsnat-fixed-ip": "10.0.0.010"}, "is not an IPv4 address"),
    ("fixed IP fullwidth digits", {"ovsnat-fixed-ip": "１０.0.0.5"}, "is not an IPv4 address"),
    ("fixed IP trailing junk", {"ovsnat-fixed-ip": "10.0.0.5x"}, "is not an IPv4 address"),
    ("fixed IP very long", {"ovsnat-fixed-ip": "1" * 5000}, "is not an IPv4 address"),
    ("fixed IP outside internal", {"ovsnat-fixed-ip": "10.0.1.5"}, "is not a host address of"),
    ("fixed IP network address", {"ovsnat-fixed-ip": "10.0.0.0"}, "is not a host address of"),
    ("fixed IP broadcast", {"ovsnat-fixed-ip": "10.0.0.255"}, "is not a host address of"),
    ("fixed IP is the gateway", {"ovsnat-fixed-ip": "10.0.0.1"}, "the VMs' gateway address"),
    ("fixed IP of vm2", {"ovsnat-fixed-ip": "10.0.0.12"}, "is already used by port 'tapvm2'"),
    ("MAC not hex", {"attached-mac": "zz:00:0a:00:01:01"}, "is not a MAC address"),
    ("MAC short", {"attached-mac": "02:00:0a:00:01"}, "is not a MAC address"),
    ("MAC multicast", {"attached-mac": "01:00:5e:00:00:01"}, "is a multicast MAC"),
    ("MAC zero", {"attached-mac": "00:00:00:00:00:00"}, "is the zero MAC"),
    ("MAC is the router's", {"attached-mac": "02:00:00:00:00:01"}, "is the router MAC"),
    ("MAC of vm3", {"attached-mac": "02:00:0a:00:00:0d"}, "is already used by port 'tapvm3'"),
    ("MAC missing", {"attached-mac": None}, "external_ids:attached-mac is missing"),
    ("MAC non-ASCII", {"attached-mac": "02:00:0a:00:01:0é"}, "is not a MAC address"),
    ("iface-id missing", {"iface-id": None}, "external_ids:iface-id is missing"),
    ("iface-id very long", {"iface-id": "x" * 300}, "is too long or not printable"),
    ("iface-id control chars", {"iface-id": "a\tb"}, "is too long or not printable"),
    ("FIP not an address", {"ovsnat-fip": "203.0.113.999"}, "is not an IPv4 address"),
    ("FIP word", {"ovsnat-fip": "floating"}, "is not an IPv4 address"),
    ("FIP IPv6", {"ovsnat-fip": "2001:db8::1"}, "is not an IPv4 address"),
    ("FIP is the SNAT IP", {"ovsnat-fip": SNAT}, "is this host's SNAT IP"),
    ("FIP is the gateway", {"ovsnat-fip": "203.0.113.1"}, "is the external gateway's address"),
    ("FIP inside internal", {"ovsnat-fip": "10.0.0.50"}, "is inside its network (default)"),
    ("FIP outside external", {"ovsnat-fip": "198.51.100.7"}, "is not a host address of"),
    ("FIP network address", {"ovsnat-fip": "203.0.113.0"}, "is not a host address of"),
    ("FIP broadcast", {"ovsnat-fip": "203.0.113.255"}, "is not a host address of"),
    ("FIP of vm1", {"ovsnat-fip": FIP}, "is already used by port 'tapvm1'"),
    ("FIP very long", {"ovsnat-fip": "2" * 3000}, "is not an IPv4 address"),
    ("FIP with spaces", {"ovsnat-fip": "203.0. 113.7"}, "is not an IPv4 address"),
    ("FIP non-ASCII", {"ovsnat-fip": "203.0.113.٧"}, "is not an IPv4 address"),
    ("FIP negative", {"ovsnat-fip": "-203.0.113.7"}, "is not an IPv4 address"),
    ("fixed IP with prefix", {"ovsnat-fixed-ip": "10.0.0.5/24"}, "is not an IPv4 address"),
]


def test_forty_bad_ports_are_each_skipped_with_one_precise_error_others_untouched(rel):
    host = rel.hosts["hv1"]
    converged(rel)
    before = flow_table(host)
    args = []
    for i, (_, overrides, _) in enumerate(BAD_IDS):
        ids = {
            **GOOD,
            "attached-mac": f"02:00:0a:00:02:{i:02x}",
            "ovsnat-fixed-ip": f"10.0.0.{150 + i}",
            "iface-id": f"zz-bad-{i:02d}",
        }
        ids.update(overrides)
        ids = {k: v for k, v in ids.items() if v is not None}
        name = f"bad{i:02d}"
        args += [
            "--",
            "add-port",
            "br-int",
            name,
            "--",
            "set",
            "Interface",
            name,
            "type=internal",
            *[f"external_ids:{k}={json.dumps(v)}" for k, v in ids.items()],
        ]
    # One more: an Interface whose device does not exist (ofport -1).
    args += [
        "--",
        "add-port",
        "br-int",
        "ghost0",
        "--",
        "set",
        "Interface",
        "ghost0",
        "external_ids:iface-id=zz-ghost",
        'external_ids:attached-mac="02:00:0a:00:03:01"',
        'external_ids:ovsnat-fixed-ip="10.0.0.140"',
    ]
    host.vsctl(*args[1:])
    for i in range(len(BAD_IDS)):  # a plugged VM's device is up
        run(["ip", "-n", host.ns, "link", "set", f"bad{i:02d}", "up"])
    try:
        wait_for(
            lambda: len(ovsnat_status(rel)["rejected"]) >= len(BAD_IDS) + 1,
            10,
            what="every bad port to be reported",
        )
        reasons = {r["name"]: r["reason"] for r in ovsnat_status(rel)["rejected"]}
        for i, (what, _, expect) in enumerate(BAD_IDS):
            assert expect in reasons[f"bad{i:02d}"], (what, reasons[f"bad{i:02d}"])
        assert "ofport -1 is not a usable OpenFlow port" in reasons["ghost0"]
        st = ovsnat_status(rel)
        assert [r["name"] for r in st["rejected"] if r.get("transient")] == ["ghost0"]
        log = scenario.controller_log(rel, "hv1")
        lines = log.splitlines()
        for i in range(len(BAD_IDS)):  # each precise error logged exactly once, by whichever
            # judged it first: the controller, or the markers while the device was still down
            said = f"ovsnat: skipping {reasons[f'bad{i:02d}']}"
            hits = [ln for ln in lines if ln == said or ln.startswith(said + " (not ready")]
            assert len(hits) == 1, (f"bad{i:02d}", hits)
        # The good VMs' flows were not touched (not even re-added) and still work.
        after = flow_table(host)
        assert all(c in after and after[c][0] >= before[c][0] for c in before)
        assert tcp_connect(rel, rel.vms["vm1"].ns, SERVER_IP, 8080).peer_ip == FIP
        assert tcp_connect(rel, rel.vms["vm2"].ns, SERVER_IP, 8080).peer_ip == SNAT
    finally:
        host.vsctl(
            *[
                a
                for i in range(len(BAD_IDS))
                for a in ("--", "--if-exists", "del-port", "br-int", f"bad{i:02d}")
            ][1:],
            "--",
            "--if-exists",
            "del-port",
            "br-int",
            "ghost0",
        )
    converged(rel)
    assert ovsnat_status(rel)["rejected"] == []


# --- attacks with real packets --------------------------------------------------------------------
@pytest.mark.parametrize("claim", ["10.0.0.1", "10.0.0.13", FIP])
def test_a_vm_claiming_the_gateway_another_vm_or_a_fip_by_arp_reaches_no_one(rel, claim):
    """Positive controls, sent after the claims: vm2's honest ARP request for vm3 reaches
    vm3, and a UDP datagram from vm2 (through PAT) reaches the outside router's side."""
    vm2, vm3 = rel.vms["vm2"], rel.vms["vm3"]
    frames = [
        bytes(
            Ether(src=vm2.mac, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=op, hwsrc=vm2.mac, psrc=claim, pdst=claim)
        )
        for op in (1, 2)
    ]
    to_vm3 = Ether(src=vm2.mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=vm2.mac, psrc=vm2.ip, pdst=vm3.ip
    )
    marker = f"control-{claim}".encode()
    to_out = (
        Ether(src=vm2.mac, dst=scenario.ROUTER_MAC)
        / IP(src=vm2.ip, dst=SERVER_IP)
        / UDP(sport=4460, dport=9999)
        / marker
    )
    with (
        capture(rel, "claim-vm3", vm3.ns, "eth0", "arp") as vm_pcap,
        capture(rel, "claim-out", rel.out_ns, "eth0", "arp or udp port 9999") as out_pcap,
    ):
        send_frames(rel, vm2.ns, frames, count=3)
        send_frames(rel, vm2.ns, [bytes(to_vm3), bytes(to_out)])
        wait_captured(
            vm_pcap,
            lambda p: (
                ARP in p and p[ARP].op == 1 and p[ARP].psrc == vm2.ip and p[ARP].pdst == vm3.ip
            ),
            what="vm2's request at vm3 (control)",
        )
        wait_captured(
            out_pcap,
            lambda p: Raw in p and p[Raw].load == marker,
            what="vm2's datagram outside (control)",
        )
    seen = [
        p
        for pcap in (vm_pcap, out_pcap)
        for p in captured(pcap)
        if ARP in p and p[ARP].psrc == claim and p[ARP].hwsrc == vm2.mac
    ]
    assert seen == []


@pytest.mark.parametrize("port", [25000, 40000, 80])
def test_unsolicited_packets_to_the_snat_ip_are_dropped_in_and_out_of_the_range(rel, port):
    """The drop counter is the positive control: it counted at least the 3 datagrams and
    the SYN (so they reached the host); >=, since other unsolicited packets count too."""
    before = ovsnat_status(rel)["drops"]["pat_unsolicited_inbound"]
    assert not udp_request(rel, rel.srv_ns, SNAT, port, timeout=0.3).ok
    assert not tcp_connect(rel, rel.srv_ns, SNAT, port, timeout=0.5).ok
    wait_for(
        lambda: ovsnat_status(rel)["drops"]["pat_unsolicited_inbound"] >= before + 4,
        5,
        what="the drop counter (OVS updates counters periodically)",
    )


# --- ICMP errors through a FIP --------------------------------------------------------------------
def test_path_mtu_discovery_works_through_a_fip(rel):
    """The router's 'fragmentation needed' quotes the FIP; the VM gets it with its fixed IP
    quoted, so its kernel learns the path MTU (1400 to the server)."""
    vm1 = rel.vms["vm1"]
    run(["ip", "-n", vm1.ns, "route", "flush", "cache"])
    first = ping(vm1.ns, SERVER_IP, count=2, size=1450, df=True, wait=0.5)
    assert re.search(r"mtu ?= ?1400", first.output), first.output
    route = run(["ip", "-n", vm1.ns, "route", "get", SERVER_IP]).stdout
    assert "mtu 1400" in route, route
    assert ping(vm1.ns, SERVER_IP, count=1, size=1372, df=True).received == 1


def test_time_exceeded_from_beyond_the_nat_hop_reaches_the_vm(rel):
    out = ping(rel.vms["vm1"].ns, SERVER_IP, count=1, ttl=2, wait=1).output
    assert "From 203.0.113.1" in out and "Time to live exceeded" in out, out


def hops(ns: str, dst: str) -> list[str]:
    """traceroute's answering address per hop ('*' where nobody answered)."""
    out = run(["traceroute", "-n", "-q", "1", "-w", "1", "-m", "6", dst], ns=ns, timeout=60).stdout
    return [line.split()[1] for line in out.splitlines()[1:] if line.split()]


@pytest.mark.parametrize("vm", ["vm1", "vm2"], ids=["fip-vm", "pat-vm"])
def test_traceroute_from_a_vm_shows_the_nat_hop(rel, vm):
    """The first hop is ovsnat itself: its network's gateway answers time exceeded; then the
    outside router; then the server (its port unreachable, translated back to the VM)."""
    assert hops(rel.vms[vm].ns, SERVER_IP) == ["10.0.0.1", "203.0.113.1", SERVER_IP]


def test_traceroute_to_a_fip_shows_the_nat_hop_as_the_fip(rel):
    """From outside, the hop ovsnat routes answers from the FIP (as the router of that
    address would); the VM behind it answers next, also as the FIP."""
    before = ovsnat_status(rel)["controller"]["stats"]["ttl_expired"]
    assert hops(rel.srv_ns, FIP) == ["198.51.100.1", FIP, FIP]
    wait_for(
        lambda: ovsnat_status(rel)["controller"]["stats"]["ttl_expired"] >= before + 1,
        5,
        what="the answered TTL to be counted (the status file is rewritten each second)",
    )


def test_errors_a_fip_vm_sends_quote_the_fip(rel):
    """A connected UDP socket outside only sees 'port unreachable' if the quoted header
    names the address it talks to: the FIP. The controller counts the error it translated
    (counted from the test's start: other tests' ICMP errors count too)."""
    before = ovsnat_status(rel)["controller"]["stats"].get("icmp_errors", 0)
    script = "\n".join(
        [
            "import socket, time",
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
            f"s.connect(('{FIP}', 9))",
            "s.settimeout(2)",
            "try:",
            "    s.send(b'x'); time.sleep(0.5); s.send(b'y'); s.recv(100); print('DATA')",
            "except ConnectionRefusedError:",
            "    print('REFUSED')",
            "except socket.timeout:",
            "    print('TIMEOUT')",
        ]
    )
    out = run([sys.executable, "-c", script], ns=rel.srv_ns).stdout.strip()
    assert out == "REFUSED"
    wait_for(
        lambda: ovsnat_status(rel)["controller"]["stats"].get("icmp_errors", 0) >= before + 1,
        3,
        what="the translated ICMP error to be counted",
    )


def refused(lab, ns: str, dst: str) -> str:
    """What a connected UDP socket in ns sees sending to dst:9 (nobody listens there)."""
    script = "\n".join(
        [
            "import socket, time",
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
            f"s.connect(('{dst}', 9))",
            "s.settimeout(2)",
            "try:",
            "    s.send(b'x'); time.sleep(0.5); s.send(b'y'); s.recv(100); print('DATA')",
            "except ConnectionRefusedError:",
            "    print('REFUSED')",
            "except socket.timeout:",
            "    print('TIMEOUT')",
        ]
    )
    return run([sys.executable, "-c", script], ns=ns).stdout.strip()


def test_an_icmp_error_between_two_fips_of_one_host_is_translated_both_ways(rel):
    """vm4 (FIP .44) talks to vm1's FIP, where nobody listens: vm1's port unreachable
    hairpins to vm4's FIP, and vm4's socket sees it (its quote names the FIPs, not the fixed
    IPs). The same socket toward the server's closed port is the control."""
    vm4 = rel.add_vm(
        "vm4", "hv1", "10.0.0.14", "02:00:0a:00:00:0e", vm_ids("10.0.0.14", "203.0.113.44")
    )
    try:
        wait_for(
            lambda: ping(rel.srv_ns, "203.0.113.44", count=1, wait=0.2).received,
            10,
            what="vm4's FIP",
        )
        assert refused(rel, vm4.ns, SERVER_IP) == "REFUSED"  # control: from outside
        assert refused(rel, vm4.ns, FIP) == "REFUSED"  # hairpinned
    finally:
        rel.remove_vm(vm4)


def test_an_icmp_error_arriving_in_fragments_reaches_the_fip_vm_translated(rel):
    """A router's 'fragmentation needed' quoting 2000 bytes arrives in two fragments: the
    VM gets one whole error, its quoted header naming its fixed IP."""
    from scapy.all import ICMP, IP, UDP, Ether, fragment

    vm1 = rel.vms["vm1"]
    quoted = IP(src=FIP, dst=SERVER_IP, ttl=60) / UDP(sport=5557, dport=9) / (b"q" * 2000)
    error = (
        IP(src="203.0.113.1", dst=FIP, ttl=64)
        / ICMP(type=3, code=4, nexthopmtu=1400)
        / bytes(quoted)
    )
    frames = [
        bytes(Ether(src=scenario.outside_router_mac(rel), dst="02:5a:cb:00:71:0a") / f)
        for f in fragment(error, fragsize=1200)
    ]
    assert len(frames) == 2
    with capture(rel, "vm1-icmp", vm1.ns, "eth0", "icmp") as pcap:
        send_frames(rel, rel.out_ns, frames)
        wait_for(
            lambda: any(ICMP in p and p[ICMP].type == 3 for p in rdpcap(pcap)),
            5,
            what="the translated error at vm1",
        )
    got = [p for p in rdpcap(pcap) if ICMP in p and p[ICMP].type == 3]
    inner = IP(bytes(got[0][ICMP].payload))
    assert (got[0][IP].dst, inner.src, inner.dst) == (vm1.ip, vm1.ip, SERVER_IP)
    assert not got[0][IP].flags.MF and got[0][IP].frag == 0


# --- PAT exhaustion -------------------------------------------------------------------------------
def test_exhausted_pat_range_fails_cleanly_and_is_counted(make_lab):
    lab = make_lab()
    lab.add_host("hv1")
    vm2 = lab.add_vm("vm2", "hv1", "10.0.0.12", "02:00:0a:00:00:0c", vm_ids("10.0.0.12"))
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    scenario.start_controller(lab, "hv1", SNAT, snat_port_min=20000, snat_port_max=20003)
    # Each attempt that times out still holds one of the 4 ports: wait for the sync first.
    wait_for(lambda: "in sync" in scenario.controller_log(lab, "hv1"), 15, what="sync")
    assert tcp_connect(lab, vm2.ns, SERVER_IP, 8080, timeout=3).ok
    run(["ovs-appctl", "dpctl/flush-conntrack", "zone=65000"], env=lab.hosts["hv1"].ovs.env)
    with capture(lab, "leak", lab.out_ns, "eth0", "ip") as pcap:
        sessions = [background_tcp(lab, vm2.ns, SERVER_IP, 8080, hold=3) for _ in range(10)]
        results = [s.result() for s in sessions]
    held = [r for r in results if "HELD" in r]
    assert len(held) == 4, results  # 4 ports, one destination
    assert all("ERROR" in r for r in results if "HELD" not in r)
    assert [p for p in rdpcap(pcap) if IP in p and p[IP].src.startswith("10.")] == []
    assert [p for p in rdpcap(pcap) if IP in p and p[IP].src == SNAT]  # (control)
    wait_for(
        lambda: ovsnat_status(lab)["drops"]["pat_range_exhausted"] > 0,
        5,
        what="the exhaustion drop counter",
    )


def test_per_vm_port_blocks_keep_one_vm_from_starving_another(make_lab):
    lab = make_lab()
    lab.add_host("hv1")
    hog = lab.add_vm("vm2", "hv1", "10.0.0.2", "02:00:0a:00:00:02", vm_ids("10.0.0.2"))
    other = lab.add_vm("vm3", "hv1", "10.0.0.3", "02:00:0a:00:00:03", vm_ids("10.0.0.3"))
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    scenario.start_controller(
        lab, "hv1", SNAT, snat_port_min=20000, snat_port_max=20063, pat_ports_per_vm=4
    )
    wait_for(lambda: "in sync" in scenario.controller_log(lab, "hv1"), 15, what="sync")
    hogs = [background_tcp(lab, hog.ns, SERVER_IP, 8080, hold=3) for _ in range(8)]
    wait_for(
        lambda: tcp_established(hog.ns, SERVER_IP, 8080) >= 4, 5, what="vm2 to hold its 4 ports"
    )
    reply = tcp_connect(lab, other.ns, SERVER_IP, 8080)
    assert reply.ok and 20012 <= reply.peer_port <= 20015, reply.line  # vm3's own block
    assert sum("HELD" in h.result() for h in hogs) <= 4


# --- bundle atomicity -----------------------------------------------------------------------------
def test_a_bundle_the_switch_refuses_is_retried_owner_by_owner_and_the_rest_is_kept(rel):
    """An operator capped a table behind the controller's back (flow_limit, overflow refused):
    one flow more fits in vm_l2, two VMs plugged in one change need two. Their bundle is
    refused whole and retried owner by owner: the first VM is programmed, the second is given
    up with its name in the log, nothing installed before is lost. Lifting the cap and
    restarting the controller repairs it."""
    host = rel.hosts["hv1"]
    vm4 = rel.add_vm("vm4", "hv1", "10.0.0.14", "02:00:0a:00:00:0e", {})
    vm5 = rel.add_vm("vm5", "hv1", "10.0.0.15", "02:00:0a:00:00:0f", {})
    offset = len(scenario.controller_log(rel, "hv1"))
    try:
        in_vm_l2 = len(
            [
                line
                for line in host.ofctl("dump-flows", "br-int", "table=70").splitlines()
                if "priority=" in line
            ]
        )
        host.vsctl(
            "--",
            "--id=@ft",
            "create",
            "Flow_Table",
            f"flow_limit={in_vm_l2 + 1}",
            "overflow_policy=refuse",
            "--",
            "set",
            "Bridge",
            "br-int",
            "flow_tables:70=@ft",
        )
        before = installed_text(host)
        host.vsctl(
            "set",
            "Interface",
            vm4.tap,
            'external_ids:ovsnat-fixed-ip="10.0.0.14"',
            'external_ids:ovsnat-fip="203.0.113.44"',
            "--",
            "set",
            "Interface",
            vm5.tap,
            'external_ids:ovsnat-fixed-ip="10.0.0.15"',
        )
        wait_for(
            lambda: "giving up on port tapvm5" in log_since(rel, offset),
            10,
            what="the failure to be logged with the VM's name",
        )
        wait_for(
            lambda: (
                tcp_connect(rel, vm4.ns, SERVER_IP, 8080, timeout=0.5).peer_ip == "203.0.113.44"
            ),
            5,
            what="the VM that fitted to work",
        )
        assert before <= installed_text(host)  # nothing installed before lost
        assert not [line for line in installed_text(host) if "10.0.0.15" in line]
        log = log_since(rel, offset)
        assert "retrying 2 owner(s) one by one" in log
        assert "switch rejected flow" in log and "of port tapvm" in log
        host.vsctl("clear", "Bridge", "br-int", "flow_tables")
        scenario.stop_controller(rel, "hv1")
        scenario.start_controller(rel, "hv1")
        wait_for(
            lambda: tcp_connect(rel, vm5.ns, SERVER_IP, 8080, timeout=0.5).peer_ip == SNAT,
            15,
            what="vm5 after the repair",
        )
    finally:
        host.vsctl("clear", "Bridge", "br-int", "flow_tables")
        rel.remove_vm(vm4)
        rel.remove_vm(vm5)
