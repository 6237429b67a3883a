"""The moonshot, with real packets: outbound PAT sessions survive a live migration with no
state copied between hosts (ovsnat.core.handoff, docs/handoff.md).

Lab: three hypervisors on one fabric, every controller with handoff_vlan 4000. Each test
boots its own PAT VM on hv1 and removes it at the end. A sending session (an echo every
10 ms) and a receive-only one (the server pushes every 10 ms) cross a migration with at most
1 s of gap and no reset; new sessions leave through the new host's SNAT IP; the handoff
flows go once the sessions end (on the host the VM left) and after the grace period (on the
host it reached); a host that never had the VM forwards nothing; a device on the fabric
cannot use the handoff path; a second migration within the grace period works too.
"""

from __future__ import annotations

import itertools
import re
import time

import pytest
from scapy.all import IP, TCP, Dot1Q, Ether

from ovsnat.lab import scenario
from ovsnat.lab.fabric import TENANT_A
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import (
    Background,
    background_tcp,
    capture,
    captured,
    send_frames,
    start_server,
    tcp_connect,
    tcp_established,
)

pytestmark = pytest.mark.lab

SNAT = {"hv1": "203.0.113.11", "hv2": "203.0.113.21", "hv3": "203.0.113.31"}
VLAN, GRACE = 4000, 20
NUMBERS = itertools.count(40)


@pytest.fixture(scope="module")
def hosts(module_lab):
    lab = module_lab
    for host in SNAT:
        lab.add_host(host, fabric=True)
    for host, snat in SNAT.items():
        scenario.start_controller(
            lab, host, snat, fabric_port="fabric", handoff_vlan=VLAN, handoff_grace=GRACE
        )
    for host in SNAT:  # a VM moved to a host whose controller is still starting
        scenario.wait_in_sync(lab, host)  # would measure the start, not the handoff
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    start_server(lab, "srv-push", lab.srv_ns, "tcp-push", 9090)
    return lab


@pytest.fixture
def vm(hosts, request):
    """A fresh PAT VM on hv1 (default network, or tenant-a with param "vlan")."""
    n = next(NUMBERS)
    net = TENANT_A if getattr(request, "param", None) == "vlan" else None
    ip = f"10.{1 if net else 0}.0.{n}"
    v = hosts.add_vm(
        f"m{n}",
        "hv1",
        ip,
        f"02:00:0a:0{1 if net else 0}:01:{n:02x}",
        {"ovsnat-fixed-ip": ip},
        net=net,
    )
    wait_for(
        lambda: tcp_connect(hosts, v.ns, SERVER_IP, 8080, timeout=0.5).ok,
        10,
        what=f"{v.name} to reach the server",
    )
    yield v
    hosts.remove_vm(v)


def handoff_flows(lab, host: str, vm) -> list[str]:
    """The host's flows of the VM's handoff: its departure flows (cookie 0xa6/0xa7) or its
    arrival flow (handoff_in for its address)."""
    out = lab.hosts[host].ofctl("dump-flows", "br-int")
    return [
        line
        for line in out.splitlines()
        if re.search(r"cookie=0xa[67]", line) or ("table=25" in line and vm.ip in line)
    ]


def longest(out: str, key: str) -> float:
    m = re.search(rf"{key}=([\d.]+)", out)
    assert m, out
    return float(m.group(1))


@pytest.mark.parametrize("vm", [None, "vlan"], indirect=True, ids=["untagged", "vlan"])
def test_a_sending_session_survives_a_migration_with_under_1s_gap(hosts, vm):
    session = background_tcp(hosts, vm.ns, SERVER_IP, 8080, hold=6)
    wait_for(lambda: tcp_established(vm.ns, SERVER_IP, 8080), 5, what="the session")
    hosts.move_vm(vm, "hv2")
    out = session.result()
    assert out.startswith("PEER " + SNAT["hv1"]) and "HELD" in out, out
    assert longest(out, "longest_gap") <= 1.0, out
    # New sessions leave through the new host.
    assert tcp_connect(hosts, vm.ns, SERVER_IP, 8080).peer_ip == SNAT["hv2"]


def test_a_receive_only_session_survives_a_migration(hosts, vm):
    sink = Background(
        [
            hosts.python()[0],
            "-m",
            "ovsnat.lab.peer",
            "tcp-sink-client",
            SERVER_IP,
            "9090",
            "--hold",
            "6",
        ],
        vm.ns,
    )
    wait_for(lambda: tcp_established(vm.ns, SERVER_IP, 9090), 5, what="the session")
    hosts.move_vm(vm, "hv2")
    out = sink.result()
    assert out.startswith("OPEN"), out
    assert longest(out, "longest_silence") <= 1.0, out


