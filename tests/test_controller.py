"""The controller (real ryu-manager, real OVS, real packets): it programs a host from its
OVSDB port events, fast, and never disturbs traffic when it restarts."""

from __future__ import annotations

import re
import time

import pytest

from ovsnat.compile.compiler import compile_state
from ovsnat.compile.flows import is_ours
from ovsnat.lab import scenario
from ovsnat.lab.sh import pid_alive, run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import (
    background_ping,
    background_tcp,
    parse_ping,
    ping,
    start_server,
    tcp_connect,
    tcp_established,
    udp_request,
)

pytestmark = pytest.mark.lab

SNAT = "203.0.113.11"
FIP1, FIP2 = "203.0.113.10", "203.0.113.20"


def vm_ids(ip: str, fip: str | None = None) -> dict:
    return {"ovsnat-fixed-ip": ip, **({"ovsnat-fip": fip} if fip else {})}


def installed_text(host) -> set[str]:
    """ovsnat's flows on the switch, exactly as ovs-ofctl prints them (no counters)."""
    out = host.ofctl("dump-flows", "br-int", "--no-stats")
    lines = {line.strip() for line in out.splitlines() if "priority=" in line}
    return {
        line for line in lines if is_ours(int(re.match(r"cookie=(0x[0-9a-f]+)", line).group(1), 16))
    }


def desired_text(lab, host: str) -> set[str]:
    cfg = scenario.host_config(lab, host, SNAT)
    return {f.text() for f in compile_state(scenario.desired_state_from_ovsdb(lab, host, cfg))}


def converged(lab, host: str = "hv1", timeout: float = 5) -> None:
    """Wait until the switch holds exactly the desired flows; on timeout show the diff."""
    try:
        wait_for(
            lambda: installed_text(lab.hosts[host]) == desired_text(lab, host),
            timeout,
            what="installed flows to equal the desired flows",
        )
    except Exception:
        have, want = installed_text(lab.hosts[host]), desired_text(lab, host)
        pytest.fail(f"not converged:\nmissing {sorted(want - have)}\nstale {sorted(have - want)}")


def reaches(fn, timeout: float = 3.0, interval: float = 0.05):
    """Retry fn() until it returns something truthy; returns (value, seconds taken)."""
    t0 = time.monotonic()
    while True:
        value = fn()
        if value or time.monotonic() - t0 > timeout:
            return value, time.monotonic() - t0
        time.sleep(interval)


@pytest.fixture(scope="module")
def ctl_host(module_lab):
    lab = module_lab
    lab.add_host("hv1")
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    start_server(lab, "srv-udp", lab.srv_ns, "udp", 8080)
    scenario.start_controller(lab, "hv1", SNAT)
    wait_for(
        lambda: (
            "flows in sync" in scenario.controller_log(lab, "hv1")
            or "sync:" in scenario.controller_log(lab, "hv1")
        ),
        20,
        what="controller sync",
    )
    return lab


@pytest.fixture(scope="module")
def base(ctl_host):
    """vm1 (FIP1) and vm2 (PAT), for the tests that need VMs which already work. No test
    changes them; tests that plug, change or unplug VMs use VMs of their own."""
    lab = ctl_host
    lab.add_vm("vm1", "hv1", "10.0.0.11", "02:00:0a:00:00:0b", vm_ids("10.0.0.11", FIP1))
    vm2 = lab.add_vm("vm2", "hv1", "10.0.0.12", "02:00:0a:00:00:0c", vm_ids("10.0.0.12"))
    wait_for(lambda: ping(lab.srv_ns, FIP1, count=1, wait=0.2).received, 15, what="vm1's FIP")
    wait_for(
        lambda: tcp_connect(lab, vm2.ns, SERVER_IP, 8080, timeout=0.3).ok, 15, what="vm2's PAT"
    )
    return lab


@pytest.fixture
def ctl(ctl_host):
    """The module's host, settled, with its controller running (a test that failed midway
    may have left it stopped); the VMs a test adds are unplugged after it."""
    lab = ctl_host
    info = lab.procs.get("ctl-hv1")
    if not info or not pid_alive(info["pid"]):
        offset = len(scenario.controller_log(lab, "hv1"))
        scenario.start_controller(lab, "hv1")
        wait_for(
            lambda: re.search(
                r"datapath \w+ connected", scenario.controller_log(lab, "hv1")[offset:]
            ),
            20,
            what="the controller to connect",
        )
    converged(lab)
    existing = set(lab.vms)
    yield lab
    for name in set(lab.vms) - existing:
        lab.remove_vm(lab.vms[name])


