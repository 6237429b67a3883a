"""ovsnat's controller serving bgp mode (docs/bgp.md section 4) on real Open vSwitch, with
real packets: ryu-manager reads the routed ports from OVSDB, follows the kernel's default
route as zebra would install it (ECMP, a next hop per ToR whose session is up), keeps the
ToRs' select group equal to it, and writes the routes FRR announces; a restart finds
everything in place and sends and writes nothing. `ip route` plays zebra's part here
(ovsnat.lab.routedhost); tests/test_bgp_e2e_lab.py runs FRR itself.
"""

from __future__ import annotations

import os
import time

import pytest

from ovsnat.lab.routedhost import ECMP, SERVER, SNAT, RoutedHost, ip
from ovsnat.lab.sh import wait_for
from ovsnat.lab.traffic import ping, tcp_connect, udp_request

pytestmark = pytest.mark.lab

FIP = "203.0.113.10"


@pytest.fixture(scope="module")
def lab():
    host = RoutedHost().up()
    try:
        host.vm = host.add_vm(11, fip=FIP)
        yield host
    finally:
        host.down()


def groups_become(lab: RoutedHost, *devs: str, timeout: float = 20) -> None:
    """Wait until the group's buckets watch exactly `devs`; else say what the switch holds
    and what the controller said."""
    try:
        wait_for(lambda: lab.routed_through(*devs), timeout, what=f"buckets for {devs}")
    except Exception as e:
        groups = lab.ovs.ofctl("dump-groups", "br-int", check=False)
        raise AssertionError((str(e), groups, lab.controller.text()[-6000:])) from None


def test_the_controller_serves_a_fip_through_the_tors_and_the_vm_out_through_it(lab):
    groups_become(lab, "up0", "up1")  # the kernel's two next hops
    result = wait_for(lambda: (r := ping(lab.ns["srv"], FIP, count=3, wait=1)).received and r,
                      15, what="the FIP from outside")  # fmt: skip
    assert result.received >= 1
    assert ping(lab.vm, SERVER, count=3, wait=1).received >= 1  # out through its FIP
    assert "Traceback" not in lab.controller.text()


def test_the_group_follows_the_kernels_next_hops(lab):
    """A ToR's session down (zebra replaces the default with the other hop): its bucket
    goes within a second, traffic goes on through the other; back up: both again."""
    groups_become(lab, "up0", "up1")
    ip(lab.ns["hv"], "route", "replace", "default", "proto", "bgp", "via", "10.254.1.2", "dev",
       "bgp1")  # fmt: skip
    took = time.monotonic()
    groups_become(lab, "up1", timeout=5)  # ToR A's bucket gone
    assert time.monotonic() - took < 1.0
    assert ping(lab.vm, SERVER, count=3, wait=1).received >= 1
    ip(lab.ns["hv"], "route", "replace", "default", "proto", "bgp", *ECMP)
    groups_become(lab, "up0", "up1", timeout=5)


def test_the_host_writes_its_snat_and_fip_routes_and_withdraws_a_fip_that_leaves(lab):
    wait_for(lambda: lab.announced() == {SNAT, FIP}, 10, what="SNAT and FIP routes")
    lab.ovs.vsctl("remove", "Interface", "tap11", "external_ids", "ovsnat-fip")
    wait_for(lambda: lab.announced() == {SNAT}, 5, what="the FIP withdrawn")
    lab.ovs.vsctl("set", "Interface", "tap11", f"external_ids:ovsnat-fip={FIP}")
    wait_for(lambda: lab.announced() == {SNAT, FIP}, 5, what="the FIP back")


def announcements(lab: RoutedHost) -> dict:
    status = lab.status().get("announcements", {})
    return {k: status.get(k) for k in ("announced", "wanted")}


def test_a_restarted_controller_finds_flows_group_and_routes_in_place_and_changes_nothing(lab):
    groups_become(lab, "up0", "up1")
    wait_for(lambda: lab.announced() == {SNAT, FIP}, 10, what="the routes")
    first = lab.controller
    assert "ovsnat: groups: group_id=1" in first.text()  # positive controls: it sent them
    assert "ovsnat: routes: " in first.text()
    first.stop()
    os.remove(os.path.join(lab.hv(1).rundir, "ovsnat-status.json"))  # the new one writes next
    second = lab.start_controller()
    wait_for(lambda: "flows in sync" in second.text(), 30, what="the new controller in sync")
    wait_for(lambda: "next hops now" in second.text(), 10, what="the kernel's next hops heard")
    wait_for(lambda: announcements(lab) == {"announced": 2, "wanted": 2}, 10,
             what="the new controller's view of the kernel's routes")  # fmt: skip
    assert "ovsnat: groups:" not in second.text()
    assert "to add" not in second.text()  # no flow_mod
    assert "ovsnat: routes: " not in second.text()  # no write: FRR would send no UPDATE
    assert lab.routed_through("up0", "up1") and lab.announced() == {SNAT, FIP}
    assert ping(lab.ns["srv"], FIP, count=2, wait=1).received >= 1


def test_a_vm_never_reaches_a_tors_control_plane(lab):
    """BGP (TCP 179) and BFD (UDP 3784) to a ToR's link address, and ping: dropped, and
    counted by the egress drop; the VM's route out is the positive control."""

    def guarded_drops() -> int:
        dump = lab.ovs.ofctl("dump-flows", "br-int", "table=30,ip,nw_dst=10.254.1.0/31")
        return sum(
            int(x.split("=", 1)[1].rstrip(",")) for x in dump.split() if x.startswith("n_packets=")
        )

    assert ping(lab.vm, SERVER, count=1, wait=1).received  # positive control: it routes out
    before = guarded_drops()
    assert not tcp_connect(lab, lab.vm, "10.254.1.0", 179, timeout=1).ok
    assert not udp_request(lab, lab.vm, "10.254.1.0", 3784, timeout=0.5).ok
    assert not ping(lab.vm, "10.254.1.0", count=2, wait=1).received
    assert guarded_drops() >= before + 4  # a SYN (and its retry), the BFD packet, the pings
