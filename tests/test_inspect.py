"""Operator tools on a live lab host: dump, diff (with injected drift), status, trace,
metrics, and detection of another host claiming one of our FIPs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from scapy.all import ARP, Ether

from ovsnat.lab import scenario
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import (
    background_tcp,
    ping,
    send_frames,
    start_server,
    tcp_connect,
    tcp_established,
)
from tests.test_controller import SNAT, vm_ids

pytestmark = pytest.mark.lab
FIP = "203.0.113.10"


@pytest.fixture(scope="module")
def live(module_lab):
    lab = module_lab
    lab.add_host("hv1")
    lab.add_vm("vm1", "hv1", "10.0.0.11", "02:00:0a:00:00:0b", vm_ids("10.0.0.11", FIP))
    lab.add_vm("vm2", "hv1", "10.0.0.12", "02:00:0a:00:00:0c", vm_ids("10.0.0.12"))
    lab.add_vm("vm3", "hv1", "10.0.0.13", "02:00:0a:00:00:0d", {"ovsnat-fixed-ip": "10.0.0.300"})
    scenario.start_controller(lab, "hv1", SNAT, metrics_port=9101)
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    wait_for(lambda: ping(lab.srv_ns, FIP, count=1, wait=0.2).received, 15, what="FIP up")
    assert tcp_connect(lab, lab.vms["vm2"].ns, SERVER_IP, 8080).peer_ip == SNAT
    return lab


def dump_json(lab) -> dict:
    out = scenario.cli(lab, "hv1", "dump", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def vm2_ip_packets(groups: dict) -> int:
    """What vm2's own IP classify flow counted: the packets vm2 sent (its ARP and the
    VMs' IPv6 hit other flows)."""
    return sum(
        f["packets"]
        for f in groups["tapvm2"]
        if f["role"] == "classify" and "nw_src=10.0.0.12" in f["match"]
    )


def test_dump_groups_flows_by_vm_with_roles_and_counters(live):
    groups = dump_json(live)
    assert set(groups) == {"host", "network (default)", "tapvm1", "tapvm2"}
    roles = {f["role"] for f in groups["tapvm1"]}
    assert {"classify", "uplink_arp", "egress", "ingress", "vm_l2"} <= roles
    before = vm2_ip_packets(groups)
    # The test's own connection (SYN, ACK, FIN at least) shows in vm2's counters.
    assert tcp_connect(live, live.vms["vm2"].ns, SERVER_IP, 8080).peer_ip == SNAT
    wait_for(
        lambda: vm2_ip_packets(dump_json(live)) >= before + 3,
        5,
        what="vm2's packets in its dump counters (OVS folds them in periodically)",
    )
    text = scenario.cli(live, "hv1", "dump").stdout
    assert "tapvm1 (vm1, 10.0.0.11, FIP 203.0.113.10, ofport" in text


def test_diff_is_clean_then_reports_injected_drift_exactly(live):
    host = live.hosts["hv1"]
    clean = scenario.cli(live, "hv1", "diff", "--json")
    assert clean.returncode == 0 and json.loads(clean.stdout) == {
        "missing": [],
        "stale": [],
        "foreign": [],
    }
    vm1_flows = json.loads(scenario.cli(live, "hv1", "dump", "--json").stdout)["tapvm1"]
    victim = next(f for f in vm1_flows if f["role"] == "ingress" and "nw_frag" not in f["match"])
    stale_cookie = "0xa20a0000630000aa"  # a flow of a VM that does not exist
    try:
        host.ofctl(
            "--strict",
            "del-flows",
            "br-int",
            f"table=50,priority={victim['priority']},{victim['match']}",
        )
        host.ofctl("add-flow", "br-int", "table=5,priority=7,ip,actions=drop")
        host.ofctl(
            "add-flow",
            "br-int",
            f"cookie={stale_cookie},table=60,priority=100,ip,nw_dst=10.0.0.99,actions=drop",
        )
        drift = scenario.cli(live, "hv1", "diff", "--json")
        assert drift.returncode == 1
        d = json.loads(drift.stdout)
        assert (
            len(d["missing"]) == 1
            and "table=50" in d["missing"][0]
            and victim["cookie"] in d["missing"][0]
        )
        assert d["stale"] == [
            f"cookie={stale_cookie}, table=60, priority=100,ip,nw_dst=10.0.0.99 actions=drop"
        ]
        assert d["foreign"] == ["cookie=0x0, table=5, priority=7,ip actions=drop"]
    finally:
        host.ofctl("del-flows", "br-int", "table=5")
        host.ofctl("del-flows", "br-int", f"cookie={stale_cookie}/-1")
        # Restore by letting the controller resync (restart: it diffs and sends the gap).
        scenario.stop_controller(live, "hv1")
        scenario.start_controller(live, "hv1")
        wait_for(lambda: scenario.cli(live, "hv1", "diff").returncode == 0, 15, what="resync")


