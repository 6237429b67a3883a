"""Native DHCP with real clients: VMs whose only configuration is busybox udhcpc (the client
cirros runs) boot, get their address from ovsnat on their own host, and reach the outside
through PAT and through a FIP; a renewal after a controller restart works; a flooding VM is
quarantined without slowing another VM's lease; a client asking for another VM's address is
refused; and no DHCP frame ever leaves a host, on the uplink or on the fabric.

Lab: two hypervisors on the fabric (ovsnat.lab.fabric), each controller with dhcp_dns and
dhcp_domain set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from scapy.all import BOOTP, DHCP, IP, UDP, Ether

from ovsnat.lab import dhcpclient, scenario
from ovsnat.lab.fabric import TENANT_A
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import capture, captured, ping, send_frames, start_server, tcp_connect

pytestmark = pytest.mark.lab

SNAT = {"hv1": "203.0.113.11", "hv2": "203.0.113.21"}
FIP1 = "203.0.113.51"
DNS, DOMAIN = "198.51.100.53", "lab.example"
VMS = {  # name: (host, fixed ip, mac, network, extra external_ids)
    "v1": ("hv1", "10.0.0.21", "02:00:0a:00:00:15", None, {"ovsnat-fip": FIP1}),
    "v2": ("hv1", "10.0.0.22", "02:00:0a:00:00:16", None, {}),
    "v3": (
        "hv2",
        "10.1.0.23",
        "02:00:0a:01:00:17",
        TENANT_A,
        {"ovsnat-dns": "198.51.100.99", "ovsnat-routes": "10.9.0.0/16>10.1.0.253"},
    ),
    "v4": ("hv2", "10.0.0.24", "02:00:0a:00:00:18", None, {}),
}


@pytest.fixture(scope="module")
def dh(module_lab):
    lab = module_lab
    for host in SNAT:
        lab.add_host(host, fabric=True)
    for host, snat in SNAT.items():
        scenario.start_controller(
            lab,
            host,
            snat,
            fabric_port="fabric",
            dhcp_dns=DNS,
            dhcp_domain=DOMAIN,
            dhcp_lease_time=3600,
        )
    for name, (host, ip, mac, net, extra) in VMS.items():
        lab.add_vm(name, host, ip, mac, {"ovsnat-fixed-ip": ip, **extra}, net=net, dhcp=True)
    for name in VMS:
        dhcpclient.wait_bound(lab, lab.vms[name], timeout=20)
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    return lab


def addresses(vm) -> str:
    return vm.exec("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout


def routes(vm) -> str:
    return vm.exec("ip", "-4", "route", "show").stdout


def test_a_vm_configured_only_by_dhcp_gets_its_address_route_and_dns(dh):
    v1 = dh.vms["v1"]
    got = dhcpclient.lease(dh, v1)
    assert (got["ip"], got["router"], got["serverid"]) == ("10.0.0.21", "10.0.0.1", "10.0.0.1")
    assert (got["dns"].split(), got["domain"], got["lease"]) == ([DNS], DOMAIN, "3600")
    assert got["mtu"] == "1500"
    assert "10.0.0.21/24" in addresses(v1)
    assert re.search(r"^default via 10\.0\.0\.1 dev eth0", routes(v1), re.M), routes(v1)


def test_ovsnat_status_shows_the_leases_handed_out_per_vm(dh):
    conf = os.path.join(dh.hosts["hv1"].rundir, "ovsnat.conf")

    def status(*args):
        return subprocess.run(
            [sys.executable, "-m", "ovsnat.cli", "status", *args, "--config", conf],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, **dh.hosts["hv1"].ovs.env),
        ).stdout

    wait_for(
        lambda: all(vm["dhcp"] for vm in json.loads(status("--json"))["vms"]),
        5,
        what="hv1's leases in its status",
    )
    vms = {vm["name"]: vm for vm in json.loads(status("--json"))["vms"]}
    assert vms["tapv1"]["dhcp"]["ip"] == "10.0.0.21" and vms["tapv2"]["dhcp"]["acks"] >= 1
    assert "2 with a DHCP lease from this host" in status()
    assert "DHCP lease 10.0.0.22" in status()


def test_a_vlan_network_vm_gets_the_ports_own_values_and_room_for_the_tag(dh):
    v3 = dh.vms["v3"]
    got = dhcpclient.lease(dh, v3)
    assert (got["ip"], got["router"], got["dns"].split()) == (
        "10.1.0.23",
        "10.1.0.1",
        ["198.51.100.99"],
    )
    assert got["mtu"] == "1496"  # 4 bytes for VLAN 101's tag
    assert "mtu 1496" in v3.exec("ip", "link", "show", "eth0").stdout
    assert "10.9.0.0/16 via 10.1.0.253" in routes(v3)
    assert re.search(r"^default via 10\.1\.0\.1", routes(v3), re.M), routes(v3)


def test_dhcp_only_vms_reach_the_outside_through_pat_and_their_fip(dh):
    v1, v2 = dh.vms["v1"], dh.vms["v2"]
    assert tcp_connect(dh, v2.ns, SERVER_IP, 8080).peer_ip == SNAT["hv1"]
    assert tcp_connect(dh, v1.ns, SERVER_IP, 8080).peer_ip == FIP1
    wait_for(
        lambda: ping(dh.srv_ns, FIP1, count=1, wait=0.3).received,
        10,
        what="v1's FIP from the outside",
    )
    assert ping(dh.srv_ns, FIP1).received == 3


def test_a_renewal_after_a_controller_restart_is_acked(dh):
    v2 = dh.vms["v2"]
    scenario.stop_controller(dh, "hv1")
    offset = len(scenario.controller_log(dh, "hv1"))
    scenario.start_controller(dh, "hv1")
    wait_for(
        lambda: "flows in sync" in scenario.controller_log(dh, "hv1")[offset:],
        20,
        what="the restarted controller to find the flows in sync",
    )
    before = len(dhcpclient.events(dh, v2))
    dhcpclient.renew(dh, v2)
    wait_for(
        lambda: "renew 10.0.0.22" in dhcpclient.events(dh, v2)[before:], 10, what="v2's renewal"
    )
    wait_for(
        lambda: scenario.status(dh, "hv1").get("dhcp_leases", {}).get("tapv2"),
        5,
        what="the restarted controller to list v2's lease",
    )
    assert "10.0.0.22/24" in addresses(v2)


def test_a_client_asking_for_another_vms_address_is_refused_and_keeps_its_own(dh):
    v4 = dh.vms["v4"]
    theirs = request(v4.mac, "10.0.0.22")  # v2's address (INIT-REBOOT)
    ours = request(v4.mac, v4.ip)  # positive control
    with capture(dh, "dhcp-nak", v4.ns, "eth0", "udp port 68", direction="in") as pcap:
        send_frames(dh, v4.ns, [theirs])
        wait_for(lambda: kinds(pcap) == [6], 5, what="a NAK for 10.0.0.22")
        send_frames(dh, v4.ns, [ours])
        wait_for(lambda: kinds(pcap) == [6, 5], 5, what="an ACK for v4's own address")
    assert "10.0.0.24/24" in addresses(v4) and "10.0.0.22" not in addresses(v4)


def boot_time(lab) -> float:
    """Seconds from creating a DHCP-only VM on hv2 to its lease."""
    start = time.monotonic()
    v5 = lab.add_vm(
        "v5", "hv2", "10.0.0.25", "02:00:0a:00:00:19", {"ovsnat-fixed-ip": "10.0.0.25"}, dhcp=True
    )
    try:
        dhcpclient.wait_bound(lab, v5, timeout=20)
        return time.monotonic() - start
    finally:
        lab.remove_vm(v5)


def test_a_flooding_vm_is_quarantined_and_another_vms_lease_is_not_slowed(dh):
    """f1 (a served port) sends DHCP requests as fast as it can, far above the DHCP meter's
    rate; without the quarantine most of another VM's requests would be dropped by the
    meter and its lease would wait for the client's retries."""
    quiet = boot_time(dh)
    f1 = dh.add_vm("f1", "hv2", "10.0.0.26", "02:00:0a:00:00:1a", {"ovsnat-fixed-ip": "10.0.0.26"})
    argv = [
        dh.python()[0],
        "-m",
        "ovsnat.lab.peer",
        "send",
        "--iface",
        "eth0",
        "--count",
        "40000",
        "--interval",
        "0.0002",
        discover(f1.mac).hex(),
    ]
    flood = subprocess.Popen(
        ["ip", "netns", "exec", f1.ns, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: scenario.status(dh, "hv2").get("stats", {}).get("dhcp_quarantines", 0) >= 1,
            10,
            what="the flooder's quarantine",
        )
        assert "cookie=0xa5" in dh.hosts["hv2"].ofctl("dump-flows", "br-int", "table=0")
        flooded = boot_time(dh)
        assert flood.poll() is None, "the flood ended before the other VM's lease came"
    finally:
        flood.kill()
        flood.wait()
        dh.remove_vm(f1)
    assert flooded < max(3 * quiet, quiet + 2), (
        f"a lease took {flooded:.2f} s during the flood, {quiet:.2f} s without"
    )


def test_no_dhcp_frame_leaves_a_host(dh):
    """Captures on the external segment and on the fabric switch while every VM renews;
    positive controls: the same captures see the VMs' own traffic (PAT to the server on the
    uplink, v2 to v4 east-west on the fabric)."""
    tor = dh.ns_name("tor")
    with (
        capture(dh, "dhcp-ext", dh.ext_ns, "any") as ext,
        capture(dh, "dhcp-tor", tor, "any") as fab,
    ):
        for name in VMS:
            before = len(dhcpclient.events(dh, dh.vms[name]))
            dhcpclient.renew(dh, dh.vms[name])
            wait_for(
                lambda: any(
                    e.startswith("renew") for e in dhcpclient.events(dh, dh.vms[name])[before:]
                ),
                10,
                what=f"{name}'s renewal",
            )
        assert ping(dh.vms["v2"].ns, SERVER_IP, count=1).received == 1
        assert ping(dh.vms["v2"].ns, dh.vms["v4"].ip, count=1).received == 1
        wait_for(lambda: icmp_seen(ext) and icmp_seen(fab), 5, what="the controls captured")
    leaks = [
        p
        for pcap in (ext, fab)
        for p in captured(pcap, lambda p: UDP in p and {p[UDP].sport, p[UDP].dport} & {67, 68})
    ]
    assert not leaks, leaks[0].summary()


@pytest.mark.parametrize("where", ["uplink", "fabric"])
def test_dhcp_requests_from_the_uplink_or_the_fabric_are_dropped_at_the_switch(dh, where):
    """A DISCOVER for v4's MAC sent at hv2 from outside: the priority-420 drop for that port
    counts it, so it reached the switch and went no further (not to the controller, which
    would otherwise offer v4's address to whoever sent it)."""
    host = dh.hosts["hv2"]
    port = str(host.ofport("uplink" if where == "uplink" else "fabric"))
    ns, iface = (dh.ext_ns, "hv2") if where == "uplink" else (dh.ns_name("tor"), "hv2")
    before = scenario.flow_packets(dh, "hv2", 0, "priority=420", f"in_port={port}")
    send_frames(dh, ns, [discover(dh.vms["v4"].mac)], iface=iface)
    assert (
        scenario.counter_reaches(dh, "hv2", 0, before + 1, "priority=420", f"in_port={port}")
        > before
    )


# --- frames -------------------------------------------------------------------------------------
def _client(mac: str, options: list, ciaddr: str = "0.0.0.0") -> bytes:
    chaddr = bytes.fromhex(mac.replace(":", ""))
    return bytes(
        Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
        / IP(src=ciaddr, dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / BOOTP(chaddr=chaddr, xid=0x4242, flags=0x8000, ciaddr=ciaddr)
        / DHCP(options=options + ["end"])
    )


def discover(mac: str) -> bytes:
    return _client(mac, [("message-type", "discover")])


def request(mac: str, ip: str) -> bytes:
    return _client(mac, [("message-type", "request"), ("requested_addr", ip)])


def kinds(pcap: str) -> list[int]:
    return [
        dict(o for o in p[DHCP].options if isinstance(o, tuple))["message-type"]
        for p in captured(pcap, lambda p: DHCP in p and p[BOOTP].xid == 0x4242)
    ]


def icmp_seen(pcap: str) -> bool:
    return bool(captured(pcap, lambda p: p.haslayer("ICMP")))
