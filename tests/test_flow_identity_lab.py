"""Flow identity on a real Open vSwitch: two owners that want one (table, priority, match)
leave exactly one flow on the switch, the one of the owner that sorts first, the other is
reported (`ovsnat status`, the log), and when the winner leaves the other's flow goes in.

The case is one ovsnat's compiler really makes: two PAT VMs in their arrival grace (handoff)
in two VLAN networks with one MAC and one fixed IP each compile handoff_in priority 100
ip,dl_dst=MAC,nw_dst=IP (the handoff VLAN carries no network). A reply handed over on the
handoff VLAN reaches the VM whose flow the switch holds, and only that one (the packets
below); unit tests: tests/test_flow_identity.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import netaddr
import pytest
from scapy.all import IP, UDP, Dot1Q, Ether

from ovsnat.lab import scenario
from ovsnat.lab.fabric import TENANT_A, TENANT_B
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import capture, captured, send_frames, wait_captured

pytestmark = pytest.mark.lab

VLAN = 4000
MAC, ADDR = "02:00:0a:01:07:4d", "10.1.0.77"
MATCH = f"priority=100,ip,dl_dst={MAC},nw_dst={ADDR}"


@pytest.fixture(scope="module")
def lab(module_lab):
    module_lab.add_host("hv1", fabric=True)
    scenario.start_controller(
        module_lab,
        "hv1",
        "203.0.113.11",
        fabric_port="fabric",
        handoff_vlan=VLAN,
        handoff_grace=3600,
    )
    scenario.wait_in_sync(module_lab, "hv1")
    return module_lab


def held(lab) -> list[int]:
    """The cookies of the switch's flows with the twins' handoff_in match."""
    out = lab.hosts["hv1"].ofctl("dump-flows", "br-int", "table=25")
    return [
        int(m.group(1), 16)
        for line in out.splitlines()
        if MATCH in line
        for m in [re.search(r"cookie=(0x[0-9a-f]+)", line)]
        if m
    ]


def owner_bits(vlan: int) -> int:
    """A VLAN network VM's cookie owner bits (flows.py): 0xa4, VLAN, the IP's low 20 bits."""
    return 0xA4 << 32 | vlan << 20 | int(netaddr.IPAddress(ADDR)) & 0xFFFFF


def left_out(lab) -> list:
    return scenario.status(lab, "hv1").get("duplicate_flows", [])


def status_text(lab) -> str:
    conf = os.path.join(lab.hosts["hv1"].rundir, "ovsnat.conf")
    return subprocess.run(
        [sys.executable, "-m", "ovsnat.cli", "status", "--config", conf],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, **lab.hosts["hv1"].ovs.env),
    ).stdout


def fabric_device(lab) -> str:
    """A namespace on the fabric switch: it sends what the host a VM left would send."""
    ns = lab.ns_name("spy")
    if ns not in lab.namespaces:
        lab._add_ns("spy")
        tor = lab.ns_name("tor")
        lab._veth(ns, "eth0", tor, "spy")
        run(["ip", "-n", tor, "link", "set", "spy", "master", "br0"])
    return ns


def handed_reply(sport: int) -> bytes:
    """A reply for the twins' address as the host they left hands it over."""
    return bytes(
        Ether(src="02:00:00:00:00:99", dst=MAC)
        / Dot1Q(vlan=VLAN)
        / IP(src=SERVER_IP, dst=ADDR)
        / UDP(sport=sport, dport=7777)
        / b"handed"
    )


def is_reply(sport: int):
    return lambda p: UDP in p and p[UDP].sport == sport and p[UDP].dport == 7777


def test_two_vms_with_one_handoff_match_leave_one_flow_and_the_other_is_reported(lab):
    spy = fabric_device(lab)
    a = lab.add_vm("twa", "hv1", ADDR, MAC, {"ovsnat-fixed-ip": ADDR}, net=TENANT_A)
    b = lab.add_vm("twb", "hv1", ADDR, MAC, {"ovsnat-fixed-ip": ADDR}, net=TENANT_B)
    try:
        wait_for(lambda: left_out(lab), 10, what="the flow left out in hv1's status")
        assert left_out(lab) == [
            {"owner": f"port {b.tap}", "kept_by": f"port {a.tap}", "flow": f"table=25, {MATCH}"}
        ]
        assert [c >> 24 for c in held(lab)] == [owner_bits(TENANT_A.vlan)]
        assert f"flow left out: port {b.tap}'s table=25, {MATCH}" in status_text(lab)
        log = scenario.controller_log(lab, "hv1")
        assert f"port {a.tap} and port {b.tap} both want the flow table=25, {MATCH}" in log
        # The datapath: a handed-over reply reaches tenant-a's twin, not tenant-b's.
        with (
            capture(lab, "twin-a", a.ns, "eth0", "udp") as to_a,
            capture(lab, "twin-b", b.ns, "eth0", "udp") as to_b,
        ):
            send_frames(lab, spy, [handed_reply(41001)], count=3)
            wait_captured(to_a, is_reply(41001), what="the reply at tenant-a's twin")
        assert not captured(to_b, is_reply(41001)), "tenant-b's twin got tenant-a's reply"

        lab.remove_vm(a)  # the winner leaves: tenant-b's twin's flow goes in
        wait_for(
            lambda: [c >> 24 for c in held(lab)] == [owner_bits(TENANT_B.vlan)],
            10,
            what="tenant-b's twin's flow on the switch",
        )
        wait_for(lambda: not left_out(lab), 5, what="no flow left out in hv1's status")
        assert "installed now: port taptwa no longer has it" in scenario.controller_log(lab, "hv1")
        with capture(lab, "twin-b2", b.ns, "eth0", "udp") as to_b:
            send_frames(lab, spy, [handed_reply(41002)], count=3)
            wait_captured(to_b, is_reply(41002), what="the reply at tenant-b's twin")
    finally:
        for vm in (a, b):
            if vm.name in lab.vms:
                lab.remove_vm(vm)