def test_status_lists_vms_skipped_ports_and_pat_usage(live):
    vm2 = live.vms["vm2"]
    session = background_tcp(live, vm2.ns, SERVER_IP, 8080, hold=3)  # a PAT port in use
    wait_for(lambda: tcp_established(vm2.ns, SERVER_IP, 8080), 5, what="vm2's session")
    st = json.loads(scenario.cli(live, "hv1", "status", "--json").stdout)
    assert "HELD" in session.result()
    vms = {vm["name"]: vm for vm in st["vms"]}
    assert vms["tapvm1"]["nat"] == "FIP 203.0.113.10" and vms["tapvm1"]["fip_state"] == "active"
    assert vms["tapvm2"]["nat"] == "PAT"
    assert st["rejected"] == [
        {
            "name": "tapvm3",
            "reason": "port 'tapvm3': external_ids:"
            "ovsnat-fixed-ip: '10.0.0.300' is not an IPv4 address",
            "transient": False,
        }
    ]
    assert st["pat"]["per_vm"].get("10.0.0.12", 0) >= 1 and st["pat"]["capacity"] == 10000
    assert "skipped ports (1)" in scenario.cli(live, "hv1", "status").stdout
    # The stats are the running controller's own: a change this test makes moves them
    # (whatever an earlier test's restart left: a resync with nothing to repair sends none).
    before = st["controller"]["stats"]["flow_mods"]
    host = live.hosts["hv1"]
    host.vsctl("set", "Interface", "tapvm2", "external_ids:ovsnat-admin=down")
    try:
        wait_for(lambda: _flow_mods(live) > before, 10, what="flow_mods after a port change")
    finally:
        host.vsctl("remove", "Interface", "tapvm2", "external_ids", "ovsnat-admin")
        wait_for(lambda: scenario.cli(live, "hv1", "diff").returncode == 0, 15, what="vm2 back")


def _flow_mods(lab) -> int:
    st = json.loads(scenario.cli(lab, "hv1", "status", "--json").stdout)
    return st["controller"]["stats"]["flow_mods"]


@pytest.mark.parametrize(
    "args,verdict",
    [
        (
            ["vm1", SERVER_IP, "tcp", "80"],
            "leaves the uplink as 203.0.113.10:40000 -> 198.51.100.10:80",
        ),
        (
            ["vm2", SERVER_IP, "udp", "53"],
            "leaves the uplink as 203.0.113.11:20000 -> 198.51.100.10:53",
        ),
        (
            ["outside", FIP, "tcp", "22"],
            "leaves port tapvm1 as 198.51.100.10:40000 -> 10.0.0.11:22",
        ),
        (["vm2", FIP, "tcp", "7000"], "leaves port tapvm1 as 203.0.113.11:20000 -> 10.0.0.11:7000"),
        (["outside", "10.0.0.12", "tcp", "22"], "dropped in table 0 (classify)"),
    ],
)
def test_trace_says_what_happens_in_plain_words(live, args, verdict):
    out = scenario.cli(live, "hv1", "trace", *args)
    assert out.returncode == 0, out.stderr
    assert verdict in out.stdout, out.stdout
    if args[0] == "vm2" and args[1] == SERVER_IP:
        assert "conntrack picks the source port from 20000-29999 at run time" in out.stdout


def test_trace_json_gives_steps_verdict_and_final_packet(live):
    out = scenario.cli(live, "hv1", "trace", "--json", "vm1", SERVER_IP, "tcp", "80")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["verdict"] == {
        "outcome": "output",
        "port": "1",
        "port_name": "uplink",
        "where": "the uplink",
    }
    assert r["final"]["nw_src"] == FIP and r["final"]["tp_dst"] == "80"
    roles = [s["role"] for s in r["steps"]]
    assert roles == ["classify", "vm_route", "egress", "egress_out", "ingress"]
    assert {s["owner"] for s in r["steps"]} == {"host", "tapvm1"}
    dropped = json.loads(
        scenario.cli(live, "hv1", "trace", "--json", "outside", "10.0.0.12", "tcp", "22").stdout
    )
    assert dropped["verdict"] == {"outcome": "dropped", "table": 0, "role": "classify"}
    assert dropped["final"] is None


def test_metrics_scrape(live):
    script = (
        "import urllib.request;print(urllib.request.urlopen("
        "'http://127.0.0.1:9101/metrics',timeout=5).read().decode())"
    )

    def scrape():
        text = run([sys.executable, "-c", script], ns=live.hosts["hv1"].ns).stdout
        return text if "ovsnat_pat_ports_capacity 10000.0" in text else None

    text = wait_for(scrape, 10, what="the PAT gauges to be filled")
    for name in (
        'ovsnat_vms_programmed{kind="fip"} 1.0',
        "ovsnat_ports_skipped 1.0",
        "ovsnat_flow_mods_total",
        "ovsnat_openflow_errors_total",
        "ovsnat_ovsdb_reconnects_total",
        "ovsnat_reconcile_seconds",
        "ovsnat_pat_ports_capacity 10000.0",
        "ovsnat_pat_ports_in_use",
    ):
        assert name in text, name


