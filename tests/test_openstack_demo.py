"""The one command of the issue's "done when": `ovsnat lab demo --openstack` brings the
OpenStack lab up (Keystone, Placement, Glance, Nova, Neutron, RabbitMQ, MariaDB, two
hypervisors) and narrates OpenStack driving ovsnat with the `openstack` command.

The narration is checked for what it claims: boots by `openstack server create` that Nova
completed after Neutron's network-vif-plugged, leases, PAT through each host's SNAT
address, east-west, a FIP (`openstack floating ip create/set --port/unset --port`) reached
from outside and withdrawn within 2 s of the command's return, a live migration by
`openstack server migrate --live-migration` with Nova's defaults whose destination's event
came within 1 s of its row and before the guest moved, after which the inbound session still
holds and the port is ACTIVE on its new host with a single binding, and a delete by
`openstack server delete` that leaves no guest, row or port.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

# The demo is `make lab`'s main job; its narration is checked with the long runs
# (make test-openstack-long), keeping `make test` under its 25 minutes.
pytestmark = [pytest.mark.lab, pytest.mark.openstack, pytest.mark.openstack_long]


def ovsnat(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ovsnat.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def seconds(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in the narration:\n{text}"
    return float(m.group(1))


def test_the_openstack_demo(request):
    from tests.conftest import _require_lab_prerequisites

    _require_lab_prerequisites(request)
    out = ovsnat("lab", "demo", "--openstack")
    text = out.stdout
    lab = re.search(r"ovsnat lab down (\w+)", text)
    try:
        assert out.returncode == 0, (text + out.stderr)[-3000:]
        print(text)
        assert text.count("alive=True") == 2
        assert len(re.findall(r"nova-compute on hv\d: up", text)) == 2
        snat = dict(
            re.findall(
                r"(hv\d)'s SNAT address, a port Neutron allocated on "
                r"'public': ([\d.]+)",
                text,
            )
        )
        assert len(set(snat.values())) == 2
        booted = re.findall(
            r"(inst-[ab]): ACTIVE on (hv\d) after [\d.]+ s \(Nova's build "
            r"[\d.]+ s\); network-vif-plugged reached Nova's API ([\d.]+) s "
            r"after the paused guest's tap appeared, and the guest ran "
            r"([\d.]+) s later",
            text,
        )
        assert [(n, h) for n, h, _, _ in booted] == [("inst-a", "hv1"), ("inst-b", "hv2")]
        assert (
            "$ openstack server create --flavor lab.tiny --image lab-tiny --network "
            "tenant-a --host hv1 --wait" in text
        )
        leases = re.findall(
            r"(inst-[ab]) on (hv\d): lease (10\.1\.0\.\d+)/24 router 10.1.0.1 "
            r"DNS 198.51.100.53 MTU 1500 .*; port ACTIVE",
            text,
        )
        assert [(n, h) for n, h, _ in leases] == [("inst-a", "hv1"), ("inst-b", "hv2")]
        for name, host, _ in leases:
            assert f"{name} -> server: the server sees {snat[host]} ({host}'s SNAT" in text
        ip_a = leases[0][2]
        assert f"across the fabric: inst-b sees {ip_a} (no NAT" in text
        assert "$ openstack floating ip create public" in text
        fip = re.search(r"associated ([\d.]+) \(the command took", text).group(1)
        assert (
            "$ openstack floating ip set --port" in text
            and f"$ openstack floating ip unset --port {fip}" in text
        )
        assert seconds(r"the server's pings answered ([\d.]+) s after it returned", text) < 2.0
        assert f"inst-a -> server is seen as {fip}" in text
        assert seconds(r"no reply later than ([\d.]+) s after the command returned", text) < 2.0
        assert f"inst-a -> server: seen as {snat['hv1']} (PAT)" in text
        assert "$ openstack server migrate --live-migration --host hv2 --wait inst-a" in text
        assert (
            "the source waits for network-vif-plugged from hv2 before the guest moves" in text
            and "up to 300 s, fatal" in text
        )
        steps = re.findall(r"^\s+([\d.]+) s  (.+)$", text, re.M)
        names = [name.split(" (")[0] for _, name in steps]
        assert names == [
            "live migration requested",
            "os-vif's row on hv2",
            "network-vif-plugged from hv2 at Nova's API",
            "the guest on hv2",
        ], steps
        times = [float(t) for t, _ in steps]
        assert times == sorted(times), steps
        assert (
            seconds(
                r"the wait: network-vif-plugged reached Nova's API ([\d.]+) s after "
                r"os-vif created the port's row on hv2",
                text,
            )
            < 1.0
        )
        assert re.search(r"the inbound session: HELD \d+ echoes", text), text
        assert seconds(r"longest ping gap ([\d.]+) s", text) < 2.0
        assert (
            "Nova: ACTIVE on hv2; Neutron: port ACTIVE on hv2, bindings [('hv2', 'ACTIVE')]" in text
        )
        assert "hv2's ovsnat answered" in text
        assert "$ openstack server delete --wait inst-b" in text
        assert re.search(r"gone after [\d.]+ s: guest gone, hv2's row gone, port deleted", text), (
            text
        )
    finally:
        if lab:
            ovsnat("lab", "down", lab.group(1))