def test_handoff_flows_go_when_the_sessions_end_and_after_the_grace_period(hosts, vm):
    session = background_tcp(hosts, vm.ns, SERVER_IP, 8080, hold=3)
    wait_for(lambda: tcp_established(vm.ns, SERVER_IP, 8080), 5, what="the session")
    hosts.move_vm(vm, "hv2")
    wait_for(lambda: handoff_flows(hosts, "hv1", vm), 5, what="hv1's departure flows")
    assert handoff_flows(hosts, "hv2", vm), "hv2 has no arrival flow"
    wait_for(
        lambda: (
            scenario.status(hosts, "hv1").get("handoffs", {}).get(vm.tap, {}).get("sessions", 0)
            >= 1
        ),
        3,
        what="hv1's status to show the handed-off session",
    )
    assert "HELD" in session.result()  # the session closed: hv1 lets go soon after
    wait_for(
        lambda: not handoff_flows(hosts, "hv1", vm),
        15,
        what="hv1 to end the handoff once its conntrack holds no session of the VM",
    )
    wait_for(
        lambda: not handoff_flows(hosts, "hv2", vm),
        GRACE + 5,
        what="hv2 to end the arrival at the end of the grace period",
    )
    wait_for(
        lambda: vm.tap not in scenario.status(hosts, "hv2").get("handoffs", {"": 0}),
        5,
        what="hv2's status to show the handoff over",
    )


def test_a_host_that_never_had_the_vm_forwards_nothing_handed_to_it(hosts, vm):
    """hv3 receives every handoff broadcast (the fabric floods them) and sends none of it
    out; hv1, which holds the session, does (the positive control)."""
    session = background_tcp(hosts, vm.ns, SERVER_IP, 8080, hold=4)
    wait_for(lambda: tcp_established(vm.ns, SERVER_IP, 8080), 5, what="the session")
    bpf = "tcp port 8080"
    with (
        capture(hosts, "handoff-hv1", hosts.ext_ns, "hv1", bpf, "in") as via_hv1,
        capture(hosts, "handoff-hv3", hosts.ext_ns, "hv3", bpf, "in") as via_hv3,
    ):
        hosts.move_vm(vm, "hv2")
        assert "HELD" in session.result()
    assert captured(via_hv1, lambda p: TCP in p and p[IP].src == SNAT["hv1"])
    assert not captured(via_hv3, lambda p: TCP in p)


def test_a_device_on_the_fabric_cannot_use_the_handoff_path(hosts, vm):
    """A namespace on the fabric sends handoff frames: as a VM that never left (another
    host's VM, here hv1's own), and as the departed VM but for a connection it never had.
    Nothing of it leaves hv1; the departed VM's real session does (positive control)."""
    spy = fabric_device(hosts)
    session = background_tcp(hosts, vm.ns, SERVER_IP, 8080, hold=5)
    wait_for(lambda: tcp_established(vm.ns, SERVER_IP, 8080), 5, what="the session")
    resident = hosts.add_vm(
        f"r{next(NUMBERS)}",
        "hv1",
        "10.0.0.99",
        "02:00:0a:00:02:63",
        {"ovsnat-fixed-ip": "10.0.0.99"},
    )
    try:
        hosts.move_vm(vm, "hv2")
        forged = [
            handoff_frame(resident.mac, resident.ip, 41000, "A"),  # never left
            handoff_frame(vm.mac, vm.ip, 41001, "A"),  # no such session
            handoff_frame(vm.mac, vm.ip, 41002, "S"),
        ]  # a new one
        with capture(hosts, "forged-hv1", hosts.ext_ns, "hv1", "tcp", "in") as pcap:
            send_frames(hosts, spy, forged, count=3)
            assert "HELD" in session.result()
        assert captured(pcap, lambda p: TCP in p and p[TCP].dport == 8080)  # control
        assert not captured(pcap, lambda p: TCP in p and p[TCP].sport in (41000, 41001, 41002)), (
            "a forged handoff frame left hv1"
        )
    finally:
        hosts.remove_vm(resident)


def test_a_second_migration_within_the_grace_period(hosts, vm):
    session = background_tcp(hosts, vm.ns, SERVER_IP, 8080, hold=8)
    wait_for(lambda: tcp_established(vm.ns, SERVER_IP, 8080), 5, what="the session")
    hosts.move_vm(vm, "hv2")
    wait_for(lambda: handoff_flows(hosts, "hv2", vm), 5, what="hv2's arrival flow")
    later = background_tcp(hosts, vm.ns, SERVER_IP, 8080, hold=5)  # begins on hv2
    wait_for(lambda: tcp_established(vm.ns, SERVER_IP, 8080) >= 2, 5, what="the 2nd session")
    # The VM runs on hv2 a while before it moves on, as a guest does (a live migration
    # itself takes seconds), so both sessions cross a migration with state on two hosts.
    time.sleep(1.5)
    hosts.move_vm(vm, "hv3")
    first, second = session.result(), later.result()
    assert "HELD" in first and longest(first, "longest_gap") <= 1.0, first
    assert second.startswith("PEER " + SNAT["hv2"]) and "HELD" in second, second
    assert longest(second, "longest_gap") <= 1.0, second


# --- the fabric device ----------------------------------------------------------------------
def fabric_device(lab) -> str:
    """A namespace cabled to the fabric switch (once per lab)."""
    ns = lab.ns_name("spy")
    if ns not in lab.namespaces:
        lab._add_ns("spy")
        tor = lab.ns_name("tor")
        lab._veth(ns, "eth0", tor, "spy")
        run(["ip", "-n", tor, "link", "set", "spy", "master", "br0"])
    return ns


def handoff_frame(mac: str, ip: str, sport: int, flags: str) -> bytes:
    return bytes(
        Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
        / Dot1Q(vlan=VLAN)
        / IP(src=ip, dst=SERVER_IP)
        / TCP(sport=sport, dport=8080, flags=flags)
    )