def test_a_foreign_claim_on_our_fip_is_detected_but_does_not_take_it_offline(live):
    """A GARP for our live FIP from some other MAC on the uplink: logged, counted, shown in
    status; the FIP keeps answering (one GARP must not be able to take a FIP offline)."""
    claim = Ether(src="02:00:00:00:0b:ad", dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc="02:00:00:00:0b:ad", psrc=FIP, pdst=FIP
    )
    offset = len(scenario.controller_log(live, "hv1"))
    counted = json.loads(scenario.cli(live, "hv1", "status", "--json").stdout)["controller"][
        "stats"
    ].get("fip_conflicts", 0)

    def ours(st) -> bool:  # other tests' conflicts may be listed too
        return any(
            c["mac"] == "02:00:00:00:0b:ad" and c["fip"] == FIP
            for c in st["controller"].get("conflicts", [])
        )

    send_frames(live, live.out_ns, [bytes(claim)])
    wait_for(
        lambda: ours(json.loads(scenario.cli(live, "hv1", "status", "--json").stdout)),
        5,
        what="the conflict in status",
    )
    st = json.loads(scenario.cli(live, "hv1", "status", "--json").stdout)
    assert st["controller"]["stats"]["fip_conflicts"] >= counted + 1
    assert {vm["name"]: vm["fip_state"] for vm in st["vms"]}["tapvm1"] == "active"
    assert (
        "claimed on the uplink by 02:00:00:00:0b:ad; address conflict, keeping it"
        in scenario.controller_log(live, "hv1")[offset:]
    )
    run(["ip", "-n", live.out_ns, "neigh", "flush", "dev", "eth0"])
    assert ping(live.out_ns, FIP, count=1).received == 1


def test_another_ovsnat_host_announcing_our_fip_makes_us_yield(live):
    """The same GARP with the FIP's own MAC is what the host a VM migrated to sends: yield.
    Then probe: here nobody keeps answering for the FIP (no host really took it), so it comes
    back within a probe round; a host that really took it would answer and keep it dark
    (tests/test_migration.py)."""
    fip_mac = "02:5a:cb:00:71:0a"
    claim = Ether(src=fip_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=fip_mac, psrc=FIP, pdst=FIP
    )
    log_before = len(scenario.controller_log(live, "hv1"))
    send_frames(live, live.out_ns, [bytes(claim)])
    wait_for(
        lambda: (
            "is announced by another host; yielding"
            in scenario.controller_log(live, "hv1")[log_before:]
        ),
        5,
        what="vm1's FIP to yield",
    )
    wait_for(
        lambda: (
            "tapvm1: no other host answered the probes"
            in scenario.controller_log(live, "hv1")[log_before:]
        ),
        5,
        what="vm1's FIP back",
    )
    run(["ip", "-n", live.out_ns, "neigh", "flush", "dev", "eth0"])
    wait_for(
        lambda: ping(live.out_ns, FIP, count=1, wait=0.2).received,
        5,
        what="the FIP answering again",
    )


def test_another_host_claiming_our_snat_ip_is_detected(live):
    claim = Ether(src="02:00:00:00:0b:ae", dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=2, hwsrc="02:00:00:00:0b:ae", psrc=SNAT, pdst="203.0.113.1"
    )
    offset = len(scenario.controller_log(live, "hv1"))
    send_frames(live, live.out_ns, [bytes(claim)])
    wait_for(
        lambda: any(
            c["fip"] == SNAT and c["mac"] == "02:00:00:00:0b:ae"
            for c in json.loads(scenario.cli(live, "hv1", "status", "--json").stdout)[
                "controller"
            ].get("conflicts", [])
        ),
        5,
        what="the SNAT conflict in status",
    )
    assert (
        f"SNAT IP {SNAT} is claimed on the uplink by 02:00:00:00:0b:ae"
        in scenario.controller_log(live, "hv1")[offset:]
    )
    assert tcp_connect(live, live.vms["vm2"].ns, SERVER_IP, 8080).peer_ip == SNAT


def test_a_host_without_its_uplink_is_one_line_that_says_so(live, tmp_path):
    """The tools resolve a host as the controller does (its own code): a config whose
    uplink is not on the bridge gets the controller's line, and no view."""
    h = live.hosts["hv1"]
    conf = tmp_path / "ovsnat.conf"
    with open(os.path.join(h.rundir, "ovsnat.conf")) as f:
        conf.write_text(re.sub(r"(?m)^uplink_port = .*$", "uplink_port = nosuch", f.read()))
    assert "uplink_port = nosuch" in conf.read_text()
    done = subprocess.run(
        [sys.executable, "-m", "ovsnat.cli", "diff", "--config", str(conf)],
        capture_output=True, text=True, env=dict(os.environ, **h.ovs.env), timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.startswith("ovsnat diff: uplink port nosuch is not on bridge br-int")
    assert done.stderr.count("\n") == 1, done.stderr
    assert scenario.cli(live, "hv1", "diff").returncode == 0  # positive control
