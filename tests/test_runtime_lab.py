"""What the controller reaches outside OpenFlow, with real daemons and packets: ovs-vswitchd's
control socket (ovsnat.runtime.dpctl, ovsnat.core.vswitchd) and which switch is its own
(ovsnat.core.datapaths).

- Issue 22 found hosts with private OVS rundirs and controllers started without
  OVS_RUNDIR: every ovs-appctl call failed, nothing was logged, the failure read as an empty
  conntrack and a migrated VM's handoff ended at once, its sessions hanging. Here the same
  controller says at start which features cannot work and why, and a handoff it cannot
  count runs its whole grace period (the session survives); with `vswitchd_ctl` set the same
  hosts work fully: limits applied, the handoff ends when its session does.
- Two bridges of one ovs-vswitchd point at one controller: it programs its own (traffic
  passes), refuses the other (no flow), logs it once.
"""

from __future__ import annotations

import itertools
import os
import re

import pytest

from ovsnat.lab import scenario
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import (
    background_tcp,
    start_server,
    tcp_connect,
    tcp_established,
    udp_request,
)

pytestmark = pytest.mark.lab

SNAT = {"hv1": "203.0.113.11", "hv2": "203.0.113.21"}
VLAN, GRACE, LIMIT = 4000, 60, 50
NUMBERS = itertools.count(60)


@pytest.fixture(scope="module")
def hosts(module_lab):
    lab = module_lab
    for host in SNAT:
        lab.add_host(host, fabric=True)
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    return lab


def restart(lab, **options) -> None:
    """Both controllers again, without OVS_RUNDIR in their environment."""
    for host, snat in SNAT.items():
        scenario.stop_controller(lab, host)
        scenario.start_controller(
            lab,
            host,
            snat,
            ovs_env=False,
            fabric_port="fabric",
            handoff_vlan=VLAN,
            handoff_grace=GRACE,
            conn_limit=LIMIT,
            **{k: v(lab.hosts[host]) for k, v in options.items()},
        )
    for host in SNAT:
        scenario.wait_in_sync(lab, host)


def pat_vm(lab):
    n = next(NUMBERS)
    vm = lab.add_vm(
        f"r{n}", "hv1", f"10.0.0.{n}", f"02:00:0a:00:02:{n:02x}", {"ovsnat-fixed-ip": f"10.0.0.{n}"}
    )
    wait_for(
        lambda: tcp_connect(lab, vm.ns, SERVER_IP, 8080, timeout=0.5).ok,
        10,
        what=f"{vm.name} to reach the server",
    )
    return vm


def limits(lab, host: str) -> str:
    return lab.hosts[host].appctl("dpctl/ct-get-limits")


def zone(lab, vm) -> str:
    return f"zone={20000 + lab.hosts[vm.host].ofport(vm.tap)},limit={LIMIT}"


def handoff(lab, vm) -> dict:
    return scenario.status(lab, "hv1").get("handoffs", {}).get(vm.tap, {})


def test_without_the_control_socket_the_controller_says_so_and_a_handoff_runs_its_grace(hosts):
    restart(hosts)
    wait_for(
        lambda: "calling ovs-vswitchd (ovs-appctl) failed" in scenario.controller_log(hosts, "hv1"),
        15,
        what="the failure in the log",
    )
    log = scenario.controller_log(hosts, "hv1")
    line = next(x for x in log.splitlines() if "calling ovs-vswitchd (ovs-appctl) failed" in x)
    assert "/var/run/openvswitch/ovs-vswitchd.pid" in line and "OVS_RUNDIR" in line, line
    assert "handoff_vlan" in line and "conn_limit" in line, line
    st = wait_for(
        lambda: (lambda st: st if st["vswitchd"]["reachable"] is False else None)(
            scenario.status(hosts, "hv1")
        ),
        5,
        what="the status to say so",
    )
    assert st["vswitchd"]["needed_by"] == ["handoff_vlan", "conn_limit"]
    assert "OVS_RUNDIR" in st["failures"]["vswitchd"]["error"]
    vm = pat_vm(hosts)
    wait_for(
        lambda: scenario.status(hosts, "hv1")["conn_limit"]["not_applied"] >= 1,
        15,
        what="the VM's zone limit reported as not applied",
    )
    assert zone(hosts, vm) not in limits(hosts, "hv1")  # (it is not: nothing applied)
    session = background_tcp(hosts, vm.ns, SERVER_IP, 8080, hold=4)
    wait_for(lambda: tcp_established(vm.ns, SERVER_IP, 8080), 5, what="the session")
    hosts.move_vm(vm, "hv2")
    out = session.result()
    assert "HELD" in out and float(re.search(r"longest_gap=([\d.]+)", out).group(1)) <= 1.0
    # The session is over, but hv1 cannot count its sessions: the departure goes on (it
    # used to end at once, "no session left", and the session hung).
    wait_for(lambda: handoff(hosts, vm).get("role") == "left", 5, what="hv1's departure")
    wait_for(
        lambda: scenario.status(hosts, "hv1")["stats"]["vswitchd_call_failures"] >= 3,
        15,
        what="a few failed conntrack reads",
    )
    assert handoff(hosts, vm) | {"remaining": 0} == {
        "role": "left",
        "fixed_ip": vm.ip,
        "sessions": -1,
        "remaining": 0,
    }
    assert "no session left" not in scenario.controller_log(hosts, "hv1")
    hosts.remove_vm(vm)


