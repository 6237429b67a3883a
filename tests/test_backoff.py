"""A restarted controller is reconnected within a second or two, whatever happened before:
ovs-vswitchd 3.1 applies the Controller row's max_backoff=1000 to a connection only in a
reconfiguration made while that connection is up, and the controller asks for one once in
sync (ovsnat.core.reconcile.Reconfigure). Without it, a restarted controller waited up to 8 s
(OVS's fixed backoff of 1, 2, 4, 8 s; measured in docs/performance.md)."""

from __future__ import annotations

import re
import time

import pytest

from ovsnat.lab import scenario
from ovsnat.lab.sh import wait_for
from tests.test_controller import SNAT

pytestmark = pytest.mark.lab

OUTAGE = 9.0  # seconds: long enough for OVS's default backoff to reach 8 s
LIMIT = 2.0  # seconds from the controller listening to the switch connected


def log_since(lab, offset: int) -> str:
    return scenario.controller_log(lab, "hv1")[offset:]


def next_cfg(host) -> int:
    return int(host.vsctl("get", "Open_vSwitch", ".", "next_cfg"))


def touched(host) -> str:
    return host.vsctl("get", "controller", "br-int", "other_config").strip()


def in_sync_and_reconfigured(lab, host, offset: int, before: str) -> None:
    """Wait until the controller connected, found the flows in sync, touched the Controller
    row, and ovs-vswitchd has applied that (cur_cfg caught up with next_cfg)."""
    wait_for(
        lambda: re.search(r"in sync [\d.]+ s after the datapath connected", log_since(lab, offset)),
        20,
        what="the controller in sync",
    )
    wait_for(
        lambda: "ovsnat-reconfigured" in touched(host) and touched(host) != before,
        10,
        what="the controller to touch its Controller row",
    )
    wait_for(
        lambda: int(host.vsctl("get", "Open_vSwitch", ".", "cur_cfg")) >= next_cfg(host),
        10,
        what="ovs-vswitchd to apply the change",
    )


def restart_after_outage(lab) -> float:
    """Stop the controller, wait OUTAGE, start it: seconds from its app starting (the
    listener is up) to the switch connected."""
    scenario.stop_controller(lab, "hv1")
    time.sleep(OUTAGE)  # on purpose: the outage itself
    offset = len(scenario.controller_log(lab, "hv1"))
    scenario.start_controller(lab, "hv1")
    seen: dict[str, float] = {}

    def mark() -> bool:
        log = log_since(lab, offset)
        for what, pattern in (("up", "ovsnat: bridge "), ("connected", r"datapath \w+ connected")):
            if what not in seen and re.search(pattern, log):
                seen[what] = time.monotonic()
        return "connected" in seen

    wait_for(mark, 30, interval=0.02, what="the switch to reconnect")
    return seen["connected"] - seen.get("up", seen["connected"])


def test_a_restarted_controller_is_reconnected_within_two_seconds_also_after_an_ovs_restart(
    make_lab,
):
    """On a host with no VM (no other OVSDB change ever reconfigures ovs-vswitchd while the
    controller is connected), with the bridge pointed at the controller in one transaction."""
    lab = make_lab()
    host = lab.add_host("hv1")
    scenario.start_controller(lab, "hv1", SNAT)
    assert host.vsctl("get", "controller", "br-int", "max_backoff").strip() == "1000"
    in_sync_and_reconfigured(lab, host, 0, "")
    before = touched(host)
    took = restart_after_outage(lab)
    assert took < LIMIT, f"reconnected {took:.1f} s after the controller came back"
    in_sync_and_reconfigured(lab, host, 0, before)  # settled before the next step

    offset, before = len(scenario.controller_log(lab, "hv1")), touched(host)
    host.ovs.stop_daemon("ovs-vswitchd", kill=True)  # a new ovs-vswitchd: a new connection
    host.ovs.start_vswitchd()  # object, created with OVS's 8 s backoff
    in_sync_and_reconfigured(lab, host, offset, before)
    took = restart_after_outage(lab)
    assert took < LIMIT, (
        f"after an ovs-vswitchd restart: reconnected {took:.1f} s after the controller came back"
    )
