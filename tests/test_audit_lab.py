"""The audit against a real Open vSwitch: drift made behind the controller's back with
ovs-ofctl (a flow deleted, one changed in place, a stale one added) is repaired within the
audit period with no restart, counted and logged; a foreign flow stays; traffic works."""

from __future__ import annotations

import re
import sys

import pytest

from ovsnat.cli import golden
from ovsnat.compile import routed_flows
from ovsnat.compile.compiler import compile_state
from ovsnat.core.state import build_state
from ovsnat.lab import scenario
from ovsnat.lab.sh import pid_alive, run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import ping, start_server, tcp_connect
from ovsnat.model import HostConfig
from ovsnat.openflow import codec, messages
from ovsnat.openflow.digest import flow_mod_digest
from tests.ofclient import OfClient
from tests.test_controller import SNAT, converged, vm_ids

pytestmark = pytest.mark.lab

FIP = "203.0.113.10"
AUDIT = 2  # seconds: the test's audit_interval
STALE = "cookie=0xa20a0000630000ab,table=0,priority=1,ip,nw_src=10.0.0.99,actions=drop"
FOREIGN = "cookie=0x5,table=0,priority=1,ip,nw_src=10.0.0.98,actions=drop"
METRICS = 9102


def test_the_switch_returns_the_bytes_ovsnat_sent_for_every_golden_scenario(make_lab):
    """The audit finds a flow changed in place by the digest of its bytes; that works only if
    an untouched flow comes back from the switch exactly as ovsnat packed it."""
    host = make_lab().add_host("hv1")
    scenario.install_meters(host)
    client = OfClient(host.rundir)
    try:
        for name, (_, overrides, ports) in golden.SCENARIOS.items():
            host.ofctl("del-flows", "br-int")
            host.ofctl("del-groups", "br-int")
            cfg = HostConfig.parse({**golden.BASE, **overrides})
            group = routed_flows.group(cfg)  # bgp mode: before the flows that use it
            if group is not None:
                client.apply(messages.group_mod(90, codec.OFPGC_ADD, group))
            flows = compile_state(build_state(cfg, ports))
            packed = {(f.table, f.cookie): messages.flow_add(f, 0) for f in flows}
            client.install(list(packed.values()))
            dumped = client.dump()
            assert set(dumped) == set(packed), name
            differ = [hex(k[1]) for k, msg in packed.items() if dumped[k] != flow_mod_digest(msg)]
            assert not differ, f"{name}: the switch rewrote {differ}"
    finally:
        client.close()


def cookie_of(host, table: int, *contains: str) -> str:
    """The cookie of the one installed flow of `table` whose dump line has every string."""
    lines = [
        line
        for line in host.ofctl("dump-flows", "br-int", f"table={table}").splitlines()
        if all(c in line for c in contains)
    ]
    assert len(lines) == 1, lines
    return re.search(r"cookie=(0x[0-9a-f]+)", lines[0]).group(1)


def repairs(lab) -> int:
    return scenario.status(lab, "hv1").get("stats", {}).get("flow_repairs", -1)


def metric(lab, name: str) -> float | None:
    """One value from the controller's Prometheus endpoint (inside the host's namespace);
    None while it does not answer yet."""
    script = (
        "import urllib.request;print(urllib.request.urlopen("
        f"'http://127.0.0.1:{METRICS}/metrics',timeout=5).read().decode())"
    )
    out = run([sys.executable, "-c", script], ns=lab.hosts["hv1"].ns, check=False)
    m = re.search(rf"^{name} (\S+)$", out.stdout, re.M) if out.returncode == 0 else None
    return float(m.group(1)) if m else None


def test_drift_behind_the_controllers_back_is_repaired_within_the_audit_period(make_lab):
    lab = make_lab()
    host = lab.add_host("hv1")
    vm1 = lab.add_vm("vm1", "hv1", "10.0.0.11", "02:00:0a:00:00:0b", vm_ids("10.0.0.11", FIP))
    vm2 = lab.add_vm("vm2", "hv1", "10.0.0.12", "02:00:0a:00:00:0c", vm_ids("10.0.0.12"))
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    start_server(lab, "vm1-tcp", vm1.ns, "tcp", 7000)
    scenario.start_controller(lab, "hv1", SNAT, audit_interval=AUDIT, metrics_port=METRICS)
    wait_for(lambda: tcp_connect(lab, lab.srv_ns, FIP, 7000, timeout=0.3).ok, 20, what="vm1's FIP")
    wait_for(
        lambda: tcp_connect(lab, vm2.ns, SERVER_IP, 8080, timeout=0.3).ok, 20, what="vm2's PAT"
    )
    converged(lab)
    wait_for(lambda: repairs(lab) >= 0, 5, what="the status file")
    before, pid = repairs(lab), lab.procs["ctl-hv1"]["pid"]
    scraped = wait_for(
        lambda: (v,) if (v := metric(lab, "ovsnat_flow_repairs_total")) is not None else None,
        10,
        what="the metrics endpoint",
    )[0]
    offset = len(scenario.controller_log(lab, "hv1"))

    changed = cookie_of(host, 50, f"nw_dst={FIP} ", "goto_table:60")
    gone = cookie_of(host, 0, f"in_port={host.ofport(vm2.tap)},", ",ip,")
    host.ofctl("mod-flows", "br-int", f"table=50,cookie={changed}/-1,ip,nw_dst={FIP} actions=drop")
    host.ofctl("del-flows", "br-int", f"cookie={gone}/-1")
    host.ofctl("add-flow", "br-int", STALE)
    host.ofctl("add-flow", "br-int", FOREIGN)
    assert "actions=drop" in host.ofctl("dump-flows", "br-int", f"cookie={changed}/-1")

    converged(lab, timeout=3 * AUDIT + 5)  # within the audit period (and slack)
    wait_for(lambda: repairs(lab) >= before + 3, 5, what="the repair counter to rise")
    assert metric(lab, "ovsnat_flow_repairs_total") >= scraped + 3
    assert metric(lab, "ovsnat_audits_total") >= 1
    assert "cookie=0x5," in host.ofctl("dump-flows", "br-int", "cookie=0x5/-1")  # foreign
    log = scenario.controller_log(lab, "hv1")[offset:]
    for kind, cookie, table, owner in (
        ("changed", changed, 50, "port tapvm1 "),
        ("missing", gone, 0, "port tapvm2 "),
        ("stale", "0xa20a0000630000ab", 0, "VM 10.0.0.99"),
    ):
        assert re.search(rf"audit: {kind} flow table={table} cookie={cookie} of {owner}", log), log[
            -2000:
        ]
    assert pid_alive(pid) and not re.search(r"datapath \w+ connected", log)  # no restart
    assert tcp_connect(lab, lab.srv_ns, FIP, 7000).ok  # traffic works again
    assert tcp_connect(lab, vm2.ns, SERVER_IP, 8080).peer_ip == SNAT
    assert ping(lab.srv_ns, FIP, count=1).received
