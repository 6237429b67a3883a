"""Security groups and port security with real packets, against the real Neutron (issue 25,
item 6): groups, rules, ports and floating IPs made through Neutron's API as the tenant makes
them, servers booted by Nova, and what the datapath then lets through, east-west, across the
fabric, through a FIP and through PAT. Every negative has a positive control made just before
or after it.

Both halves of issue 25 at work: the agent's keys (tests/secgroup_keys.py) and
the controller that enforces them. Times are from Neutron's answer to the API call.
"""

from __future__ import annotations

import time

import pytest

from ovsnat.lab import scenario
from ovsnat.lab.nodes import Vm
from ovsnat.lab.openstack import servers
from ovsnat.lab.reach import Pinger
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import (
    background_tcp,
    capture,
    captured,
    ping,
    tcp_connect,
    tcp_established,
)
from tests.openstack_lab import (
    boot,
    cloud_lab,
    new_fip,
    port_status,
    row_ids,
    unique,
    wait_active,
    wait_key,
)

# The keys' cases (Neutron's API to OVSDB) run here too, on this module's lab, and after
# this module's own cases the binding refusals (tests/refusal_cases.py: they need the
# agents to report their controllers' limits, as this lab's do).
from tests.secgroup_keys import *  # noqa: F403
from tests.secgroup_keys import TIMES, bridge_ids, new_group, new_port, unlimited_groups
from tests.secgroup_lab import (
    PORT,
    allow,
    blocked_within,
    boot_with,
    ends_of_sessions,
    last_inbound,
    open_group,
    reached_within,
    reaches,
    ready,
)

pytestmark = [pytest.mark.lab, pytest.mark.openstack]

LIMIT = 1.0  # s: a change takes effect within this of Neutron's answer
SERVER_PORT = 8080  # the outside server's TCP echo port (cloudlab.SERVER_PORT)


@pytest.fixture(scope="module")
def cl(request):
    with cloud_lab(request, TIMES, open_default=False, report_limits=True) as lab:
        unlimited_groups(lab)
        yield lab


# --- the default group -----------------------------------------------------------------------
def test_default_group_outside_in_dropped_egress_open_same_group_in_open(cl):
    """Two instances of the default group on two hosts, one with a FIP: the outside cannot
    open a connection to it (TCP nor ping) while its own connection out through the FIP is
    answered (the positive control of the same path: replies of an allowed connection
    pass); its group's member on the other host gets in; a port of another group does
    not, though that port's own way out works."""
    a, b = boot(cl, "hv1"), boot(cl, "hv2")
    fip = new_fip(cl, port_id=a.port_id).floating_ip_address
    other = boot_with(cl, "hv2", security_group_ids=[new_group(cl, "other").id])
    for inst in (a, b):
        ready(cl, inst, cl.tenant.network.get_port(inst.port_id).security_group_ids)
    wait_key(cl, a, "ovsnat-fip", fip)
    out = tcp_connect(cl.lab, a.ns, SERVER_IP, SERVER_PORT)
    assert out.ok and out.peer_ip == fip  # egress open, via its FIP
    assert not reaches(cl, cl.lab.srv_ns, fip)  # outside in: dropped
    assert ping(cl.lab.srv_ns, fip, count=3).received == 0
    assert reaches(cl, b.ns, a.fixed_ip)  # same group, across hosts
    assert tcp_connect(cl.lab, other.ns, SERVER_IP, SERVER_PORT).ok  # its way out
    assert not reaches(cl, other.ns, a.fixed_ip)  # another group: dropped
    assert reaches(cl, b.ns, a.fixed_ip)  # and the control again


