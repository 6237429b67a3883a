"""ovsnat's controller serving bgp mode (docs/bgp.md section 4) on real Open vSwitch, with
real packets: ryu-manager reads the routed ports from OVSDB, follows the kernel's default
route as zebra would install it (ECMP, a next hop per ToR whose session is up), and keeps
the ToRs' select group equal to it; a restart finds everything in place and sends nothing.

    srv (198.51.100.10) --- ta (ToR A) --- up0 [hv: OVS, ovsnat] up1 --- tb (ToR B) --- srv
                                           bgp0 (10.254.1.1), bgp1 (10.254.1.3): internal
                                           ports, the host's kernel, where the controller runs
                                           tap -> vm (10.0.0.11, FIP 203.0.113.10)

As in production, the kernel ports are OVS internal ports in the controller's namespace.
`ip route` plays zebra's part here; tests/test_bgp_frr_lab.py has FRR itself.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import time

import pytest

from ovsnat.lab.ovs import Ovs
from ovsnat.lab.scenario import CONTROLLER_ENV, controller_argv
from ovsnat.lab.sh import pid_alive, run, wait_for
from ovsnat.lab.traffic import ping
from ovsnat.model.options import defaults

pytestmark = pytest.mark.lab

FIP, VM_IP, VM_MAC = "203.0.113.10", "10.0.0.11", "02:00:0a:00:00:0b"
SERVER = "198.51.100.10"
OF_PORT = 6653  # inside the host's own namespace: no clash with other labs
OPTIONS = {
    "snat_ip": "203.0.113.11",
    "external_mode": "bgp",
    "bgp_asn": "4200100001",
    "bgp_uplinks": "up0,up1",
    "bgp_kernel_ports": "bgp0,bgp1",
    "bgp_links": "10.254.1.1/31,10.254.1.3/31",
}
TOR_ADDRESS = {"ta": "10.254.1.0", "tb": "10.254.1.2"}
ECMP = (
    "nexthop",
    "via",
    "10.254.1.0",
    "dev",
    "bgp0",
    "nexthop",
    "via",
    "10.254.1.2",
    "dev",
    "bgp1",
)


def ip(ns: str, *args: str) -> None:
    run(["ip", "-n", ns, *args])


def veth(a: str, a_ns: str, b: str, b_ns: str) -> None:
    run(["ip", "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns])
    ip(a_ns, "link", "set", a, "up")
    ip(b_ns, "link", "set", b, "up")


class Controller:
    """ryu-manager with ovsnat.app in the host's namespace; its log in the rundir."""

    def __init__(self, ns: str, ovs: Ovs, conf: str, n: int):
        self.log = os.path.join(ovs.rundir, f"ovsnat-{n}.log")
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *controller_argv(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **ovs.env, **CONTROLLER_ENV},
            )

    def text(self) -> str:
        with open(self.log) as f:
            return f.read()

    def stop(self) -> None:
        if pid_alive(self.proc.pid):
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def fabric():
    lab = secrets.token_hex(3)
    ns = {r: f"ovsnat-{lab}-{r}" for r in ("hv", "vm", "ta", "tb", "srv")}
    rundir = tempfile.mkdtemp(prefix=f"ovsnat-{lab}-ovs-")
    ovs = Ovs(rundir, ns["hv"])
    controllers: list[Controller] = []
    try:
        for name in ns.values():
            run(["ip", "netns", "add", name])
            ip(name, "link", "set", "lo", "up")
        veth("tap", ns["hv"], "eth0", ns["vm"])
        veth("up0", ns["hv"], "eth0", ns["ta"])
        veth("up1", ns["hv"], "eth0", ns["tb"])
        veth("a0", ns["srv"], "s0", ns["ta"])
        veth("b0", ns["srv"], "s1", ns["tb"])
        ip(ns["vm"], "link", "set", "eth0", "address", VM_MAC)
        ip(ns["vm"], "addr", "add", f"{VM_IP}/24", "dev", "eth0")
        ip(ns["vm"], "route", "add", "default", "via", "10.0.0.1")
        for tor, link, to_srv, srv_side, srv_addr, host in (
            ("ta", "10.254.1.0/31", "s0", "10.254.9.0/31", "10.254.9.1", "10.254.1.1"),
            ("tb", "10.254.1.2/31", "s1", "10.254.9.2/31", "10.254.9.3", "10.254.1.3"),
        ):
            ip(ns[tor], "addr", "add", link, "dev", "eth0")
            ip(ns[tor], "addr", "add", srv_side, "dev", to_srv)
            ip(ns[tor], "route", "add", f"{SERVER}/32", "via", srv_addr)
            ip(ns[tor], "route", "add", "203.0.113.0/24", "via", host)
            run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=ns[tor])
        ip(ns["srv"], "addr", "add", f"{SERVER}/32", "dev", "lo")
        ip(ns["srv"], "addr", "add", "10.254.9.1/31", "dev", "a0")
        ip(ns["srv"], "addr", "add", "10.254.9.3/31", "dev", "b0")
        ip(ns["srv"], "route", "add", "203.0.113.0/24", "via", "10.254.9.0", "src", SERVER)
        for conf in ("all", "default", "a0", "b0"):  # answers may come back through ToR B
            run(["sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0"], ns=ns["srv"])
        ovs.start()
        ovs.add_bridge("br-int")
        for dev in ("up0", "up1"):
            ovs.vsctl("add-port", "br-int", dev)
        for dev in ("bgp0", "bgp1"):
            ovs.vsctl("add-port", "br-int", dev, "--", "set", "Interface", dev, "type=internal")
        ip(ns["hv"], "addr", "add", "10.254.1.1/31", "dev", "bgp0")
        ip(ns["hv"], "addr", "add", "10.254.1.3/31", "dev", "bgp1")
        for dev in ("bgp0", "bgp1"):
            ip(ns["hv"], "link", "set", dev, "up")
        ids = {"iface-id": "vm1", "attached-mac": f'"{VM_MAC}"', "ovsnat-fixed-ip": VM_IP,
               "ovsnat-fip": FIP}  # fmt: skip
        ovs.vsctl("add-port", "br-int", "tap", "--", "set", "Interface", "tap",
                  *(f"external_ids:{k}={v}" for k, v in ids.items()))  # fmt: skip
        conf = os.path.join(rundir, "ovsnat.conf")
        options = {
            **defaults(),
            **OPTIONS,
            "ovsdb_connection": f"unix:{ovs.db_sock}",
            "status_file": os.path.join(rundir, "ovsnat-status.json"),
        }
        with open(conf, "w") as f:
            f.write("[ovsnat]\n" + "".join(f"{k} = {'' if v is None else v}\n"
                                           for k, v in options.items()))  # fmt: skip
        controllers.append(Controller(ns["hv"], ovs, conf, 1))
        ovs.vsctl("--", "--id=@c", "create", "Controller", f'target="tcp:127.0.0.1:{OF_PORT}"',
                  "max_backoff=1000", "--", "set", "Bridge", "br-int", "controller=@c")  # fmt: skip
        ip(ns["hv"], "route", "add", "default", "proto", "bgp", *ECMP)  # zebra's, once up
        for tor in TOR_ADDRESS.values():  # the BGP sessions' traffic resolves their MACs
            wait_for(lambda t=tor: ping(ns["hv"], t, count=1, wait=1).received, 20,
                     what=f"the host's kernel reaching ToR {tor}")  # fmt: skip
        yield ovs, ns, controllers, conf
    finally:
        for c in controllers:
            c.stop()
        ovs.stop()
        for name in ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        subprocess.run(["rm", "-rf", rundir], timeout=30)


