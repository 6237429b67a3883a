"""The systemd unit samples (etc/systemd): systemd itself accepts them, they say what an
operator relies on (after Open vSwitch, restarted on failure, no green DNS), and their
command lines really start ovsnat's controller (lab test)."""

from __future__ import annotations

import configparser
import glob
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = os.path.join(os.path.dirname(__file__), "..")
UNITS = sorted(glob.glob(os.path.join(REPO, "etc", "systemd", "*.service")))
# The controller's units (ryu-manager, os-ken); the Neutron agent's and the metadata proxy's
# have their own tests (tests/test_openstack.py, tests/test_metadata_proxy.py).
CONTROLLERS = [u for u in UNITS if re.search(r"/(ryu-manager|ovsnat-agent) ", Path(u).read_text())]
PREFIX = "/opt/ovsnat"  # where the samples expect ovsnat's virtualenv
NEUTRON_PREFIX = "/opt/neutron"  # and Neutron's (ovsnat-neutron-agent)


def localized(path: str, tmp_path, conf: str | None = None) -> str:
    """The unit with this test's virtualenvs (and config) in place of the documented ones."""
    neutron_venv = os.environ.get("VENV_NEUTRON", os.path.join(REPO, ".venv-neutron"))
    text = (
        Path(path)
        .read_text()
        .replace(PREFIX, sys.prefix)
        .replace(NEUTRON_PREFIX, os.path.abspath(neutron_venv))
    )
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


def test_there_are_units_for_both_frameworks_and_the_neutron_agent():
    assert {os.path.basename(u) for u in UNITS} >= {
        "ovsnat.service",
        "ovsnat-osken.service",
        "ovsnat-neutron-agent.service",
    }


@pytest.mark.parametrize("path", UNITS, ids=os.path.basename)
def test_systemd_analyze_verify_accepts_the_unit(path, tmp_path):
    proc = subprocess.run(
        ["systemd-analyze", "verify", localized(path, tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert not proc.stderr.strip(), proc.stderr


@pytest.mark.parametrize("path", UNITS, ids=os.path.basename)
def test_the_unit_says_what_operators_rely_on(path):
    u = unit(path)
    assert "openvswitch-switch.service" in u["Unit"]["After"].split()
    assert u["Service"]["Restart"] == "on-failure"
    assert u["Install"]["WantedBy"] == "multi-user.target"
    if path in CONTROLLERS:  # eventlet (ryu, os-ken); the Neutron agent runs on threads
        assert "EVENTLET_NO_GREENDNS=yes" in u["Service"].get("Environment", "")
    elif "neutron" in os.path.basename(path):  # the test that runs it: tests/test_openstack.py
        assert "--config-file /etc/neutron/neutron.conf" in u["Service"]["ExecStart"]


@pytest.mark.lab
@pytest.mark.parametrize("path", CONTROLLERS, ids=os.path.basename)
def test_the_units_command_line_starts_the_controller(path, make_lab, tmp_path):
    from ovsnat.lab import scenario
    from ovsnat.lab.sh import wait_for

    lab = make_lab()
    lab.add_host("hv1")
    conf = scenario.write_config(lab, "hv1", "203.0.113.11")
    argv = shlex.split(
        unit(localized(path, tmp_path, conf))["Service"]["ExecStart"].replace("\\\n", " ")
    )
    env = dict(kv.split("=", 1) for kv in unit(path)["Service"]["Environment"].split())
    lab.spawn("ctl-hv1", argv, ns=lab.hosts["hv1"].ns, env={**lab.hosts["hv1"].ovs.env, **env})
    lab.hosts["hv1"].vsctl("set-controller", "br-int", "tcp:127.0.0.1:6653")
    wait_for(
        lambda: (
            "flows in sync" in scenario.controller_log(lab, "hv1")
            or "sync:" in scenario.controller_log(lab, "hv1")
        ),
        30,
        what="the controller's sync",
    )
