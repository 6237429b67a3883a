"""Packet-ins metered per port and kind, decided without a switch (tests/hostsim.py): a port
over its share is quarantined at the switch for that kind only while every other port keeps
its own share; a dark FIP stops copying its VM's frames up while they cannot change
anything; the budget's memory stays bounded whatever the ports send."""

from __future__ import annotations

import struct

from ovsnat.compile.actions import Controller
from ovsnat.compile.flows import COOKIE_QUARANTINE, cookie_kind
from ovsnat.compile.pipeline import CLASSIFY, EGRESS
from ovsnat.core import punts
from ovsnat.packets import arp
from tests.frames import eth, ipv4, mac
from tests.hostsim import SimHost, vm_row

FIP = "203.0.113.20"
FOREIGN = "02:99:00:00:00:01"


def ttl_one(n: int) -> bytes:
    return eth(
        b"\x02\x00\x00\x00\x00\x01",
        mac(n),
        0x0800,
        ipv4(bytes([10, 0, 0, n]), bytes([198, 51, 100, 10]), 17, bytes(8), ttl=1),
    )


def test_a_port_flooding_ttl_expired_is_quarantined_and_another_port_is_still_answered():
    host = SimHost(fip_activation="immediate").start()
    host.plug(vm_row(5), vm_row(6))
    share = punts.SHARES["ttl"]
    for _ in range(3 * share.burst):
        host.from_vm(5, ttl_one(5), table=EGRESS)
    answered = [f for p, f in host.switch.packet_outs if p == 5]
    assert len(answered) == share.burst  # time exceeded, up to its share
    [(key, hard)] = host.switch.temporary.items()
    assert cookie_kind(key[1]) == COOKIE_QUARANTINE and key[0] == EGRESS
    assert hard == punts.QUARANTINE_S
    stats = host.ctl.status(host.now)
    assert stats["packet_in_drops"]["over_share"] == 2 * share.burst
    assert stats["stats"]["packet_in_quarantines"] == 1
    host.from_vm(6, ttl_one(6), table=EGRESS)  # the other port: its own share
    assert [p for p, _ in host.switch.packet_outs].count(6) == 1
    host.advance(punts.QUARANTINE_S + 1)
    host.from_vm(5, ttl_one(5), table=EGRESS)  # the share is back
    assert [p for p, _ in host.switch.packet_outs].count(5) == share.burst + 1


def test_the_budget_stays_bounded_however_many_ports_send():
    budget = punts.PortBudget()
    for port in range(50_000):
        budget.admit(port, "presence", now=port * 10.0)  # each long full again
    assert len(budget.tokens) + len(budget.quarantined) <= punts.MAX_TRACKED


def test_a_quarantine_is_per_kind():
    budget = punts.PortBudget()
    results = [budget.admit(7, "dhcp", 0.0) for _ in range(punts.SHARES["dhcp"].burst + 2)]
    assert results[-2:] == ["quarantine", "dropped"]
    assert budget.admit(7, "ttl", 0.0) == "yes"
    budget.forget_port(7)
    assert budget.admit(7, "dhcp", 0.0) == "yes"


def _copies(host: SimHost, ofport: int) -> set:
    """Which of the port's classify flows copy frames up (by protocol)."""
    name = f"tapvm{ofport}"
    return {
        f.match.get("proto") or "any"
        for f in host.ctl.host.owner_flows(name)
        if f.table == CLASSIFY and any(isinstance(a, Controller) for a in f.actions)
    }


def _claim(host: SimHost) -> None:
    frame = arp.build(arp.REPLY, FOREIGN, FIP, "0.0.0.0", tha=host.host_mac, eth_dst=host.host_mac)
    host.from_uplink(frame)


def test_a_dark_fip_in_conflict_stops_copying_its_vm_and_starts_again_when_it_ends():
    host = SimHost().start()
    host.plug(vm_row(11, FIP))
    host.advance(0.15)
    _claim(host)  # a foreign device answers the probe
    host.advance(0.2)
    assert host.ctl.fips.presence.state("tapvm11") == "conflict"
    assert _copies(host, 11) == {"ip", "arp", "any"}
    host.from_vm(
        11,
        eth(b"\xff" * 6, mac(11), 0x0800, ipv4(bytes([10, 0, 0, 11]), b"\xff" * 4, 17, bytes(8))),
    )
    assert _copies(host, 11) == set()  # heard: its frames change nothing
    assert not host.fip_live(FIP)
    host.advance(1.5)  # a round nobody answers: live
    assert host.fip_live(FIP)


