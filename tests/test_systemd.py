"""The systemd unit samples (etc/systemd): systemd itself accepts them, they say what an
operator relies on (after Open vSwitch, restarted on failure, no green DNS), and their
command lines really start ovsnat's controller (lab test)."""

from __future__ import annotations

import configparser
import glob
import os
import shlex
import subprocess
import sys

import pytest

UNITS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "etc", "systemd",
                                      "*.service")))
PREFIX = "/opt/ovsnat"                 # where the samples expect the virtualenv


def localized(path: str, tmp_path, conf: str | None = None) -> str:
    """The unit with this test's virtualenv (and config) in place of the documented ones."""
    text = open(path).read().replace(PREFIX, sys.prefix)
    if conf:
        text = text.replace("/etc/ovsnat/ovsnat.conf", conf)
    out = tmp_path / os.path.basename(path)
    out.write_text(text)
    return str(out)


def unit(path: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(path)
    return parser


def test_there_are_units_for_both_frameworks():
    assert {os.path.basename(u) for u in UNITS} >= {"ovsnat.service", "ovsnat-osken.service"}


@pytest.mark.parametrize("path", UNITS, ids=os.path.basename)
def test_systemd_analyze_verify_accepts_the_unit(path, tmp_path):
    proc = subprocess.run(["systemd-analyze", "verify", localized(path, tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not proc.stderr.strip(), proc.stderr


@pytest.mark.parametrize("path", UNITS, ids=os.path.basename)
def test_the_unit_says_what_operators_rely_on(path):
    u = unit(path)
    assert "openvswitch-switch.service" in u["Unit"]["After"].split()
    assert u["Service"]["Restart"] == "on-failure"
    assert "EVENTLET_NO_GREENDNS=yes" in u["Service"].get("Environment", "")
    assert u["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.lab
@pytest.mark.parametrize("path", [u for u in UNITS if "neutron" not in u], ids=os.path.basename)
def test_the_units_command_line_starts_the_controller(path, make_lab, tmp_path):
    from ovsnat.lab import scenario
    from ovsnat.lab.sh import wait_for
    lab = make_lab()
    lab.add_host("hv1")
    conf = scenario.write_config(lab, "hv1", "203.0.113.11")
    argv = shlex.split(unit(localized(path, tmp_path, conf))["Service"]["ExecStart"]
                       .replace("\\\n", " "))
    env = dict(kv.split("=", 1) for kv in unit(path)["Service"]["Environment"].split())
    lab.spawn("ctl-hv1", argv, ns=lab.hosts["hv1"].ns, env={**lab.hosts["hv1"].ovs.env, **env})
    lab.hosts["hv1"].vsctl("set-controller", "br-int", "tcp:127.0.0.1:6653")
    wait_for(lambda: "flows in sync" in scenario.controller_log(lab, "hv1") or
             "sync:" in scenario.controller_log(lab, "hv1"), 30, what="the controller's sync")
