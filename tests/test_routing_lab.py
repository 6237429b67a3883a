"""Neutron's routers honoured by the controller, with real packets (docs/routers.md, issue 26
item 1): a network on no router is an isolated L2 segment (its VMs talk, DHCP renews, the
gateway's ARP is answered; no PAT, no FIP), `snat=off` ends PAT under a live session and
keeps FIPs, and removing a network's attachment ends a live PAT session within a second.
Every "nothing passes" has its positive control: the same traffic before the change, and
the other network, routed all along, at the same time.

Lab: hv1 on the fabric. tenant-a (VLAN 101) and tenant-b (VLAN 102), both 10.1.0.0/24:
a1 (PAT), a2 (FIP 203.0.113.42) and a4 (configured by its DHCP client) in tenant-a; b1
(PAT) and b2 (FIP 203.0.113.43) in tenant-b. Every test starts from tenant-a on router r1
and tenant-b on router r2, both with gateway `public` and SNAT on (the fixture writes the
keys and waits until PAT and both FIPs work).
"""

from __future__ import annotations

import json
import re
import time

import pytest

from ovsnat.lab import dhcpclient, scenario
from ovsnat.lab.fabric import TENANT_A, TENANT_B
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import Background, background_tcp, ping, start_server, tcp_connect

pytestmark = pytest.mark.lab

SNAT = "203.0.113.11"
FIP_A2, FIP_B2 = "203.0.113.42", "203.0.113.43"
ROUTER_MAC = "02:00:00:00:00:01"
VMS = {  # name: (ip, mac, network, extra external_ids, dhcp)
    "a1": ("10.1.0.11", "02:00:0a:01:00:0b", TENANT_A, {}, False),
    "a2": ("10.1.0.12", "02:00:0a:01:00:0c", TENANT_A, {"ovsnat-fip": FIP_A2}, False),
    "a4": ("10.1.0.14", "02:00:0a:01:00:0e", TENANT_A, {}, True),
    "b1": ("10.1.0.11", "02:00:0a:02:00:0b", TENANT_B, {}, False),
    "b2": ("10.1.0.12", "02:00:0a:02:00:0c", TENANT_B, {"ovsnat-fip": FIP_B2}, False),
}
ROUTED = {
    "ovsnat-net-tenant-a": "router=r1",
    "ovsnat-net-tenant-b": "router=r2",
    "ovsnat-router-r1": "ext=public;snat=on",
    "ovsnat-router-r2": "ext=public;snat=on",
}
CONVERGE = 15.0  # a deadline for set-up, not a measurement


@pytest.fixture(scope="module")
def rlab(module_lab):
    lab = module_lab
    lab.add_host("hv1", fabric=True)
    set_keys(lab, ROUTED)  # before the ports: a Neutron port is never seen without them
    for name, (ip, mac, net, extra, dhcp) in VMS.items():
        lab.add_vm(name, "hv1", ip, mac, {"ovsnat-fixed-ip": ip, **extra}, net=net, dhcp=dhcp)
    scenario.start_controller(lab, "hv1", SNAT, fabric_port="fabric")
    scenario.wait_in_sync(lab, "hv1")
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    for name in VMS:
        start_server(lab, f"{name}-tcp", lab.vms[name].ns, "tcp", 7000)
    dhcpclient.wait_bound(lab, lab.vms["a4"], timeout=20)
    return lab


@pytest.fixture
def routed(rlab):
    set_keys(rlab, ROUTED)
    for vm in ("a1", "b1"):
        wait_for(lambda vm=vm: seen_as(rlab, vm) == SNAT, CONVERGE, what=f"{vm} through PAT")
    for fip in (FIP_A2, FIP_B2):
        wait_for(lambda fip=fip: reaches(rlab, fip), CONVERGE, what=f"{fip} from outside")
    return rlab


def set_keys(lab, keys: dict[str, str]) -> float:
    """Write the bridge's routing keys in one OVSDB transaction; returns when (wall clock)."""
    args = [f'external_ids:{k}="{v}"' for k, v in keys.items()]
    when = time.time()
    lab.hosts["hv1"].vsctl("set", "Bridge", "br-int", *args)
    return when


def seen_as(lab, vm: str) -> str | None:
    reply = tcp_connect(lab, lab.vms[vm].ns, SERVER_IP, 8080, timeout=1)
    return reply.peer_ip if reply.ok else None


def reaches(lab, fip: str) -> bool:
    return tcp_connect(lab, lab.srv_ns, fip, 7000, timeout=1).ok


def timed_ping(lab, vm: str, dst: str, seconds: float) -> Background:
    """A 10 ms ping whose replies carry their arrival time (`ping -D`)."""
    count = str(int(seconds / 0.01))
    argv = ["ping", "-n", "-D", "-i", "0.01", "-c", count, "-w", str(int(seconds) + 3), dst]
    return Background(argv, lab.vms[vm].ns)


