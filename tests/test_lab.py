"""The lab itself: real OVS hypervisors in namespaces pass real packets, labs do not collide,
and teardown leaves nothing behind, even after the lab's creator was killed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from ovsnat.lab import Lab
from ovsnat.lab.sh import pid_alive, run, wait_for
from ovsnat.lab.topology import list_lab_namespaces
from ovsnat.lab.traffic import ping, start_server, tcp_connect, udp_request

pytestmark = pytest.mark.lab

VM1 = ("10.0.0.11", "02:00:0a:00:00:0b")
VM2 = ("10.0.0.12", "02:00:0a:00:00:0c")


def l2_flows(ports_by_mac: dict[str, int]) -> str:
    """Plain MAC forwarding plus ARP flooding, installed with ovs-ofctl (no ovsnat code)."""
    all_ports = sorted(ports_by_mac.values())
    lines = [
        f"table=0,priority=10,dl_dst={mac},actions=output:{port}"
        for mac, port in ports_by_mac.items()
    ]
    lines.append(
        "table=0,priority=5,dl_dst=ff:ff:ff:ff:ff:ff,actions="
        + ",".join(f"output:{p}" for p in all_ports)
    )
    return "\n".join(lines) + "\n"


def two_vm_host(lab: Lab):
    host = lab.add_host("hv1")
    vm1 = lab.add_vm("vm1", "hv1", *VM1)
    vm2 = lab.add_vm("vm2", "hv1", *VM2)
    host.install_flows(l2_flows({vm1.mac: host.ofport(vm1.tap), vm2.mac: host.ofport(vm2.tap)}))
    return host, vm1, vm2


def test_vms_on_one_host_reach_each_other_through_ofctl_flows(make_lab):
    lab = make_lab()
    host, vm1, vm2 = two_vm_host(lab)
    assert ping(vm1.ns, vm2.ip).received == 3
    start_server(lab, "srv", vm2.ns, "tcp", 8080)
    reply = tcp_connect(lab, vm1.ns, vm2.ip, 8080)
    assert reply.ok and reply.peer_ip == vm1.ip, reply.line
    # Packets really went through the userspace datapath of this host's OVS.
    assert "n_packets=0" not in host.ofctl("dump-flows", "br-int", f"dl_dst={vm2.mac}")


def test_without_flows_nothing_passes(make_lab):
    """fail_mode=secure: an OVS bridge with no flows drops everything (the tests above are
    not passing by some default behaviour)."""
    lab = make_lab()
    host = lab.add_host("hv1")
    vm1 = lab.add_vm("vm1", "hv1", *VM1)
    vm2 = lab.add_vm("vm2", "hv1", *VM2)
    assert ping(vm1.ns, vm2.ip, count=2, wait=0.5).received == 0
    # Positive control: the same VMs reach each other once the flows are there.
    host.install_flows(l2_flows({vm1.mac: host.ofport(vm1.tap), vm2.mac: host.ofport(vm2.tap)}))
    assert ping(vm1.ns, vm2.ip, count=2).received == 2


def test_outside_reaches_a_vm_through_ofctl_flows(make_lab):
    """The outside router reaches a VM across the external segment and the host's uplink."""
    lab = make_lab()
    host = lab.add_host("hv1")
    vm1 = lab.add_vm("vm1", "hv1", *VM1)
    up, p1 = host.ofport("uplink"), host.ofport(vm1.tap)
    host.install_flows(f"in_port={up},actions=output:{p1}\nin_port={p1},actions=output:{up}\n")
    # Give the router an address on the VM's subnet for this plain L2 check.
    run(["ip", "-n", lab.out_ns, "addr", "add", "10.0.0.254/24", "dev", "eth0"])
    assert ping(lab.out_ns, vm1.ip).received == 3
    start_server(lab, "udp", vm1.ns, "udp", 5353)
    reply = udp_request(lab, lab.out_ns, vm1.ip, 5353, size=3000)  # fragmented both ways
    assert reply.ok and reply.peer_ip == "10.0.0.254", reply.line
    assert "reply_len=3000" in reply.line


