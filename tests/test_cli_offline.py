"""`ovsnat flows` compiles a host offline from the sample config and ports files."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ovsnat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ovsnat.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_flows_from_the_sample_files_program_good_ports_and_report_the_bad_one():
    proc = ovsnat("flows", "--config", "etc/ovsnat.conf.sample", "--ports", "etc/ports.sample.json")
    assert proc.returncode == 0, proc.stderr
    assert "set_field:10.0.0.11->ip_dst" in proc.stdout  # vm1's FIP, inbound
    assert "load:0xcb00710a->NXM_NX_REG8[]" in proc.stdout  # and outbound
    assert "nw_src=10.0.0.12" in proc.stdout  # vm2 admitted (PAT)
    assert proc.stderr.strip() == (
        "rejected: port 'tapbad': external_ids:ovsnat-fixed-ip: '10.0.0.300' is not an IPv4 address"
    )


def test_a_bad_option_stops_with_one_message_naming_it(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[ovsnat]\nsnat_ip = 203.0.113.11\nsnat_port_min = 30000\n")
    proc = ovsnat("flows", "--config", str(conf), "--ports", "etc/ports.sample.json")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "ovsnat flows: snat_port_min: 30000 is above snat_port_max 29999 (range reversed)"
    )


def test_an_unknown_option_is_an_error_not_a_silent_default(tmp_path):
    conf = tmp_path / "typo.conf"
    conf.write_text("[ovsnat]\nsnat_ip = 203.0.113.11\nsnat_port_mn = 1000\n")
    proc = ovsnat("flows", "--config", str(conf), "--ports", "etc/ports.sample.json")
    assert proc.returncode == 2 and "snat_port_mn: unknown option" in proc.stderr


def test_status_without_ovsdb_says_so_at_once_in_one_line(tmp_path):
    conf = tmp_path / "host.conf"
    conf.write_text(
        f"[ovsnat]\nsnat_ip = 203.0.113.11\novsdb_connection = unix:{tmp_path}/no-such-db.sock\n"
    )
    proc = ovsnat("status", "--config", str(conf))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"ovsnat status: cannot connect to OVSDB at unix:{tmp_path}/no-such-db.sock"
    )