# --- rules -----------------------------------------------------------------------------------
def test_a_tcp_rule_from_a_prefix_limits_the_source(cl):
    """TCP from 198.51.100.128/25 does not let the server (198.51.100.10) in; from
    198.51.100.0/25 it does, within 1 s of Neutron's answer."""
    group = new_group(cl, "prefix")
    allow(
        cl,
        group,
        protocol="tcp",
        port_range_min=PORT,
        port_range_max=PORT,
        remote_ip_prefix="198.51.100.128/25",
    )
    inst = boot_with(cl, "hv1", security_group_ids=[group.id])
    fip = new_fip(cl, port_id=inst.port_id).floating_ip_address
    ready(cl, inst, [group.id])
    wait_key(cl, inst, "ovsnat-fip", fip)
    assert tcp_connect(cl.lab, inst.ns, SERVER_IP, SERVER_PORT).ok  # the FIP works
    assert not reaches(cl, cl.lab.srv_ns, fip)
    allow(
        cl,
        group,
        protocol="tcp",
        port_range_min=PORT,
        port_range_max=PORT,
        remote_ip_prefix="198.51.100.0/25",
    )
    took = TIMES["prefix rule: inbound TCP open"] = reached_within(
        cl, cl.lab.srv_ns, fip, time.time()
    )
    assert took < LIMIT, took
    assert not reaches(cl, cl.lab.srv_ns, fip, port=PORT + 1)  # other ports stay shut


def test_an_icmp_rule_opens_ping_and_its_removal_closes_it(cl):
    group = open_group(cl, "icmp")
    inst = boot_with(cl, "hv2", security_group_ids=[group.id])
    fip = new_fip(cl, port_id=inst.port_id).floating_ip_address
    ready(cl, inst, [group.id])
    wait_for(lambda: reaches(cl, cl.lab.srv_ns, fip), 10, what="TCP in (the control)")
    with Pinger(cl.lab.srv_ns, fip) as pinger:
        time.sleep(0.5)
        assert not pinger.since(0)  # no ICMP rule: no reply
        rule = allow(cl, group, protocol="icmp", port_range_min=8)
        opened = pinger.first_reply_after(time.time(), timeout=5)
        cl.tenant.network.delete_security_group_rule(rule.id)
        closed = pinger.silent_after(time.time(), quiet=0.5, timeout=5)
    TIMES.update({"icmp rule: ping answered": opened, "icmp rule removed: silent": closed})
    assert opened < LIMIT and closed < LIMIT, (opened, closed)
    assert reaches(cl, cl.lab.srv_ns, fip)  # TCP still in


def test_remote_group_members_on_both_hosts_and_a_member_added_later(cl):
    """G lets in TCP from G's members. A (hv1) and B (hv2) are members: each reaches the
    other across the fabric. C (hv2, another group) does not reach A (its way out works);
    once C joins G it does, within 1 s of Neutron's answer."""
    group = new_group(cl, "remote")
    allow(
        cl,
        group,
        protocol="tcp",
        port_range_min=PORT,
        port_range_max=PORT,
        remote_group_id=group.id,
    )
    a = boot_with(cl, "hv1", security_group_ids=[group.id])
    b = boot_with(cl, "hv2", security_group_ids=[group.id])
    mine = new_group(cl, "c")
    c = boot_with(cl, "hv2", security_group_ids=[mine.id])
    for inst in (a, b):
        ready(cl, inst, [group.id])
    ready(cl, c, [mine.id])
    assert reaches(cl, b.ns, a.fixed_ip) and reaches(cl, a.ns, b.fixed_ip)
    assert tcp_connect(cl.lab, c.ns, SERVER_IP, SERVER_PORT).ok
    assert not reaches(cl, c.ns, a.fixed_ip)
    cl.tenant.network.update_port(c.port_id, security_group_ids=[group.id, mine.id])
    took = TIMES["member added: reaches a member on another host"] = reached_within(
        cl, c.ns, a.fixed_ip, time.time()
    )
    assert took < LIMIT, took