def watched_ports(ovs: Ovs) -> list[int]:
    """The watch ports of the ToRs' group's buckets, as the switch holds them."""
    out = ovs.ofctl("dump-groups", "br-int")
    return sorted(int(w.split(",")[0]) for w in out.split("watch_port:")[1:])


def routed_through(ovs: Ovs, *devs: str) -> bool:
    return watched_ports(ovs) == sorted(int(ovs.ofport(d)) for d in devs)


def groups_become(fabric, *devs: str, timeout: float = 20) -> None:
    """Wait until the group's buckets watch exactly `devs`; else say what the switch holds
    and what the controller said."""
    ovs, _, controllers, _ = fabric
    try:
        wait_for(lambda: routed_through(ovs, *devs), timeout, what=f"buckets for {devs}")
    except Exception as e:
        groups = ovs.ofctl("dump-groups", "br-int", check=False)
        raise AssertionError((str(e), groups, controllers[-1].text()[-6000:])) from None


def test_the_controller_serves_a_fip_through_the_tors_and_the_vm_out_through_it(fabric):
    ovs, ns, controllers, _ = fabric
    groups_become(fabric, "up0", "up1")  # the kernel's two next hops
    result = wait_for(lambda: (r := ping(ns["srv"], FIP, count=3, wait=1)).received and r, 15,
                      what="the FIP from outside")  # fmt: skip
    assert result.received >= 1
    assert ping(ns["vm"], SERVER, count=3, wait=1).received >= 1  # out through its FIP
    assert "Traceback" not in controllers[-1].text()


