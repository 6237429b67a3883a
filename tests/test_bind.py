"""`ovsnat bind` / `unbind` against a real lab host with the controller running: the command
writes the external_ids contract through OVSDB and the controller turns it into flows.

Lab: hv1 runs vm1 (fixed IP 10.0.0.11, no FIP: PAT through 203.0.113.11); the server
198.51.100.10 sits behind the outside router.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from ovsnat.lab import scenario
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import ping, start_server, tcp_connect

pytestmark = pytest.mark.lab

FIP, SNAT = "203.0.113.10", "203.0.113.11"
# seconds to wait (a deadline, not a measurement): OVSDB -> watcher -> controller -> bundle
# is well under one, but each probe starts a client process, which took most of 8 s on a
# machine running two OpenStack labs besides (the fixture's first probe timed out once).
CONVERGE = 15.0


def ovsnat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ovsnat.cli", *args], capture_output=True, text=True, timeout=60
    )


def eventually(probe, timeout: float = CONVERGE):
    """Poll probe() until it returns something truthy; return the last value either way."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.2)


def seen_as(lab, ns: str) -> str | None:
    reply = tcp_connect(lab, ns, SERVER_IP, 8080, timeout=1)
    return reply.peer_ip if reply.ok else None


@pytest.fixture
def host(make_lab):
    lab = make_lab()
    lab.add_host("hv1")
    lab.add_vm("vm1", "hv1", "10.0.0.11", "02:00:0a:00:00:0b", {"ovsnat-fixed-ip": "10.0.0.11"})
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    start_server(lab, "vm1-tcp", lab.vms["vm1"].ns, "tcp", 7000)
    scenario.start_controller(lab, "hv1", SNAT)
    vm1 = lab.vms["vm1"].ns
    assert eventually(lambda: seen_as(lab, vm1) == SNAT), scenario.controller_log(lab, "hv1")
    # The controller marks the port installed just after its flows are confirmed: wait for
    # it, or a test comparing external_ids before and after may see it land in between.
    assert eventually(lambda: "ovsnat-installed" in external_ids(lab)), scenario.controller_log(
        lab, "hv1"
    )
    return lab


def db(lab) -> str:
    return f"unix:{lab.hosts['hv1'].ovs.db_sock}"


def external_ids(lab) -> str:
    return lab.hosts["hv1"].vsctl("get", "Interface", "tapvm1", "external_ids")


def test_bind_gives_a_pat_vm_its_fip_and_unbind_returns_it_to_pat(host):
    lab, vm1 = host, host.vms["vm1"].ns
    assert not tcp_connect(lab, lab.srv_ns, FIP, 7000, timeout=1).ok  # nothing there yet

    done = ovsnat("bind", "--iface-id", "vm1", "--fip", FIP, "--db", db(lab))
    assert done.returncode == 0, done.stderr
    assert f'ovsnat-fip="{FIP}"' in external_ids(lab)
    # Outbound first: a VM talks, and the controller may wait for the VM's first frame
    # before it makes a FIP live (activation on first frame, as after a migration).
    assert eventually(lambda: seen_as(lab, vm1) == FIP), scenario.controller_log(lab, "hv1")
    inbound = eventually(
        lambda: (lambda r: r if r.ok else None)(tcp_connect(lab, lab.srv_ns, FIP, 7000, timeout=1))
    )
    assert inbound and inbound.peer_ip == SERVER_IP, scenario.controller_log(lab, "hv1")

    done = ovsnat("unbind", "--iface-id", "vm1", "--db", db(lab))
    assert done.returncode == 0, done.stderr
    assert "ovsnat-fip" not in external_ids(lab)
    assert "ovsnat-fixed-ip" in external_ids(lab)  # other keys untouched
    assert eventually(lambda: seen_as(lab, vm1) == SNAT), seen_as(lab, vm1)
    assert eventually(lambda: ping(lab.srv_ns, FIP, count=1, wait=0.5).received == 0)
    assert not tcp_connect(lab, lab.srv_ns, FIP, 7000, timeout=1).ok
    assert seen_as(lab, vm1) == SNAT  # (control) the host still passes traffic now


def test_bind_refuses_bad_input_and_writes_nothing(host):
    lab = host
    before = external_ids(lab)
    for args, says in (
        (["--iface-id", "vm1", "--fip", "203.0.113.300"], "--fip: '203.0.113.300' is not an IPv4"),
        (["--iface-id", "vm1", "--fip", "not-an-ip"], "--fip"),
        (["--iface-id", "vm1", "--fip", FIP, "--fixed-ip", "10.0.0"], "--fixed-ip"),
        (["--iface-id", "no-such-port", "--fip", FIP], "no Interface has external_ids:iface-id"),
    ):
        done = ovsnat("bind", *args, "--db", db(lab))
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
    done = ovsnat("unbind", "--iface-id", "no-such-port", "--db", db(lab))
    assert done.returncode == 1 and "no-such-port" in done.stderr, done.stderr
    assert external_ids(lab) == before
    assert seen_as(lab, lab.vms["vm1"].ns) == SNAT  # still on PAT


def test_bind_again_replaces_the_fip_and_unbind_twice_is_harmless(host):
    lab = host
    for fip in (FIP, "203.0.113.12", "203.0.113.12"):
        done = ovsnat("bind", "--iface-id", "vm1", "--fip", fip, "--db", db(lab))
        assert done.returncode == 0 and f"ovsnat-fip={fip}" in done.stdout, done.stderr
        assert f'ovsnat-fip="{fip}"' in external_ids(lab)
    assert eventually(lambda: seen_as(lab, lab.vms["vm1"].ns) == "203.0.113.12"), (
        scenario.controller_log(lab, "hv1")
    )
    for _ in range(2):
        done = ovsnat("unbind", "--iface-id", "vm1", "--db", db(lab))
        assert done.returncode == 0, done.stderr
    assert "ovsnat-fip" not in external_ids(lab)
    assert eventually(lambda: seen_as(lab, lab.vms["vm1"].ns) == SNAT)


def test_bind_with_the_hosts_config_refuses_a_fip_the_controller_would_reject(host):
    """A rejected port loses all its flows, PAT included: --config catches it beforehand."""
    lab = host
    conf = f"{lab.hosts['hv1'].rundir}/ovsnat.conf"
    for fip in ("198.51.100.20", SNAT, "203.0.113.1"):  # outside external_cidr, SNAT, gw
        done = ovsnat("bind", "--iface-id", "vm1", "--fip", fip, "--config", conf)
        assert done.returncode == 1 and "refused" in done.stderr, (fip, done.stderr)
    assert "ovsnat-fip" not in external_ids(lab)
    done = ovsnat("bind", "--iface-id", "vm1", "--fip", FIP, "--config", conf)  # db from conf
    assert done.returncode == 0, done.stderr
    assert eventually(lambda: seen_as(lab, lab.vms["vm1"].ns) == FIP), scenario.controller_log(
        lab, "hv1"
    )