def test_a_held_fip_copies_again_once_the_foreign_claim_is_gone():
    """After the conflict, another ovsnat host answers (a migration): the VM's first frame
    must count again, so the copies come back."""
    host = SimHost().start()
    host.plug(vm_row(11, FIP))
    host.advance(0.15)
    _claim(host)
    host.advance(0.2)
    host.from_vm(11, eth(b"\xff" * 6, mac(11), 0x8035, bytes(28)))
    assert _copies(host, 11) == set()
    fip_mac = "02:5a:cb:00:71:14"  # the FIP's own MAC: an ovsnat host
    host.advance(0.7)  # the next round starts...
    frame = arp.build(arp.REPLY, fip_mac, FIP, "0.0.0.0", tha=host.host_mac, eth_dst=host.host_mac)
    host.from_uplink(frame)
    host.advance(0.35)
    assert host.ctl.fips.presence.state("tapvm11") == "held"
    assert _copies(host, 11) == {"ip", "arp", "any"}
    host.from_vm(11, eth(b"\xff" * 6, mac(11), 0x8035, bytes(28)))
    host.advance(0.2)
    assert host.fip_live(FIP)


def test_a_gateway_arp_with_a_group_mac_is_not_learned():
    host = SimHost(external_gateway_mac="").start()
    for bad in ("ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "00:00:00:00:00:00"):
        host.from_uplink(arp.build(arp.REPLY, bad, "203.0.113.1", "203.0.113.11"), table=0)
    assert host.ctl.gateways.mac is None
    assert host.ctl.status(host.now)["packet_in_drops"]["bad_gateway_mac"] == 3
    host.from_uplink(
        arp.build(arp.REPLY, "02:00:00:00:00:fe", "203.0.113.1", "203.0.113.11"), table=0
    )
    assert str(host.ctl.gateways.mac).lower().replace("-", ":") == "02:00:00:00:00:fe"


def test_a_handler_fault_is_counted_and_logged_never_a_resync(caplog, monkeypatch):
    host = SimHost(fip_activation="immediate").start()
    host.plug(vm_row(5))
    syncs = host.ctl.stats.counts["syncs"]

    def broken(*args):
        raise struct.error("a defect")

    monkeypatch.setattr(host.ctl.dhcp, "packet_in", broken)
    from ovsnat.core import dhcp
    from tests.test_dhcp import client

    for _ in range(3):
        host.from_vm(5, client(dhcp.DISCOVER, "02:00:0a:00:00:05"))
    stats = host.ctl.status(host.now)
    assert stats["packet_in_drops"]["error"] == 3 and stats["stats"]["faults"] == 0
    assert host.ctl.stats.counts["syncs"] == syncs and host.ctl.host is not None
    assert sum("fault handling a packet-in" in r.message for r in caplog.records) == 1


# --- bounded memory: maps keyed by what VMs or the network control ----------------------------
def test_claims_from_many_macs_are_counted_but_logged_once_a_minute_and_forgotten_with_the_port(
    caplog,
):
    host = SimHost(fip_activation="immediate").start()
    host.plug(vm_row(10, "203.0.113.10"))
    for n in range(300):
        host.from_uplink(arp.garp(f"02:99:00:00:{n >> 8:02x}:{n & 0xFF:02x}", "203.0.113.10"))
    assert host.ctl.stats.counts["fip_conflicts"] == 300
    assert sum("claimed on the uplink" in r.message for r in caplog.records) == 1
    assert len(host.ctl.fips.reported) == 1
    host.unplug("tapvm10")
    assert host.ctl.fips.reported == {}


def test_networks_no_port_holds_are_forgotten():
    import gc

    from ovsnat.cli.golden import NET_A
    from ovsnat.model import networks

    host = SimHost(fip_activation="immediate", fabric_port="fabric").start()
    for vlan in range(200, 260):
        host.plug(vm_row(20, **{**NET_A, "ovsnat-network": f"n{vlan}", "ovsnat-vlan": str(vlan)}))
    gc.collect()
    assert len(networks._interned) < 10


def test_dhcp_leases_of_ports_that_left_are_forgotten():
    from ovsnat.core import dhcp
    from tests.test_dhcp import client

    host = SimHost(fip_activation="immediate").start()
    from dataclasses import replace

    for round_ in range(3):
        for n in range(40, 80):
            row = replace(vm_row(n, ofport=n + 100 * round_), name=f"tap{round_}-{n}")
            host.plug(row)
            mac_ = f"02:00:0a:00:00:{n:02x}"
            host.from_vm(n + 100 * round_, client(dhcp.REQUEST, mac_, requested=f"10.0.0.{n}"))
            host.unplug(row.name)
    assert host.ctl.stats.counts["dhcp_acks"] == 120  # positive control
    assert len(host.ctl.dhcp.leases) <= 64 + 2 * len(host.ctl.host.valid)