def test_a_plugged_vm_works_within_one_second_through_fip_and_pat(ctl):
    new1 = ctl.add_vm(
        "new1", "hv1", "10.0.0.21", "02:00:0a:00:00:15", vm_ids("10.0.0.21", "203.0.113.31")
    )
    ok, fip_s = reaches(lambda: ping(ctl.srv_ns, "203.0.113.31", count=1, wait=0.1).received)
    assert ok and fip_s <= 1.0, f"FIP reachable after {fip_s:.2f}s"
    new2 = ctl.add_vm("new2", "hv1", "10.0.0.22", "02:00:0a:00:00:16", vm_ids("10.0.0.22"))
    reply, pat_s = reaches(lambda: tcp_connect(ctl, new2.ns, SERVER_IP, 8080, timeout=0.3).ok)
    assert reply and pat_s <= 1.0, f"PAT works after {pat_s:.2f}s"
    assert tcp_connect(ctl, new2.ns, SERVER_IP, 8080).peer_ip == SNAT
    assert tcp_connect(ctl, new1.ns, SERVER_IP, 8080).peer_ip == "203.0.113.31"
    converged(ctl)


def test_a_silent_vm_is_reachable_through_its_fip_within_a_second_of_the_plug(ctl):
    """A VM with a static address that only serves never speaks first (no DHCP, no GARP, IPv6
    off): its FIP must not wait for a frame from it. Other addresses and an ofport than the
    rest of the suite uses, as a host built from the README alone would have."""
    t0 = time.monotonic()
    vm = ctl.add_vm(
        "quiet",
        "hv1",
        "10.0.0.77",
        "02:00:0a:00:00:4d",
        vm_ids("10.0.0.77", "203.0.113.177"),
        boot=False,
        ofport=4711,
    )
    start_server(ctl, "quiet-tcp", vm.ns, "tcp", 7077)
    ok, _ = reaches(lambda: ping(ctl.srv_ns, "203.0.113.177", count=1, wait=0.1).received)
    took = time.monotonic() - t0
    assert ok and took <= 1.0, f"FIP of a silent VM reachable after {took:.2f}s"
    assert tcp_connect(ctl, ctl.srv_ns, "203.0.113.177", 7077).ok
    log = scenario.controller_log(ctl, "hv1")
    assert "port tapquiet: no other host answered the probes; activating its FIP" in log
    assert "first frame seen" not in log.split("tapquiet")[-1]


def test_after_programming_the_switch_holds_exactly_the_desired_flows(base, ctl):
    converged(ctl)
    assert len(installed_text(ctl.hosts["hv1"])) > 40


def test_changing_and_removing_a_fip(ctl):
    vm = ctl.add_vm("vm3", "hv1", "10.0.0.13", "02:00:0a:00:00:0d", vm_ids("10.0.0.13", FIP2))
    host = ctl.hosts["hv1"]
    ok, _ = reaches(lambda: udp_request(ctl, vm.ns, SERVER_IP, 8080).peer_ip == FIP2)
    assert ok
    host.vsctl("set", "Interface", vm.tap, 'external_ids:ovsnat-fip="203.0.113.21"')
    ok, took = reaches(lambda: udp_request(ctl, vm.ns, SERVER_IP, 8080).peer_ip == "203.0.113.21")
    assert ok, "the new FIP is not used"
    assert ping(ctl.srv_ns, FIP2, count=2, wait=0.3).received == 0  # old FIP gone
    assert ping(ctl.srv_ns, "203.0.113.21", count=1).received == 1
    host.vsctl("remove", "Interface", vm.tap, "external_ids", "ovsnat-fip")
    ok, _ = reaches(lambda: udp_request(ctl, vm.ns, SERVER_IP, 8080).peer_ip == SNAT)
    assert ok, "without its FIP the VM does not fall back to PAT"
    converged(ctl)


def test_unplugged_vm_loses_its_flows_and_its_fip_stops_answering_arp(base, ctl):
    vm = ctl.add_vm(
        "vm4", "hv1", "10.0.0.14", "02:00:0a:00:00:0e", vm_ids("10.0.0.14", "203.0.113.14")
    )
    ok, _ = reaches(lambda: ping(ctl.srv_ns, "203.0.113.14", count=1, wait=0.2).received)
    assert ok
    ctl.unplug(vm)
    host = ctl.hosts["hv1"]
    wait_for(
        lambda: (
            not any("10.0.0.14" in line or "203.0.113.14" in line for line in installed_text(host))
        ),
        3,
        what="vm4's flows gone",
    )
    run(["ip", "-n", ctl.out_ns, "neigh", "flush", "dev", "eth0"])
    assert ping(ctl.out_ns, "203.0.113.14", count=2, wait=0.3).received == 0
    assert "lladdr" not in run(["ip", "-n", ctl.out_ns, "neigh", "show", "203.0.113.14"]).stdout
    # Positive control: the outside router resolves and reaches another FIP of this host now.
    assert ping(ctl.out_ns, FIP1, count=1).received == 1
    assert "lladdr" in run(["ip", "-n", ctl.out_ns, "neigh", "show", FIP1]).stdout
    converged(ctl)