def test_a_removed_rule_ends_its_live_session_and_only_that(cl):
    """OSSN-0020: an inbound session through the FIP that only a TCP rule allowed ends
    within 1 s of the rule's removal (no segment of it reaches the guest after that), while
    a ping allowed by another rule keeps being answered."""
    group = open_group(cl, "ossn")
    allow(cl, group, protocol="icmp")
    inst = boot_with(cl, "hv1", security_group_ids=[group.id])
    fip = new_fip(cl, port_id=inst.port_id).floating_ip_address
    ready(cl, inst, [group.id])
    wait_for(lambda: reaches(cl, cl.lab.srv_ns, fip), 10, what="the FIP to answer")
    rule = next(
        r
        for r in cl.tenant.network.security_group_rules(security_group_id=group.id)
        if r.protocol == "tcp"
    )
    with (
        capture(cl.lab, unique("cap"), inst.ns, "eth0", f"tcp port {PORT}") as pcap,
        Pinger(cl.lab.srv_ns, fip, interval=0.01) as pinger,
    ):
        session = background_tcp(cl.lab, cl.lab.srv_ns, fip, PORT, hold=6)
        wait_for(lambda: tcp_established(cl.lab.srv_ns, fip, PORT), 10, what="the session")
        time.sleep(0.5)
        cl.tenant.network.delete_security_group_rule(rule.id)
        answered = time.time()
        result = session.result()
    inbound = last_inbound(pcap, SERVER_IP)
    assert any(t < answered for t in inbound)  # it ran before (control)
    ended = max(inbound) - answered
    TIMES["rule removed: last segment of its session"] = ended
    assert ended < LIMIT, ended
    assert "HELD" not in result, result
    assert pinger.lost() == 0 and pinger.gap() < 0.5, (pinger.lost(), pinger.gap())
    assert not reaches(cl, cl.lab.srv_ns, fip)


def test_a_removed_fip_ends_its_inbound_session_and_others_keep_going(cl):
    """The FIP goes: its inbound session ends within 1 s (no segment reaches the guest
    after that), while a session to the same guest from its network (which never used the
    FIP) keeps echoing."""
    group = open_group(cl, "fipgone")
    inst = boot_with(cl, "hv2", security_group_ids=[group.id])
    neighbour = boot_with(cl, "hv1", security_group_ids=[group.id])
    fip = new_fip(cl, port_id=inst.port_id)
    address = fip.floating_ip_address
    ready(cl, inst, [group.id])
    ready(cl, neighbour, [group.id])
    wait_for(lambda: reaches(cl, cl.lab.srv_ns, address), 10, what="the FIP to answer")
    with capture(cl.lab, unique("cap"), inst.ns, "eth0", f"tcp port {PORT}") as pcap:
        inbound = background_tcp(cl.lab, cl.lab.srv_ns, address, PORT, hold=6)
        local = background_tcp(cl.lab, neighbour.ns, inst.fixed_ip, PORT, hold=6)
        wait_for(
            lambda: (
                tcp_established(cl.lab.srv_ns, address, PORT)
                and tcp_established(neighbour.ns, inst.fixed_ip, PORT)
            ),
            10,
            what="both sessions",
        )
        time.sleep(0.5)
        cl.tenant.network.update_ip(fip, port_id=None)
        answered = time.time()
        held_in, held_local = inbound.result(), local.result()
    times = last_inbound(pcap, SERVER_IP)
    assert any(t < answered for t in times)
    TIMES["FIP removed: last segment of its session"] = max(times) - answered
    assert max(times) - answered < LIMIT
    assert "HELD" not in held_in and "HELD" in held_local, (held_in, held_local)


# --- port security ---------------------------------------------------------------------------
def spoofed_ping(cl, src, dst, spoof: str) -> None:
    """Pings from an address the port was never given (the destination's MAC set by hand:
    what is judged is the IP source, not whether ARP from that address is answered)."""
    run(["ip", "addr", "add", f"{spoof}/32", "dev", "eth0"], ns=src.ns, check=False)
    run(["ip", "neigh", "replace", dst.fixed_ip, "lladdr", dst.mac, "dev", "eth0"], ns=src.ns)
    run(
        ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "-I", spoof, dst.fixed_ip],
        ns=src.ns,
        check=False,
    )