def test_with_vswitchd_ctl_set_the_same_hosts_work(hosts):
    restart(hosts, vswitchd_ctl=lambda h: os.path.join(h.rundir, "ovs-vswitchd.pid"))
    wait_for(
        lambda: scenario.status(hosts, "hv1").get("vswitchd", {}).get("reachable"),
        15,
        what="ovs-vswitchd's socket to answer",
    )
    assert "ovs-vswitchd answers at " + os.path.join(
        hosts.hosts["hv1"].rundir, "ovs-vswitchd."
    ) in scenario.controller_log(hosts, "hv1")
    vm = pat_vm(hosts)
    wait_for(lambda: zone(hosts, vm) in limits(hosts, "hv1"), 10, what="the VM's zone limit")
    assert scenario.status(hosts, "hv1")["conn_limit"]["not_applied"] == 0
    session = background_tcp(hosts, vm.ns, SERVER_IP, 8080, hold=4)
    wait_for(lambda: tcp_established(vm.ns, SERVER_IP, 8080), 5, what="the session")
    hosts.move_vm(vm, "hv2")
    wait_for(
        lambda: handoff(hosts, vm).get("sessions", 0) >= 1,
        5,
        what="hv1 to count the handed-off session",
    )
    assert "HELD" in session.result()
    wait_for(
        lambda: not handoff(hosts, vm),
        15,
        what="hv1 to end the handoff once the session is over, long before its grace",
    )
    assert f"handoff of {vm.tap} ended: no session left" in scenario.controller_log(hosts, "hv1")
    assert scenario.status(hosts, "hv1")["failures"] == {}
    hosts.remove_vm(vm)


def test_a_second_bridge_pointed_at_the_controller_is_refused_and_gets_no_flow(make_lab):
    lab = make_lab()
    h = lab.add_host("hv1")
    h.ovs.add_bridge("br-other")  # pointed at the controller before it starts
    h.vsctl(
        "set-controller",
        "br-other",
        f"tcp:127.0.0.1:{scenario.OF_PORT}",
        "--",
        "set",
        "controller",
        "br-other",
        "max_backoff=1000",
    )
    vm = lab.add_vm(
        "vm1", "hv1", "10.0.0.11", "02:00:0a:00:00:0b", {"ovsnat-fixed-ip": "10.0.0.11"}
    )
    start_server(lab, "srv-udp", lab.srv_ns, "udp", 8080)
    scenario.start_controller(lab, "hv1", SNAT["hv1"])
    ours = int(h.vsctl("get", "Bridge", "br-int", "datapath_id").strip().strip('"'), 16)
    other = int(h.vsctl("get", "Bridge", "br-other", "datapath_id").strip().strip('"'), 16)
    wait_for(
        lambda: udp_request(lab, vm.ns, SERVER_IP, 8080, timeout=0.3).peer_ip == SNAT["hv1"],
        15,
        what="PAT traffic through br-int",
    )  # (control)
    wait_for(
        lambda: scenario.status(lab, "hv1").get("stats", {}).get("datapaths_refused", 0) >= 2,
        15,
        what="br-other refused, twice (it reconnects)",
    )
    st = scenario.status(lab, "hv1")
    assert st["datapath"] == f"{ours:016x}" and st["in_sync"]
    assert st["datapaths"] == {"expected": f"{ours:016x}", "refused": [f"{other:016x}"]}
    assert not [x for x in h.ofctl("dump-flows", "br-other").splitlines() if "priority" in x]
    assert [x for x in h.ofctl("dump-flows", "br-int").splitlines() if "priority" in x]
    log = scenario.controller_log(lab, "hv1")
    assert log.count(f"refusing datapath {other:016x}") == 1, log[-3000:]
    assert "fault" not in log and "Traceback" not in log
    assert udp_request(lab, vm.ns, SERVER_IP, 8080).peer_ip == SNAT["hv1"]