def test_the_group_follows_the_kernels_next_hops(fabric):
    """A ToR's session down (zebra replaces the default with the other hop): its bucket
    goes, traffic goes on through the other; back up: both again."""
    ovs, ns, _, _ = fabric
    groups_become(fabric, "up0", "up1")
    ip(ns["hv"], "route", "replace", "default", "proto", "bgp", "via", "10.254.1.2", "dev", "bgp1")
    took = time.monotonic()
    groups_become(fabric, "up1", timeout=5)  # ToR A's bucket gone
    assert time.monotonic() - took < 1.0
    assert ping(ns["vm"], SERVER, count=3, wait=1).received >= 1
    ip(ns["hv"], "route", "replace", "default", "proto", "bgp", *ECMP)
    groups_become(fabric, "up0", "up1", timeout=5)


def announced(ns: dict) -> set[str]:
    """ovsnat's routes in the table FRR announces from (bgp_table, 100)."""
    shown = json.loads(run(["ip", "-n", ns["hv"], "-j", "route", "show", "table", "100",
                            "proto", "250"]).stdout)  # fmt: skip
    return {r["dst"] for r in shown if r["type"] == "blackhole"}


def announcements(ovs: Ovs) -> dict:
    """What the controller's status file says of its routes (announced: in the kernel)."""
    try:
        with open(os.path.join(ovs.rundir, "ovsnat-status.json")) as f:
            status = json.load(f).get("announcements", {})
    except (OSError, ValueError):
        return {}
    return {k: status.get(k) for k in ("announced", "wanted")}


def test_the_host_writes_its_snat_and_fip_routes_and_withdraws_a_fip_that_leaves(fabric):
    ovs, ns, _, _ = fabric
    wait_for(lambda: announced(ns) == {"203.0.113.11", FIP}, 10, what="SNAT and FIP routes")
    ovs.vsctl("remove", "Interface", "tap", "external_ids", "ovsnat-fip")
    wait_for(lambda: announced(ns) == {"203.0.113.11"}, 5, what="the FIP withdrawn")
    ovs.vsctl("set", "Interface", "tap", f"external_ids:ovsnat-fip={FIP}")
    wait_for(lambda: announced(ns) == {"203.0.113.11", FIP}, 5, what="the FIP back")


def test_a_restarted_controller_finds_flows_and_group_in_place_and_sends_nothing(fabric):
    ovs, ns, controllers, conf = fabric
    groups_become(fabric, "up0", "up1")
    first = controllers[-1]
    wait_for(lambda: announced(ns) == {"203.0.113.11", FIP}, 10, what="the routes")
    assert "ovsnat: groups: group_id=1" in first.text()  # positive control: it sent them
    assert "ovsnat: routes: " in first.text()
    first.stop()
    os.remove(os.path.join(ovs.rundir, "ovsnat-status.json"))  # the next one is the new one's
    controllers.append(Controller(ns["hv"], ovs, conf, len(controllers) + 1))
    second = controllers[-1]
    wait_for(lambda: "flows in sync" in second.text(), 30, what="the new controller in sync")
    wait_for(lambda: "next hops now" in second.text(), 10, what="the kernel's next hops heard")
    wait_for(lambda: announcements(ovs) == {"announced": 2, "wanted": 2}, 10,
             what="the new controller's view of the kernel's routes")  # fmt: skip
    assert "ovsnat: groups:" not in second.text()
    assert "ovsnat: routes: " not in second.text()  # no write: FRR would send no UPDATE
    assert announced(ns) == {"203.0.113.11", FIP}
    assert "to add" not in second.text()
    assert routed_through(ovs, "up0", "up1")
    assert ping(ns["srv"], FIP, count=2, wait=1).received >= 1