def test_port_security_off_lets_that_port_spoof_and_no_other(cl):
    """A has port security off: its frames from an address Neutron never gave it reach B;
    C's (port security on) do not, though C's own address does. A is filtered by no group:
    the outside reaches it through its FIP."""
    target = new_group(cl, "target")
    allow(cl, target, protocol="icmp")
    b = boot_with(cl, "hv1", security_group_ids=[target.id])
    a = boot_with(cl, "hv2", is_port_security_enabled=False, security_group_ids=[])
    c = boot_with(cl, "hv2")
    ready(cl, b, [target.id])
    wait_key(cl, a, "ovsnat-port-security", "off")
    wait_key(cl, c, "ovsnat-installed", "true")
    from scapy.layers.inet import ICMP, IP

    with capture(cl.lab, unique("cap"), b.ns, "eth0", "icmp") as pcap:
        spoofed_ping(cl, a, b, "10.1.0.201")
        spoofed_ping(cl, c, b, "10.1.0.202")
        run(
            ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", b.fixed_ip], ns=c.ns, check=False
        )  # C's own address: the control
    sources = {p[IP].src for p in captured(pcap, lambda p: ICMP in p and p[ICMP].type == 8)}
    assert "10.1.0.201" in sources and c.fixed_ip in sources, sources
    assert "10.1.0.202" not in sources, sources
    fip = new_fip(cl, port_id=a.port_id).floating_ip_address
    wait_for(lambda: reaches(cl, cl.lab.srv_ns, fip), 10, what="A through its FIP")


def test_an_allowed_address_pair_vip_fails_over_with_its_fip(cl):
    """keepalived's way: A and B both have VIP as an allowed address pair, A holds it,
    then B takes it over (its gratuitous ARP). C in the network reaches the VIP on each
    holder, and so does the outside through the FIP of the VIP's port; D, without the
    pair, cannot take the VIP (control: D's own address works)."""
    group = open_group(cl, "vip")
    allow(
        cl,
        group,
        protocol="tcp",
        port_range_min=PORT,
        port_range_max=PORT,
        remote_ip_prefix="10.1.0.0/24",
    )
    # The VIP's port: its address is Neutron's to allocate (a fixed one may be a server's).
    vip_port = new_port(cl, "vip")
    VIP = vip_port.fixed_ips[0]["ip_address"]
    fip = new_fip(cl, port_id=vip_port.id).floating_ip_address
    pair = [{"ip_address": VIP}]
    a = boot_with(cl, "hv1", security_group_ids=[group.id], allowed_address_pairs=pair)
    b = boot_with(cl, "hv2", security_group_ids=[group.id], allowed_address_pairs=pair)
    c = boot_with(cl, "hv2", security_group_ids=[group.id])
    d = boot_with(cl, "hv1", security_group_ids=[group.id])
    for inst in (a, b, c, d):
        ready(cl, inst, [group.id])

    def hold(inst) -> float:
        run(["ip", "addr", "add", f"{VIP}/24", "dev", "eth0"], ns=inst.ns)
        cl.lab.announce(Vm(inst.name, inst.ns, VIP, inst.mac, inst.host, inst.tap), wait=True)
        return time.time()

    def release(inst) -> None:
        run(["ip", "addr", "del", f"{VIP}/24", "dev", "eth0"], ns=inst.ns)

    t = hold(a)
    TIMES["VIP on A: reached from C"] = reached_within(cl, c.ns, VIP, t)
    TIMES["VIP on A: reached through its FIP"] = reached_within(cl, cl.lab.srv_ns, fip, t)
    release(a)
    t = hold(b)
    TIMES["VIP moved to B: reached from C"] = reached_within(cl, c.ns, VIP, t)
    TIMES["VIP moved to B: reached through its FIP"] = reached_within(cl, cl.lab.srv_ns, fip, t)
    assert TIMES["VIP moved to B: reached from C"] < LIMIT
    assert TIMES["VIP moved to B: reached through its FIP"] < LIMIT
    release(b)
    hold(d)
    assert reaches(cl, c.ns, d.fixed_ip)  # D itself: the control
    time.sleep(LIMIT)
    assert not reaches(cl, c.ns, VIP)  # D has no pair: not its VIP