def reply_times(output: str) -> list[float]:
    return [float(t) for t in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", output, re.M)]


def pat_session_ends_at(lab, change: dict[str, str]) -> tuple[float, str]:
    """Under a live PAT session of a1 (TCP echoes every 10 ms, and a 10 ms ping through
    PAT), apply `change`: returns (seconds from the change to a1's last ping reply, the TCP
    session's outcome). Replies before the change are the positive control."""
    session = background_tcp(lab, lab.vms["a1"].ns, SERVER_IP, 8080, hold=8)
    pinger = timed_ping(lab, "a1", SERVER_IP, 6)
    time.sleep(1.5)  # both running well before the change (the ping's replies show it)
    changed = set_keys(lab, change)
    times = reply_times(pinger.result(timeout=30))
    before = [t for t in times if t < changed]
    assert len(before) >= 50, f"the PAT ping did not run before the change: {times[:5]}"
    print(f"last PAT reply {max(times) - changed:+.3f} s after {change}")  # shown with -s
    return max(times) - changed, session.result(timeout=30)


def test_a_network_on_no_router_is_an_isolated_l2_segment(routed):
    lab = routed
    set_keys(lab, {**ROUTED, "ovsnat-net-tenant-a": "router=-"})
    wait_for(lambda: seen_as(lab, "a1") is None, 5, what="a1's PAT gone")
    assert not reaches(lab, FIP_A2)  # its FIP is inert: not answered, not translated
    assert ping(lab.srv_ns, FIP_A2, count=2, wait=0.5).received == 0
    # Positive controls at the same time: tenant-b, routed, and tenant-a's own L2.
    assert seen_as(lab, "b1") == SNAT and reaches(lab, FIP_B2)
    a1, a2, a4 = (lab.vms[n] for n in ("a1", "a2", "a4"))
    assert ping(a1.ns, a2.ip).received == 3
    reply = tcp_connect(lab, a1.ns, a4.ip, 7000)
    assert reply.ok and reply.peer_ip == a1.ip, reply.line
    # The gateway still answers ARP (the DHCP server's address), and nothing else.
    a1.exec("ip", "neigh", "flush", "dev", "eth0")
    assert ping(a1.ns, TENANT_A.gateway, count=2, wait=0.5).received == 0
    neigh = a1.exec("ip", "neigh", "show", TENANT_A.gateway).stdout
    assert ROUTER_MAC in neigh, neigh
    # A DHCP renewal (unicast to the gateway, the server identifier) is acknowledged.
    before = len(dhcpclient.events(lab, a4))
    dhcpclient.renew(lab, a4)
    wait_for(
        lambda: f"renew {a4.ip}" in dhcpclient.events(lab, a4)[before:], 10, what="a4's renewal"
    )
    routing = wait_for(
        lambda: (r := scenario.status(lab, "hv1")["routing"])["inert_fips"] and r,
        5,
        what="the status file",
    )
    assert routing["networks"]["tenant-a"].startswith("on no router"), routing
    assert routing["inert_fips"]["tapa2"]["fips"] == [FIP_A2], routing
    # The command line recompiles the host as the controller does: no drift, and says it.
    diff = scenario.cli(lab, "hv1", "diff")
    assert diff.returncode == 0, diff.stdout
    st = json.loads(scenario.cli(lab, "hv1", "status", "--json").stdout)
    nat = {vm["name"]: vm["nat"] for vm in st["vms"]}
    assert nat["tapa2"] == f"none: isolated, FIP {FIP_A2} inert" and nat["tapb1"] == "PAT", nat
    nets = {n["name"]: n["routing"] for n in st["networks"]}
    assert nets["tenant-a"].startswith("on no router") and "PAT and FIPs" in nets["tenant-b"]


def test_snat_off_ends_a_live_pat_session_and_keeps_fips(routed):
    lab = routed
    last, outcome = pat_session_ends_at(lab, {**ROUTED, "ovsnat-router-r1": "ext=public;snat=off"})
    assert last < 1.0, f"a1's PAT ping still answered {last:.2f} s after snat=off"
    assert outcome.startswith(f"PEER {SNAT}:") and "BROKEN" in outcome, outcome
    assert seen_as(lab, "a1") is None
    assert reaches(lab, FIP_A2)  # the FIP keeps working, both ways
    assert seen_as(lab, "a2") == FIP_A2
    assert seen_as(lab, "b1") == SNAT  # another router's network is untouched


def test_removing_the_attachment_ends_a_live_pat_session_at_once(routed):
    lab = routed
    last, outcome = pat_session_ends_at(lab, {**ROUTED, "ovsnat-net-tenant-a": "router=-"})
    assert last < 1.0, f"a1's PAT ping still answered {last:.2f} s after the detach"
    assert outcome.startswith(f"PEER {SNAT}:") and "BROKEN" in outcome, outcome
    assert seen_as(lab, "b1") == SNAT
    set_keys(lab, ROUTED)  # attached again: new sessions work
    wait_for(lambda: seen_as(lab, "a1") == SNAT, 5, what="a1's PAT back")


def test_a_malformed_attachment_isolates_the_network_and_says_why(routed):
    lab = routed
    set_keys(lab, {**ROUTED, "ovsnat-net-tenant-a": "router=r1;oops"})
    wait_for(lambda: seen_as(lab, "a1") is None, 5, what="a1's PAT gone")
    assert seen_as(lab, "b1") == SNAT
    problems = wait_for(
        lambda: scenario.status(lab, "hv1")["routing"]["problems"], 5, what="the status file"
    )
    assert any("ovsnat-net-tenant-a" in p and "router=r1;oops" in p for p in problems), problems
    log = scenario.controller_log(lab, "hv1")
    assert log.count("bridge external_ids:ovsnat-net-tenant-a") == 1, log[-2000:]
