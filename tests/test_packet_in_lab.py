"""A VM that sends its host's controller malformed frames for 20 s (a whole minute under
`make test-long`: marker long) (DHCP with
zero-length and truncated options, no options, a 60-byte IP header in a short frame; ARP
and RARP with bad lengths; ICMP errors through its FIP quoting garbage; TTL 1 with a bad
header) cannot shake it: the controller never resyncs or exits, counts what it dropped and
why, quarantines the flood at the switch, and every other VM's traffic is unharmed (an
inbound ping through a FIP, PAT connections, a DHCP renewal, all during the attack).

Lab: one hypervisor with four VMs: the attacker (with a FIP, so its ICMP errors are
translated by the controller), a FIP VM pinged from outside, a PAT VM and a DHCP client.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

from ovsnat.lab import dhcpclient, scenario
from ovsnat.lab.reach import Pinger
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import start_server, tcp_connect
from tests.frames import dhcp_request, eth, ipv4

pytestmark = pytest.mark.lab

SNAT, ATTACKER_FIP, VICTIM_FIP = "203.0.113.11", "203.0.113.61", "203.0.113.62"
ROUND_INTERVAL = 0.05  # 20 rounds a second of every malformed frame below
ROUTER = bytes.fromhex("020000000001")


def malformed(mac_text: str, ip_text: str) -> list[bytes]:
    """One round of the attack, from the attacker's own MAC and address (so each frame
    passes anti-spoofing and reaches the path it aims at)."""
    mac = bytes.fromhex(mac_text.replace(":", ""))
    src = bytes(int(b) for b in ip_text.split("."))
    server = bytes(int(b) for b in SERVER_IP.split("."))

    def icmp_error(kind: int, quote: bytes) -> bytes:
        icmp = struct.pack("!BBHI", kind, 4, 0, 0) + quote
        return eth(ROUTER, mac, 0x0800, ipv4(src, server, 1, icmp))

    arp_bad_len = struct.pack("!HHBBH", 1, 0x0800, 0, 4, 1) + bytes(20)
    return [
        dhcp_request(mac, b"\x35\x00\xff"),  # type option, length 0
        dhcp_request(mac, b"\x35\x01\x01\x32\x09\x0a"),  # truncated option
        dhcp_request(mac, b""),  # no options at all
        dhcp_request(mac, b"\x35\x01\x01\xff", magic=False),  # no magic cookie
        eth(b"\xff" * 6, mac, 0x0800, b"\x4f" + bytes(19) + b"\x00\x44\x00\x43"),  # IHL 15
        eth(b"\xff" * 6, mac, 0x0806, arp_bad_len),  # ARP, hlen 0
        eth(b"\xff" * 6, mac, 0x0806, bytes(10)),  # truncated ARP
        eth(b"\xff" * 6, mac, 0x8035, b"\xff" * 28),  # garbage RARP
        icmp_error(3, b"\x40" + bytes(27)),  # quoted IHL 0
        icmp_error(11, b"\x4f\x00"),  # quote cut short
        eth(ROUTER, mac, 0x0800, ipv4(src, server, 17, bytes(4), ttl=1, ihl=15)),
    ]


@pytest.fixture(scope="module")
def lab(module_lab):
    lab = module_lab
    lab.add_host("hv1")
    scenario.start_controller(lab, "hv1", SNAT)
    lab.add_vm(
        "atk",
        "hv1",
        "10.0.0.31",
        "02:00:0a:00:00:1f",
        {"ovsnat-fixed-ip": "10.0.0.31", "ovsnat-fip": ATTACKER_FIP},
    )
    lab.add_vm(
        "vfip",
        "hv1",
        "10.0.0.32",
        "02:00:0a:00:00:20",
        {"ovsnat-fixed-ip": "10.0.0.32", "ovsnat-fip": VICTIM_FIP},
    )
    lab.add_vm("vpat", "hv1", "10.0.0.33", "02:00:0a:00:00:21", {"ovsnat-fixed-ip": "10.0.0.33"})
    lab.add_vm(
        "vdhcp",
        "hv1",
        "10.0.0.34",
        "02:00:0a:00:00:22",
        {"ovsnat-fixed-ip": "10.0.0.34"},
        dhcp=True,
    )
    dhcpclient.wait_bound(lab, lab.vms["vdhcp"], timeout=20)
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    scenario.wait_in_sync(lab, "hv1")
    return lab


@pytest.mark.parametrize(
    "attack_seconds", [20, pytest.param(60, marks=pytest.mark.long)], ids=["20s", "a_minute"]
)
def test_malformed_frames_from_a_vm_shake_nothing(lab, attack_seconds):
    atk, vdhcp = lab.vms["atk"], lab.vms["vdhcp"]
    before = scenario.status(lab, "hv1")
    log_offset = len(scenario.controller_log(lab, "hv1"))
    pid = lab.procs["ctl-hv1"]["pid"]
    frames = malformed(atk.mac, atk.ip)
    rounds = int(attack_seconds / ROUND_INTERVAL)
    with Pinger(lab.srv_ns, VICTIM_FIP) as pinger:
        lab.spawn(
            "attack",
            lab.python(
                "-m",
                "ovsnat.lab.peer",
                "send",
                "--iface",
                "eth0",
                "--count",
                str(rounds),
                "--interval",
                str(ROUND_INTERVAL),
                *[f.hex() for f in frames],
            ),
            ns=atk.ns,
        )
        started, pat_ok, renewals = time.time(), 0, 0
        while time.time() - started < attack_seconds:
            assert tcp_connect(lab, lab.vms["vpat"].ns, SERVER_IP, 8080).peer_ip == SNAT
            pat_ok += 1
            if pat_ok % 5 == 0:  # a DHCP renewal every ~10 s
                seen = len(dhcpclient.events(lab, vdhcp))
                dhcpclient.renew(lab, vdhcp)
                wait_for(
                    lambda: len(dhcpclient.events(lab, vdhcp)) > seen,
                    10,
                    what="vdhcp's renewal during the attack",
                )
                renewals += 1
            time.sleep(2)
        wait_for(
            lambda: "SENT" in Path(lab.procs["attack"]["log"]).read_text(),
            attack_seconds,
            what="the attacker's last round",
        )
    after = scenario.status(lab, "hv1")
    log = scenario.controller_log(lab, "hv1")[log_offset:]
    # The controller is the same process, never resynced, never faulted.
    os.kill(pid, 0)
    assert after["stats"]["faults"] == before["stats"]["faults"] == 0
    assert after["stats"]["syncs"] == before["stats"]["syncs"]
    assert "recovering from a fault" not in log and "Traceback" not in log
    # Positive control: the frames reached it, were dropped by reason, and the flood was
    # quarantined at the switch.
    drops = after["packet_in_drops"]
    assert "error" not in drops, drops
    assert any(r.startswith("dhcp_") for r in drops) and drops.get("over_share", 0) > 0
    assert drops.get("not_relayed", 0) > 0  # the ICMP and TTL paths too
    assert after["stats"]["packet_in_quarantines"] > before["stats"]["packet_in_quarantines"]
    # Everyone else was served throughout.
    assert pat_ok >= attack_seconds / 4 and renewals >= attack_seconds // 20
    # Losses are what the attack could cause (flows removed or rewritten, a resync). The
    # longest gap between replies is printed, not asserted: it was 3.9 s once, with no probe
    # lost, while another suite loaded this 2-core machine (replies late, not lost: netdev's
    # main thread forwards the lab's veths and is as late as the machine makes it).
    assert pinger.lost() <= len(pinger.replies) // 100, (pinger.lost(), len(pinger.replies))
    print(f"\nvictim FIP: {len(pinger.replies)} replies, longest gap {pinger.gap():.2f} s")
