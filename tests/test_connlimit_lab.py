"""Per-VM connection limits (conn_limit) with real packets: one VM's flood of new
connections is refused beyond its limit while another VM keeps opening PAT sessions, and
the refusals are counted for the flooding VM alone."""

from __future__ import annotations

import sys

import pytest
from scapy.all import IP, TCP, Ether

from ovsnat.lab import scenario
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import capture, captured, send_frames, start_server, tcp_connect

pytestmark = pytest.mark.lab

SNAT, LIMIT, METRICS = "203.0.113.11", 20, 9102
ROUTER_MAC = "02:00:00:00:00:01"


@pytest.fixture(scope="module")
def limited(module_lab):
    lab = module_lab
    lab.add_host("hv1")
    for name, ip, mac in (
        ("fl", "10.0.0.21", "02:00:0a:00:00:15"),
        ("ok", "10.0.0.22", "02:00:0a:00:00:16"),
    ):
        lab.add_vm(name, "hv1", ip, mac, {"ovsnat-fixed-ip": ip})
    scenario.start_controller(lab, "hv1", SNAT, conn_limit=LIMIT, metrics_port=METRICS)
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    for name in ("fl", "ok"):
        wait_for(
            lambda: tcp_connect(lab, lab.vms[name].ns, SERVER_IP, 8080, timeout=0.5).ok,
            10,
            what=f"{name} to reach the server",
        )
    return lab


def zone_of(lab, vm) -> int:
    return 20000 + lab.hosts["hv1"].ofport(vm.tap)


def counted(lab, vm) -> int:
    """Connections conntrack holds in the VM's counting zone."""
    out = lab.hosts["hv1"].appctl("dpctl/ct-get-limits", f"zone={zone_of(lab, vm)}")
    for part in out.replace("\n", ",").split(","):
        if part.startswith("count="):
            return int(part[6:])
    raise AssertionError(out)


def test_the_controller_sets_each_pat_vms_zone_limit(limited):
    out = limited.hosts["hv1"].appctl("dpctl/ct-get-limits")
    for name in ("fl", "ok"):
        assert f"zone={zone_of(limited, limited.vms[name])},limit={LIMIT}" in out, out


def test_a_flood_is_refused_beyond_the_limit_and_another_vm_keeps_connecting(limited):
    fl, ok = limited.vms["fl"], limited.vms["ok"]
    syns = [
        bytes(
            Ether(src=fl.mac, dst=ROUTER_MAC)
            / IP(src=fl.ip, dst=SERVER_IP)
            / TCP(sport=30000 + i, dport=8080, flags="S")
        )
        for i in range(200)
    ]
    with capture(limited, "flood", limited.ext_ns, "hv1", "tcp port 8080", "in") as pcap:
        send_frames(limited, fl.ns, syns)
        # Meanwhile the other VM's new sessions all work (PAT, through the same zone).
        assert all(tcp_connect(limited, ok.ns, SERVER_IP, 8080).peer_ip == SNAT for _ in range(10))
    left = {
        p[TCP].sport
        for p in captured(pcap, lambda p: TCP in p and p[TCP].flags == "S")
        if p[IP].src == SNAT
    }
    assert 0 < len(left) <= LIMIT + 10, f"{len(left)} of 200 SYNs left"  # ok's ten too
    assert counted(limited, fl) <= LIMIT
    # The flooding VM cannot open another connection now; the other one still can.
    assert not tcp_connect(limited, fl.ns, SERVER_IP, 8080, timeout=1).ok
    assert tcp_connect(limited, ok.ns, SERVER_IP, 8080).ok


def syn(vm, sport: int) -> bytes:
    return bytes(
        Ether(src=vm.mac, dst=ROUTER_MAC)
        / IP(src=vm.ip, dst=SERVER_IP)
        / TCP(sport=sport, dport=8080, flags="S")
    )


def datapath_refusals(lab, vm) -> int:
    """What the datapath counted on the VM's refusal flow (the truth the controller reads)."""
    out = lab.hosts["hv1"].ofctl("dump-flows", "br-int", f"table=23,reg4={zone_of(lab, vm)}")
    return sum(
        int(part.split("=")[1])
        for line in out.splitlines()
        for part in line.replace(",", " ").split()
        if part.startswith("n_packets=")
    )


def test_refusals_are_counted_per_vm_in_status_and_metrics(limited):
    """Refused SYNs are counted for the flooding VM alone: the datapath counts them, the
    controller reads the counts every few seconds into the status file and the metrics."""
    fl, ok = limited.vms["fl"], limited.vms["ok"]
    send_frames(limited, fl.ns, [syn(fl, 31000 + i) for i in range(LIMIT)])
    wait_for(lambda: counted(limited, fl) >= LIMIT, 10, what="the VM's zone to be full")
    before = datapath_refusals(limited, fl)
    send_frames(limited, fl.ns, [syn(fl, 32000 + i) for i in range(50)])
    assert tcp_connect(limited, ok.ns, SERVER_IP, 8080).ok  # positive control
    after = wait_for(
        lambda: (lambda n: n if n >= before + 50 else None)(datapath_refusals(limited, fl)),
        10,
        what="the datapath to count the refusals",
    )
    wait_for(
        lambda: scenario.status(limited, "hv1").get("conn_refused", {}).get(fl.tap, 0) >= after,
        15,
        what="the refusals in the status file",
    )
    assert scenario.status(limited, "hv1")["conn_refused"].get(ok.tap) == 0
    assert datapath_refusals(limited, ok) == 0
    script = (
        "import urllib.request;print(urllib.request.urlopen("
        f"'http://127.0.0.1:{METRICS}/metrics',timeout=5).read().decode())"
    )
    text = run([sys.executable, "-c", script], ns=limited.hosts["hv1"].ns).stdout
    line = next(
        x
        for x in text.splitlines()
        if x.startswith(f'ovsnat_conn_refused_total{{port="{fl.tap}"}}')
    )
    assert float(line.split()[-1]) >= after, line
    assert f'ovsnat_conn_refused_total{{port="{ok.tap}"}} 0.0' in text
