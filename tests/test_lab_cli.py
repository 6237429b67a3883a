"""The user's first commands: `ovsnat lab demo` (what `make lab` runs), `lab migrate` and
`lab down` from the command line."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ovsnat.lab import Lab
from ovsnat.lab.topology import list_lab_namespaces

pytestmark = pytest.mark.lab


def ovsnat(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ovsnat.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def lab_id(output: str) -> str:
    return re.search(r"tear down with: ovsnat lab down (\w+)", output).group(1)


def test_the_demo_narrates_nat_and_both_migrations_with_measurements():
    out = ovsnat("lab", "demo")
    try:
        assert out.returncode == 0, out.stderr[-2000:]
        text = out.stdout
        assert "vm1 (default network) -> server: the server sees 203.0.113.10" in text
        assert "vm2 (default network) -> server: the server sees 203.0.113.11" in text
        assert "ta1 (tenant-a) -> server: the server sees 203.0.113.11" in text
        assert "tb1 (tenant-b) -> server: the server sees 203.0.113.11" in text
        assert "vm2 (hv1) -> vm4 (hv2) across the fabric: vm4 sees 10.0.0.12" in text
        assert "ta1 (hv1) -> ta2 (hv2) across the fabric: ta2 sees 10.1.0.11" in text
        assert "tb1 -> 10.1.0.12: 0 of 2 answered" in text
        assert re.search(r"same port at once: HELD \d+ echoes[^/]* / HELD \d+ echoes", text)
        assert "len=3000 reply_len=3000" in text
        gap = float(re.search(r"ping gap ([\d.]+)s", text).group(1))
        assert gap <= 1.0, text
        assert "the inbound TCP session: HELD" in text
        assert re.search(r"the server sees 203\.0\.113\.21 \(hv2's PAT address\)", text)
        assert re.search(r"the old session: HELD \d+ echoes longest_gap=0\.\d\d", text), text
        assert "ovsnat lab down" in text and "flows/pipeline.md" in text
    finally:
        if "tear down with" in out.stdout:
            ovsnat("lab", "down", lab_id(out.stdout))


def test_up_migrate_and_down_from_the_command_line():
    out = ovsnat("lab", "up")
    assert out.returncode == 0, out.stderr[-2000:]
    ident = lab_id(out.stdout)
    try:
        moved = ovsnat("lab", "migrate", "vm1", "hv2", "--lab", ident)
        assert moved.returncode == 0 and "moved vm1 from hv1 to hv2" in moved.stdout
        assert Lab.load(ident).vms["vm1"].host == "hv2"
        status = ovsnat("lab", "status")
        assert status.returncode == 0, status.stderr
        assert f"lab {ident}" in status.stdout
    finally:
        down = ovsnat("lab", "down", ident)
    assert down.returncode == 0
    assert not [ns for ns in list_lab_namespaces() if ident in ns]


def frr_pids(ident: str) -> list[str]:
    """FRR daemons whose command line names this lab's FRR directory."""
    out = subprocess.run(["pgrep", "-f", f"/usr/lib/frr/.*ovsnat-{ident}-frr-"],
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout.split()


def test_the_bgp_demo_narrates_the_fabric_nat_and_a_migration_and_down_stops_frr():
    out = ovsnat("lab", "demo", "--bgp")
    ident = lab_id(out.stdout) if "tear down with" in out.stdout else None
    try:
        assert out.returncode == 0, out.stderr[-2000:]
        text = out.stdout
        assert re.search(r"203\.0\.113\.10 \(vm1's FIP\): ta -> hv1, tb -> hv1, out -> t[ab]", text)
        assert re.search(r"203\.0\.113\.12 \(vm3's FIP\): ta -> hv2, tb -> hv2, out -> t[ab]", text)
        assert re.search(r"203\.0\.113\.21 \(hv2's SNAT\): ta -> hv2, tb -> hv2", text), text
        assert re.search(r"server -> 203\.0\.113\.10 \(vm1's FIP\): [12] of 2 answered", text)
        assert "vm2 (hv1, PAT) -> server: the server sees 203.0.113.11" in text
        assert "vm4 (hv2, PAT) -> server: the server sees 203.0.113.21" in text
        assert "ta1 (hv1) -> ta2 (hv2) across the fabric: ta2 sees 10.1.0.11" in text
        for tor in ("ta", "tb"):
            assert re.search(rf"  {tor}: best path now hv2 \([\d.]+ s after", text), text
        assert re.search(r"  out: best path now t[ab] \([\d.]+ s after", text), text
        assert re.search(r"the inbound TCP session: HELD \d+ echoes", text), text
        assert frr_pids(ident)  # positive control for the teardown's check
    finally:
        if ident:
            down = ovsnat("lab", "down", ident)
    assert down.returncode == 0, down.stderr
    assert not [ns for ns in list_lab_namespaces() if ident in ns]
    assert frr_pids(ident) == []
