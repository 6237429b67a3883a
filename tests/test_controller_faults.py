"""The controller converges after the switch, the database or the gateway change under it,
and runs the same on os-ken."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from ovsnat.lab import bulk, scenario
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import ping, start_server, udp_request
from tests.test_controller import SNAT, converged, flow_table, installed_text, reaches, vm_ids

pytestmark = pytest.mark.lab


def two_vms(lab, framework="ryu", **overrides):
    lab.add_host("hv1")
    vm1 = lab.add_vm(
        "vm1", "hv1", "10.0.0.11", "02:00:0a:00:00:0b", vm_ids("10.0.0.11", "203.0.113.10")
    )
    vm2 = lab.add_vm("vm2", "hv1", "10.0.0.12", "02:00:0a:00:00:0c", vm_ids("10.0.0.12"))
    start_server(lab, "srv-udp", lab.srv_ns, "udp", 8080)
    scenario.start_controller(lab, "hv1", SNAT, framework=framework, **overrides)
    return vm1, vm2


def works(lab, vm1, vm2, timeout=5.0) -> float:
    """Seconds until vm1's FIP and vm2's PAT both pass traffic (fails the test if never)."""

    def ok():
        return (
            udp_request(lab, vm1.ns, SERVER_IP, 8080, timeout=0.3).peer_ip == "203.0.113.10"
            and udp_request(lab, vm2.ns, SERVER_IP, 8080, timeout=0.3).peer_ip == SNAT
        )

    passed, took = reaches(ok, timeout=timeout)
    assert passed, "FIP and PAT traffic did not come back"
    return took


def test_ovs_vswitchd_restart_flows_are_restored_after_reconnect(make_lab):
    lab = make_lab()
    vm1, vm2 = two_vms(lab)
    works(lab, vm1, vm2)
    host = lab.hosts["hv1"]
    t0 = time.monotonic()
    host.ovs.stop_daemon("ovs-vswitchd")
    host.ovs.start_vswitchd()
    took = works(lab, vm1, vm2, timeout=10)
    converged(lab)
    assert took < 5
    # A fresh vswitchd starts without flows: every flow there now was added after the
    # restart (by the reconnected controller), none is older.
    ages = [duration for duration, _ in flow_table(host).values()]
    assert ages and max(ages) <= time.monotonic() - t0, (max(ages), time.monotonic() - t0)


def test_ports_changed_while_ovsdb_was_down_converge_exactly(make_lab):
    lab = make_lab()
    vm1, vm2 = two_vms(lab)
    works(lab, vm1, vm2)
    vm3 = lab.add_vm("vm3", "hv1", "10.0.0.13", "02:00:0a:00:00:0d", {})  # not managed yet
    host = lab.hosts["hv1"]
    port2 = host.vsctl("get", "Port", vm2.tap, "_uuid").strip()
    host.ovs.stop_daemon("ovsdb-server")
    ops = [
        "Open_vSwitch",
        {
            "op": "mutate",
            "table": "Interface",
            "where": [["name", "==", vm1.tap]],
            "mutations": [
                ["external_ids", "delete", ["set", ["ovsnat-fip"]]],
                ["external_ids", "insert", ["map", [["ovsnat-fip", "203.0.113.30"]]]],
            ],
        },
        {
            "op": "mutate",
            "table": "Bridge",
            "where": [["name", "==", "br-int"]],
            "mutations": [["ports", "delete", ["set", [["uuid", port2]]]]],
        },
        {
            "op": "mutate",
            "table": "Interface",
            "where": [["name", "==", vm3.tap]],
            "mutations": [
                [
                    "external_ids",
                    "insert",
                    ["map", [["ovsnat-fixed-ip", "10.0.0.13"], ["ovsnat-fip", "203.0.113.13"]]],
                ]
            ],
        },
    ]
    run(["ovsdb-tool", "transact", f"{host.rundir}/conf.db", json.dumps(ops)])
    host.ovs.start_db()
    wait_for(
        lambda: ping(lab.srv_ns, "203.0.113.13", count=1, wait=0.2).received,
        10,
        what="vm3's FIP (set while OVSDB was down) to answer",
    )
    converged(lab, timeout=10)
    assert udp_request(lab, vm1.ns, SERVER_IP, 8080).peer_ip == "203.0.113.30"
    assert ping(lab.srv_ns, "203.0.113.10", count=1, wait=0.3).received == 0
    assert ping(lab.srv_ns, "203.0.113.30", count=1).received == 1  # (control)
    flows = installed_text(host)
    assert not [line for line in flows if "10.0.0.12" in line]
    assert [line for line in flows if "10.0.0.13" in line]  # (control)


def test_os_ken_launcher_programs_the_same_flows_as_ryu_manager(make_lab):
    lab = make_lab()
    vm1, vm2 = two_vms(lab, framework="os_ken")
    works(lab, vm1, vm2)
    converged(lab)
    assert (
        "os_ken" in " ".join(lab.procs["ctl-hv1"]["argv"])
        or "ovsnat-agent" in lab.procs["ctl-hv1"]["argv"][0]
    )


def test_gateway_mac_is_learned_by_arp_and_followed_when_it_changes(make_lab):
    lab = make_lab()
    vm1, vm2 = two_vms(lab, external_gateway_mac="")
    works(lab, vm1, vm2)
    log = scenario.controller_log(lab, "hv1")
    assert f"external gateway 203.0.113.1 is at {scenario.outside_router_mac(lab)}" in log
    new_mac = "02:00:00:00:01:fe"
    run(["ip", "-n", lab.out_ns, "link", "set", "eth0", "address", new_mac])
    run(["ip", "-n", lab.out_ns, "neigh", "flush", "dev", "eth0"])  # the router ARPs again
    ping(lab.out_ns, "203.0.113.10", count=1)
    wait_for(
        lambda: f"is at {new_mac}" in scenario.controller_log(lab, "hv1"),
        5,
        what="the new gateway MAC to be learned",
    )
    works(lab, vm1, vm2)
    assert re.search(
        rf"set_field:{new_mac}->eth_dst", lab.hosts["hv1"].ofctl("dump-flows", "br-int", "table=50")
    )


def test_a_bad_option_stops_startup_with_one_message(make_lab):
    lab = make_lab()
    lab.add_host("hv1")
    name = scenario.start_controller(lab, "hv1", SNAT, snat_port_min=40000)
    wait_for(
        lambda: "invalid configuration" in scenario.controller_log(lab, "hv1"),
        15,
        what="the configuration error",
    )
    log = scenario.controller_log(lab, "hv1")
    assert "snat_port_min: 40000 is above snat_port_max 29999 (range reversed)" in log
    wait_for(
        lambda: (
            lab.procs[name]["pid"]
            and run(
                ["sh", "-c", f"kill -0 {lab.procs[name]['pid']} 2>/dev/null"], check=False
            ).returncode
            != 0
        ),
        10,
        what="ryu-manager to exit",
    )


def test_a_switch_that_stalls_mid_sync_for_longer_than_ryus_send_timeout_is_not_dropped(make_lab):
    """ryu gives a blocked send 5 s and then shuts the socket mid-message; a busy
    ovs-vswitchd (thousands of ports) can read nothing for longer. Here it is frozen for 8 s
    while a 57,000-flow sync is in the socket: the sync must finish on the same connection."""
    lab = make_lab()
    host = lab.add_host("hv1")
    bulk.add_ports(host, [bulk.vm_spec(i) for i in range(5000)], port_type="patch")
    scenario.write_config(lab, "hv1", bulk.SNAT_IP, **bulk.scale_options())
    scenario.start_controller(lab, "hv1", point_bridge=False)
    wait_for(
        lambda: "OVSDB snapshot: 5002 interfaces" in scenario.controller_log(lab, "hv1"),
        60,
        what="the controller to read 5,000 VMs",
    )
    host.vsctl("set-controller", "br-int", f"tcp:127.0.0.1:{scenario.OF_PORT}")
    wait_for(
        lambda: "sync: " in scenario.controller_log(lab, "hv1"),
        30,
        interval=0.005,
        what="the full sync to start",
    )
    pid = host.ovs.pid("ovs-vswitchd")
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(8)  # on purpose: frozen longer than ryu's 5 s send timeout
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(
        lambda: "in sync" in scenario.controller_log(lab, "hv1"), 60, what="the sync to complete"
    )
    log = scenario.controller_log(lab, "hv1")
    assert len(re.findall(r"datapath \w+ connected", log)) == 1, log[-2000:]
    assert "disconnected" not in log, log[-2000:]
    assert "Protocol error" not in Path(host.rundir, "ovs-vswitchd.log").read_text()
