"""The one command of the issue's "done when": `ovsnat lab demo --openstack` brings the
OpenStack lab up and narrates Neutron driving ovsnat. Run here on MariaDB, so it is also the
suite's run against Neutron's real migrations (`neutron-db-manage upgrade heads`); the other
OpenStack modules run on SQLite (OVSNAT_OPENSTACK_DB=mariadb runs them on MariaDB too).

The narration is checked for what it claims: leases, PAT through each host's SNAT address,
east-west, a FIP reached from outside and withdrawn within 2 s of Neutron's answer, boots
and a live migration that wait for Neutron's network-vif-plugged as Nova does (the
destination's within 1 s of its plug, before the guest moves), after which the inbound
session still holds and the port is ACTIVE on its new host with a single binding.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.openstack]


def ovsnat(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovsnat.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def seconds(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in the narration:\n{text}"
    return float(m.group(1))


def test_the_openstack_demo_on_mariadb_with_neutrons_migrations(request):
    from tests.conftest import _require_lab_prerequisites
    _require_lab_prerequisites(request)
    out = ovsnat("lab", "demo", "--openstack", "--db", "mariadb")
    text = out.stdout
    lab = re.search(r"ovsnat lab down (\w+)", text)
    try:
        assert out.returncode == 0, (text + out.stderr)[-3000:]
        print(text)
        assert re.search(r"schema by Neutron's migrations .* heads \w+", text), text
        assert text.count("alive=True") == 2
        snat = dict(re.findall(r"(hv\d)'s SNAT address, a port Neutron allocated on "
                               r"'public': ([\d.]+)", text))
        assert len(set(snat.values())) == 2
        leases = re.findall(r"(inst-[ab]) on (hv\d): lease (10\.1\.0\.\d+)/24 router 10.1.0.1 "
                            r"DNS 198.51.100.53 MTU 1500 .*; port ACTIVE", text)
        assert [(n, h) for n, h, _ in leases] == [("inst-a", "hv1"), ("inst-b", "hv2")]
        for name, host, _ in leases:
            assert f"{name} -> server: the server sees {snat[host]} ({host}'s SNAT" in text
        ip_a = leases[0][2]
        assert f"across the fabric: inst-b sees {ip_a} (no NAT" in text
        fip = re.search(r"associated ([\d.]+): the server's pings answered", text).group(1)
        assert seconds(r"pings answered ([\d.]+) s after Neutron's answer", text) < 2.0
        assert f"inst-a -> server is seen as {fip}" in text
        assert seconds(r"no reply ([\d.]+) s after Neutron's answer", text) < 2.0
        assert f"inst-a -> server: seen as {snat['hv1']} (PAT)" in text
        booted = re.findall(r"(inst-[ab]) on (hv\d): network-vif-plugged reached Nova's API "
                            r"([\d.]+) s after the plug", text)
        assert [(n, h) for n, h, _ in booted] == [("inst-a", "hv1"), ("inst-b", "hv2")]
        assert "the source waits for network-vif-plugged from hv2 before the guest moves" \
            in text and "up to 300 s, fatal" in text
        steps = re.findall(r"^\s+([\d.]+) s  (.+)$", text, re.M)
        names = [name for _, name in steps]
        assert names.index("row created at destination") < names.index(
            "network-vif-plugged") < names.index("guest on destination"), steps
        assert seconds(r"the wait: network-vif-plugged reached Nova's API ([\d.]+) s after "
                       r"os-vif created the port's row on hv2", text) < 1.0
        assert re.search(r"the inbound session: HELD \d+ echoes", text), text
        assert seconds(r"longest ping gap ([\d.]+) s", text) < 2.0
        assert "port ACTIVE on hv2; bindings [('hv2', 'ACTIVE')]" in text
        assert "hv2's ovsnat answered" in text
    finally:
        if lab:
            ovsnat("lab", "down", lab.group(1))