# --- admin state -----------------------------------------------------------------------------
def test_admin_down_drops_everything_within_1s_and_up_restores_it(cl):
    group = open_group(cl, "admin")
    allow(cl, group, protocol="icmp")
    inst = boot_with(cl, "hv1", security_group_ids=[group.id])
    fip = new_fip(cl, port_id=inst.port_id).floating_ip_address
    ready(cl, inst, [group.id])
    wait_active(cl, inst.port_id)
    with Pinger(cl.lab.srv_ns, fip) as inbound, Pinger(inst.ns, SERVER_IP) as outbound:
        inbound.first_reply_after(time.time(), timeout=10)  # both answer before
        outbound.first_reply_after(time.time(), timeout=10)
        cl.tenant.network.update_port(inst.port_id, is_admin_state_up=False)
        t = time.time()
        down_in = inbound.silent_after(t, quiet=0.5, timeout=5)
        down_out = outbound.silent_after(t, quiet=0.5, timeout=5)
        wait_for(
            lambda: port_status(cl, inst.port_id) == "DOWN", 10, interval=0.05, what="the port DOWN"
        )
        cl.tenant.network.update_port(inst.port_id, is_admin_state_up=True)
        t = time.time()
        up_in = inbound.first_reply_after(t, timeout=5)
        up_out = outbound.first_reply_after(t, timeout=5)
    wait_active(cl, inst.port_id, timeout=10)
    TIMES.update(
        {
            "admin down: inbound silent": down_in,
            "admin down: outbound silent": down_out,
            "admin up: inbound back": up_in,
            "admin up: outbound back": up_out,
        }
    )
    assert max(down_in, down_out, up_in, up_out) < LIMIT, TIMES


# --- live migration --------------------------------------------------------------------------
def test_a_live_migration_keeps_an_allowed_inbound_session_and_the_groups_follow(cl):
    group = open_group(cl, "migrate")
    inst = boot_with(cl, "hv1", security_group_ids=[group.id])
    fip = new_fip(cl, port_id=inst.port_id).floating_ip_address
    ready(cl, inst, [group.id])
    wait_active(cl, inst.port_id)
    wait_for(lambda: reaches(cl, cl.lab.srv_ns, fip), 10, what="the FIP to answer")
    # Broken once in about 10 clean runs (a reset during the move, stop 38): both ends are
    # captured so that a break says who ended the session, and when.
    with (
        capture(cl.lab, unique("cap"), inst.ns, "eth0", f"tcp port {PORT}") as guest_pcap,
        capture(cl.lab, unique("cap"), cl.lab.srv_ns, "any", f"tcp port {PORT}") as srv_pcap,
    ):
        session = background_tcp(cl.lab, cl.lab.srv_ns, fip, PORT, hold=8)
        wait_for(lambda: tcp_established(cl.lab.srv_ns, fip, PORT), 10, what="the session")
        assert servers.live_migrate(cl, inst, "hv2").status == "completed"
        held = session.result()
    assert "HELD" in held, (
        held,
        inst.guest.times,
        {"guest": ends_of_sessions(guest_pcap), "server": ends_of_sessions(srv_pcap)},
        inst.guest.dhcp_events(),
        {h: scenario.controller_log(cl.lab, h)[-4000:] for h in ("hv1", "hv2")},
    )
    assert row_ids(cl, "hv2", inst.tap)["ovsnat-sg"] == group.id
    assert f"ovsnat-sg-{group.id}" in bridge_ids(cl, "hv2")
    wait_for(
        lambda: f"ovsnat-sg-{group.id}" not in bridge_ids(cl, "hv1"),
        10,
        what="the group's keys gone from the source",
    )
    assert reaches(cl, cl.lab.srv_ns, fip)
    blocked = new_group(cl, "closed")
    cl.tenant.network.update_port(inst.port_id, security_group_ids=[blocked.id])
    took = TIMES["after migration: group changed, inbound blocked"] = blocked_within(
        cl, cl.lab.srv_ns, fip, time.time()
    )
    assert took < LIMIT, took


from tests.refusal_cases import *  # noqa: E402,F403  (last: they run after the rest)