def test_server_behind_router_has_smaller_mtu(make_lab):
    """The router forwards to 198.51.100.10 over an MTU-1400 link: DF packets that are too
    big get a real 'fragmentation needed' back (used by the ICMP tests)."""
    lab = make_lab()
    assert ping(lab.out_ns, "198.51.100.10", count=1).received == 1
    big = ping(lab.out_ns, "198.51.100.10", count=1, size=1400, df=True)
    assert big.received == 0
    assert re.search(r"mtu ?= ?1400", big.output), big.output


def test_two_labs_run_side_by_side_with_the_same_vm_names(make_lab):
    a, b = make_lab(), make_lab()
    assert a.id != b.id
    (ha, a1, a2), (hb, b1, b2) = two_vm_host(a), two_vm_host(b)
    assert ping(a1.ns, a2.ip, count=2).received == 2
    assert ping(b1.ns, b2.ip, count=2).received == 2
    assert ha.rundir != hb.rundir and a1.ns != b1.ns


def test_move_vm_keeps_its_namespace_and_external_ids(make_lab):
    lab = make_lab()
    lab.add_host("hv1")
    hv2 = lab.add_host("hv2")
    vm1 = lab.add_vm("vm1", "hv1", *VM1, external_ids={"ovsnat-fixed-ip": VM1[0]})
    ofport = lab.move_vm(vm1, "hv2")
    assert ofport > 0 and vm1.host == "hv2"
    ids = hv2.vsctl("get", "Interface", vm1.tap, "external_ids")
    assert 'ovsnat-fixed-ip="10.0.0.11"' in ids and "iface-id=vm1" in ids
    assert (
        lab.hosts["hv1"].vsctl("--if-exists", "get", "Interface", vm1.tap, "ofport").strip() == ""
    )
    assert "10.0.0.11" in run(["ip", "-n", vm1.ns, "addr"]).stdout


def test_teardown_removes_namespaces_and_daemons(make_lab):
    lab = make_lab()
    host, vm1, _ = two_vm_host(lab)
    start_server(lab, "srv", vm1.ns, "tcp", 8080)
    pids = [host.ovs.pid("ovs-vswitchd"), host.ovs.pid("ovsdb-server"), lab.procs["srv"]["pid"]]
    namespaces = list(lab.namespaces)
    lab.down()
    remaining = list_lab_namespaces()
    assert not set(namespaces) & set(remaining)
    wait_for(lambda: not [p for p in pids if pid_alive(p)], 5, what="the lab's processes to exit")
    assert not os.path.exists(lab.dir)


def test_lab_down_cleans_up_after_a_killed_creator():
    """A process builds a lab and is SIGKILLed (no teardown ran); `ovsnat lab down ID`
    still removes its namespaces and its OVS daemons."""
    script = (
        "from ovsnat.lab import Lab; import time\n"
        "lab = Lab(); lab.up(); lab.add_host('hv1')\n"
        "lab.add_vm('vm1', 'hv1', '10.0.0.11', '02:00:0a:00:00:0b')\n"
        "print(lab.id, flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    lab_id = proc.stdout.readline().strip()
    try:
        assert lab_id, "the lab-building process printed no lab id"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        lab = Lab.load(lab_id)
        vswitchd = lab.hosts["hv1"].ovs.pid("ovs-vswitchd")
        assert pid_alive(vswitchd)
        out = run([sys.executable, "-m", "ovsnat.cli", "lab", "down", lab_id]).stdout
        assert f"removed lab {lab_id}" in out
        assert not [ns for ns in list_lab_namespaces() if lab_id in ns]
        wait_for(lambda: not pid_alive(vswitchd), 5, what="the lab's ovs-vswitchd to exit")
    finally:
        if lab_id in Lab.list_ids():
            Lab.load(lab_id).down()


def test_a_process_that_ended_is_seen_as_exited_and_a_running_one_is_not(make_lab):
    """Lab.exited, by which a service that dies while starting fails the OpenStack lab's
    bring-up at once (services.OpenStack.alive): read from /proc, the zombie of a process
    nobody reaped yet counts as ended."""
    lab = make_lab()
    lab.spawn("ends", ["true"], ns=lab.srv_ns)
    lab.spawn("runs", ["sleep", "60"], ns=lab.srv_ns)
    wait_for(lambda: lab.exited("ends"), 5, what="`true` to end")
    assert not lab.exited("runs") and not lab.exited("never-spawned")
    lab.stop_proc("runs")
