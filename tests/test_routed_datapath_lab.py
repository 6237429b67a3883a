"""bgp mode's datapath with real packets on real Open vSwitch (docs/bgp.md section 4), before
the controller serves the mode: the flows ovsnat compiles for a host on two routed
uplinks, and its select group, installed with ovs-ofctl, then traffic.

    srv (198.51.100.10) --- ta (ToR A) --- up0 [hv: OVS] up1 --- tb (ToR B) --- srv
                                            bgp0, bgp1 -> hk (the host's kernel: 10.254.1.1, .3)
                                            tap -> vm (10.0.0.11, FIP 203.0.113.10)

srv reaches the FIP through ToR A; the answers leave through the ToRs' group (the bucket
a flow takes: tests/test_select_group_lab.py shows both taken and a dead link skipped). The
host's kernel speaks with the ToRs through its own ports (what BGP and BFD need), and a VM
never reaches a ToR's link address.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
import tempfile

import netaddr
import pytest

from ovsnat.compile import routed_flows
from ovsnat.compile.compiler import compile_state
from ovsnat.compile.flows import ofctl_text
from ovsnat.compile.punt_flows import METERS
from ovsnat.core.state import build_state
from ovsnat.lab.ovs import Ovs
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.traffic import ping
from ovsnat.model import HostConfig, VmPort
from ovsnat.model.options import defaults

pytestmark = pytest.mark.lab

FIP, VM_IP, VM_MAC = "203.0.113.10", "10.0.0.11", "02:00:0a:00:00:0b"
SERVER = "198.51.100.10"
OPTIONS = {
    "snat_ip": "203.0.113.11",
    "external_gateway_mac": "02:00:00:00:00:fe",  # unused in bgp mode
    "external_mode": "bgp",
    "bgp_asn": "4200100001",
    "bgp_uplinks": "up0,up1",
    "bgp_kernel_ports": "bgp0,bgp1",
    "bgp_links": "10.254.1.1/31,10.254.1.3/31",
}


def veth(a: str, a_ns: str, b: str, b_ns: str) -> None:
    run(["ip", "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns])
    run(["ip", "-n", a_ns, "link", "set", a, "up"])
    run(["ip", "-n", b_ns, "link", "set", b, "up"])


def ip(ns: str, *args: str) -> None:
    run(["ip", "-n", ns, *args])


def mac_of(ns: str, dev: str) -> str:
    return json.loads(run(["ip", "-n", ns, "-j", "link", "show", dev]).stdout)[0]["address"]


@pytest.fixture(scope="module")
def fabric():
    lab = secrets.token_hex(3)
    ns = {r: f"ovsnat-{lab}-{r}" for r in ("hv", "vm", "hk", "ta", "tb", "srv")}
    rundir = tempfile.mkdtemp(prefix=f"ovsnat-{lab}-ovs-")
    ovs = Ovs(rundir, ns["hv"])
    try:
        for name in ns.values():
            run(["ip", "netns", "add", name])
            ip(name, "link", "set", "lo", "up")
        veth("tap", ns["hv"], "eth0", ns["vm"])
        veth("up0", ns["hv"], "eth0", ns["ta"])
        veth("up1", ns["hv"], "eth0", ns["tb"])
        veth("bgp0", ns["hv"], "k0", ns["hk"])
        veth("bgp1", ns["hv"], "k1", ns["hk"])
        veth("a0", ns["srv"], "s0", ns["ta"])
        veth("b0", ns["srv"], "s1", ns["tb"])
        ip(ns["vm"], "link", "set", "eth0", "address", VM_MAC)
        ip(ns["vm"], "addr", "add", f"{VM_IP}/24", "dev", "eth0")
        ip(ns["vm"], "route", "add", "default", "via", "10.0.0.1")
        ip(ns["hk"], "addr", "add", "10.254.1.1/31", "dev", "k0")
        ip(ns["hk"], "addr", "add", "10.254.1.3/31", "dev", "k1")
        tors = (
            ("ta", "10.254.1.0/31", "s0", "10.254.9.0/31", "10.254.9.1"),
            ("tb", "10.254.1.2/31", "s1", "10.254.9.2/31", "10.254.9.3"),
        )
        for tor, link, to_srv, srv_side, srv_addr in tors:
            ip(ns[tor], "addr", "add", link, "dev", "eth0")
            ip(ns[tor], "addr", "add", srv_side, "dev", to_srv)
            ip(ns[tor], "route", "add", f"{SERVER}/32", "via", srv_addr)
            run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=ns[tor])
        ip(ns["ta"], "route", "add", "203.0.113.0/24", "via", "10.254.1.1")
        ip(ns["tb"], "route", "add", "203.0.113.0/24", "via", "10.254.1.3")
        ip(ns["srv"], "addr", "add", f"{SERVER}/32", "dev", "lo")
        ip(ns["srv"], "addr", "add", "10.254.9.1/31", "dev", "a0")
        ip(ns["srv"], "addr", "add", "10.254.9.3/31", "dev", "b0")
        ip(ns["srv"], "route", "add", "203.0.113.0/24", "via", "10.254.9.0", "src", SERVER)
        for conf in ("all", "default", "a0", "b0"):  # answers may come back through ToR B
            run(["sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0"], ns=ns["srv"])
        ovs.start()
        ovs.add_bridge("br-int")
        for dev in ("tap", "up0", "up1", "bgp0", "bgp1"):
            ovs.vsctl("add-port", "br-int", dev)
        port = {dev: ovs.ofport(dev) for dev in ("tap", "up0", "up1", "bgp0", "bgp1")}
        cfg = HostConfig.parse({**defaults(), **OPTIONS, "uplink_ofport": 0})
        cfg = dataclasses.replace(
            cfg,
            routed=tuple(
                dataclasses.replace(r, uplink_ofport=port[up], kernel_ofport=port[kernel],
                                    tor_mac=netaddr.EUI(mac_of(ns[tor], "eth0")))
                for r, up, kernel, tor in zip(cfg.routed, ("up0", "up1"), ("bgp0", "bgp1"),
                                              ("ta", "tb"), strict=True)
            ),
        )  # fmt: skip
        vm = VmPort.from_external_ids(
            "tap", port["tap"], {"iface-id": "vm1", "attached-mac": VM_MAC,
                                 "ovsnat-fixed-ip": VM_IP, "ovsnat-fip": FIP})  # fmt: skip
        for meter in METERS:
            ovs.ofctl("-O", "OpenFlow13", "add-meter", "br-int", meter.text())
        ovs.ofctl("-O", "OpenFlow13", "add-group", "br-int", routed_flows.group(cfg).text())
        flows = ofctl_text(compile_state(build_state(cfg, [vm])))
        ovs.ofctl("-O", "OpenFlow13", "--bundle", "replace-flows", "br-int", "-", input=flows)
        for dev in ("up0", "up1"):
            wait_for(lambda d=dev: ovs.vsctl("get", "Interface", d, "link_state").strip() == "up",
                     10, what=f"{dev} with carrier")  # fmt: skip
        yield ovs, ns, port
    finally:
        ovs.stop()
        for name in ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        subprocess.run(["rm", "-rf", rundir], timeout=30)


def test_the_hosts_kernel_speaks_with_each_tor_over_its_own_link(fabric):
    _, ns, _ = fabric
    for tor_address in ("10.254.1.0", "10.254.1.2"):
        assert ping(ns["hk"], tor_address, count=2, wait=1).received, tor_address


def test_a_fip_is_reached_from_outside_through_a_tor_and_answers_through_the_group(fabric):
    _, ns, _ = fabric
    result = wait_for(lambda: (r := ping(ns["srv"], FIP, count=3, wait=1)).received and r, 15,
                      what="the FIP from outside")  # fmt: skip
    assert result.received >= 1
    out = ping(ns["vm"], SERVER, count=3, wait=1)  # the VM out through its FIP
    assert out.received >= 1


def test_a_vm_never_reaches_a_tors_link_address(fabric):
    ovs, ns, _ = fabric

    def guarded_drops() -> int:
        dump = ovs.ofctl(
            "-O", "OpenFlow13", "dump-flows", "br-int", "table=30,ip,nw_dst=10.254.1.0/31"
        )
        return sum(
            int(x.split("=", 1)[1].rstrip(",")) for x in dump.split() if x.startswith("n_packets=")
        )

    assert ping(ns["vm"], SERVER, count=1, wait=1).received  # positive control: it routes out
    before = guarded_drops()
    assert not ping(ns["vm"], "10.254.1.0", count=3, wait=1).received
    assert guarded_drops() >= before + 3