def test_a_port_with_bad_external_ids_is_skipped_with_one_log_line_others_keep_working(base, ctl):
    offset = len(scenario.controller_log(ctl, "hv1"))
    owner = ctl.add_vm(
        "vm6", "hv1", "10.0.0.16", "02:00:0a:00:00:10", vm_ids("10.0.0.16", "203.0.113.16")
    )
    wait_for(
        lambda: ping(ctl.srv_ns, "203.0.113.16", count=1, wait=0.2).received, 5, what="vm6's FIP"
    )
    bad = ctl.add_vm(
        "vm5",
        "hv1",
        "10.0.0.15",
        "02:00:0a:00:00:0f",
        {"ovsnat-fixed-ip": "10.0.0.300", "ovsnat-fip": "203.0.113.15"},
    )
    clash = ctl.add_vm(
        "vm7", "hv1", "10.0.0.17", "02:00:0a:00:00:11", vm_ids("10.0.0.17", "203.0.113.16")
    )  # vm6 has this FIP already
    wait_for(
        lambda: "(vm7)" in scenario.controller_log(ctl, "hv1")[offset:], 3, what="clash logged"
    )
    log = scenario.controller_log(ctl, "hv1")[offset:]
    assert log.count("external_ids:ovsnat-fixed-ip: '10.0.0.300' is not an IPv4 address") == 1
    assert log.count("FIP 203.0.113.16 is already used by port 'tapvm6' (vm6)") == 1
    assert ping(ctl.srv_ns, "203.0.113.15", count=1, wait=0.3).received == 0
    assert ping(ctl.srv_ns, "203.0.113.16", count=1).received == 1  # vm6 still owns it
    assert tcp_connect(ctl, ctl.vms["vm1"].ns, SERVER_IP, 8080).peer_ip == FIP1
    assert ping(clash.ns, SERVER_IP, count=1, wait=0.3).received == 0  # rejected whole
    assert ping(owner.ns, SERVER_IP, count=1).received == 1  # (control)
    ctl.unplug(bad)
    ctl.unplug(clash)
    converged(ctl)


def test_controller_restart_loses_no_packet_and_sends_no_flow_mod(base, ctl):
    host = ctl.hosts["hv1"]
    converged(ctl)
    before = flow_table(host)
    pinger = background_ping(ctl.srv_ns, FIP1, interval=0.01, duration=6)
    session = background_tcp(ctl, ctl.vms["vm2"].ns, SERVER_IP, 8080, hold=6)
    wait_for(
        lambda: tcp_established(ctl.vms["vm2"].ns, SERVER_IP, 8080),
        5,
        what="the PAT session to be up",
    )
    scenario.stop_controller(ctl, "hv1")
    time.sleep(0.5)  # on purpose: traffic flows with no controller at all
    offset = len(scenario.controller_log(ctl, "hv1"))
    scenario.start_controller(ctl, "hv1")
    wait_for(
        lambda: "flows in sync" in scenario.controller_log(ctl, "hv1")[offset:],
        15,
        what="the restarted controller to find the flows in sync",
    )
    result = parse_ping(pinger.result())
    assert result.lost == 0, result.output[-300:]
    assert "HELD" in session.result(), "the PAT TCP session broke"
    after = flow_table(host)
    assert set(after) == set(before)
    for cookie, (duration, packets) in after.items():  # same flows, not re-added
        assert duration >= before[cookie][0] and packets >= before[cookie][1], cookie
    assert "sync:" not in scenario.controller_log(ctl, "hv1")[offset:]


def test_after_a_long_outage_ovs_reconnects_within_a_second_of_the_controller_returning(ctl):
    """OVS backs off 1, 2, 4, 8 s between attempts unless max_backoff is set. OVS 3.1
    applies max_backoff to a connection only in a reconfiguration made while it is up; the
    controller makes one once in sync (ovsnat.core.reconcile.Reconfigure). Here on a host in use
    (a port plugged too); tests/test_backoff.py checks it on a host with no VM, and after an
    ovs-vswitchd restart."""
    assert ctl.hosts["hv1"].vsctl("get", "controller", "br-int", "max_backoff").strip() == "1000"
    ctl.add_vm("late", "hv1", "10.0.0.23", "02:00:0a:00:00:17", vm_ids("10.0.0.23"))
    converged(ctl)
    scenario.stop_controller(ctl, "hv1")
    time.sleep(9)  # unset, the backoff would now be 8 s (1, 2, 4, 8)
    offset = len(scenario.controller_log(ctl, "hv1"))
    scenario.start_controller(ctl, "hv1")
    seen: dict[str, float] = {}

    def mark() -> bool:
        log = scenario.controller_log(ctl, "hv1")[offset:]
        for what, pattern in (("up", "ovsnat: bridge "), ("connected", r"datapath \w+ connected")):
            if what not in seen and re.search(pattern, log):
                seen[what] = time.monotonic()
        return "connected" in seen

    wait_for(mark, 20, interval=0.02, what="the switch to reconnect")
    assert seen["connected"] - seen.get("up", seen["connected"]) < 2.0, seen


def flow_table(host) -> dict[str, tuple[float, int]]:
    """cookie -> (duration, n_packets) of ovsnat's installed flows."""
    out = host.ofctl("dump-flows", "br-int")
    table = {}
    for m in re.finditer(r"cookie=(0x[0-9a-f]+), duration=([\d.]+)s, .*?n_packets=(\d+)", out):
        if is_ours(int(m.group(1), 16)):
            table[m.group(1)] = (float(m.group(2)), int(m.group(3)))
    return table
