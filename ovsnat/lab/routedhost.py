"""One hypervisor on routed uplinks with ovsnat's controller, its two ToRs and a server
behind them (docs/bgp.md sections 4 and 8): no shared external segment.

    srv (198.51.100.10) --- ta (ToR A) --- up0 [hv: OVS, ovsnat, FRR] up1 --- tb (ToR B) --- srv
                                           bgp0 (10.254.1.1), bgp1 (10.254.1.3): internal ports
                                           tapN -> vmN (10.0.0.N; a FIP or PAT)

As in production, the kernel ports are OVS internal ports in the namespace where the
controller (ryu-manager) and FRR run. With `frr=True` every node runs FRR (the host's
configured by `ovsnat bgp render`, the ToRs' by `frr.tor_conf`): the ToRs learn the host's
/32s and send it a default route. Without, `ip route` plays zebra's part: the ToRs route
the external range to the host, the host has an ECMP default through both ToRs.

Used by tests/test_bgp_controller_lab.py and tests/test_bgp_e2e_lab.py; `down()` removes
all it made, and stops only the processes it started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from ovsnat.compile.frr_conf import render
from ovsnat.lab.frr import FrrNode, ReadsFrr, TorPeer, make_rundir, tor_conf
from ovsnat.lab.ovs import Ovs
from ovsnat.lab.scenario import CONTROLLER_ENV, controller_argv
from ovsnat.lab.sh import pid_alive, run, wait_for
from ovsnat.lab.traffic import ping
from ovsnat.model import HostConfig
from ovsnat.model.options import defaults

SERVER, SNAT = "198.51.100.10", "203.0.113.11"
SERVER_PORT = 8080  # the server's TCP echo (it says the address it saw)
EXTERNAL = "203.0.113.0/24"
OF_PORT = 6653  # inside the host's own namespace: no clash with other labs
HOST_ASN = 4200100001
OPTIONS = {
    "snat_ip": SNAT,
    "external_mode": "bgp",
    "bgp_asn": str(HOST_ASN),
    "bgp_uplinks": "up0,up1",
    "bgp_kernel_ports": "bgp0,bgp1",
    "bgp_links": "10.254.1.1/31,10.254.1.3/31",
}
# ToR: (ASN, its link address, its side to srv, srv's side, the host's link address)
TORS = {
    "ta": (4200000001, "10.254.1.0", "10.254.9.0", "10.254.9.1", "10.254.1.1"),
    "tb": (4200000002, "10.254.1.2", "10.254.9.2", "10.254.9.3", "10.254.1.3"),
}
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


def ip(ns: str, *args: str) -> str:
    return run(["ip", "-n", ns, *args]).stdout


def veth(a: str, a_ns: str, b: str, b_ns: str) -> None:
    """A veth pair without checksum offload (as the other labs' links): the userspace
    datapath's conntrack checks TCP checksums, which a partial one fails."""
    run(["ip", "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns])
    for ns, dev in ((a_ns, a), (b_ns, b)):
        run(["ethtool", "-K", dev, "tx", "off", "rx", "off"], ns=ns, check=False)
        ip(ns, "link", "set", dev, "up")


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


@dataclass
class RoutedHost(ReadsFrr):
    frr: bool = False
    lab_id: str = field(default_factory=lambda: secrets.token_hex(3))
    controllers: list[Controller] = field(default_factory=list)
    nodes: dict[str, FrrNode] = field(default_factory=dict)
    rundir: str = ""
    frr_rundir: str = ""
    ovs: Ovs | None = None
    vms: list[str] = field(default_factory=list)  # the VMs' namespaces
    server: subprocess.Popen | None = None

    @property
    def ns(self) -> dict[str, str]:
        return {r: f"ovsnat-{self.lab_id}-{r}" for r in ("hv", "ta", "tb", "srv")}

    @property
    def conf(self) -> str:
        return os.path.join(self.rundir, "ovsnat.conf")

    @property
    def controller(self) -> Controller:
        return self.controllers[-1]

    def up(self) -> RoutedHost:
        self.rundir = tempfile.mkdtemp(prefix=f"ovsnat-{self.lab_id}-ovs-")
        self.ovs = Ovs(self.rundir, self.ns["hv"])
        try:
            self._namespaces()
            self._switch()
            self._write_conf()
            self.start_controller()
            self.ovs.vsctl("--", "--id=@c", "create", "Controller",
                           f'target="tcp:127.0.0.1:{OF_PORT}"', "max_backoff=1000", "--",
                           "set", "Bridge", "br-int", "controller=@c")  # fmt: skip
            wait_for(lambda: "in sync" in self.controller.text(), 30,
                     what="the controller in sync")  # fmt: skip
            self._frr() if self.frr else self._static_routes()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait(10)
        for c in self.controllers:
            c.stop()
        for node in self.nodes.values():
            node.stop()
        if self.ovs is not None:
            self.ovs.stop()
        for name in [*self.ns.values(), *self.vms]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        for d in (self.rundir, self.frr_rundir):
            if d:
                shutil.rmtree(d, ignore_errors=True)

    def python(self, *args: str) -> list[str]:
        """argv of this interpreter (what ovsnat.lab.traffic runs in a namespace)."""
        return [sys.executable, *args]

    def start_controller(self) -> Controller:
        self.controllers.append(
            Controller(self.ns["hv"], self.ovs, self.conf, len(self.controllers) + 1)
        )
        return self.controller

    def add_vm(self, n: int, fip: str | None = None) -> str:
        """A VM namespace vmN (10.0.0.N) on port tapN; returns the namespace."""
        vm, mac = f"ovsnat-{self.lab_id}-vm{n}", f"02:00:0a:00:00:{n:02x}"
        run(["ip", "netns", "add", vm])
        self.vms.append(vm)
        veth(f"tap{n}", self.ns["hv"], "eth0", vm)
        ip(vm, "link", "set", "eth0", "address", mac)
        ip(vm, "addr", "add", f"10.0.0.{n}/24", "dev", "eth0")
        ip(vm, "route", "add", "default", "via", "10.0.0.1")
        ids = {"iface-id": f"vm{n}", "attached-mac": f'"{mac}"', "ovsnat-fixed-ip": f"10.0.0.{n}"}
        if fip:
            ids["ovsnat-fip"] = fip
        self.ovs.vsctl("add-port", "br-int", f"tap{n}", "--", "set", "Interface", f"tap{n}",
                       *(f"external_ids:{k}={v}" for k, v in ids.items()))  # fmt: skip
        return vm

    def announced(self) -> set[str]:
        """ovsnat's routes in the table FRR announces from (bgp_table, 100)."""
        shown = json.loads(ip(self.ns["hv"], "-j", "route", "show", "table", "100", "proto", "250"))
        return {r["dst"] for r in shown if r["type"] == "blackhole"}

    def watched_ports(self) -> list[int]:
        """The watch ports of the ToRs' group's buckets, as the switch holds them."""
        out = self.ovs.ofctl("dump-groups", "br-int")
        return sorted(int(w.split(",")[0]) for w in out.split("watch_port:")[1:])

    def routed_through(self, *devs: str) -> bool:
        return self.watched_ports() == sorted(int(self.ovs.ofport(d)) for d in devs)

    def status(self) -> dict:
        """The controller's status file ({} before its first)."""
        try:
            with open(os.path.join(self.rundir, "ovsnat-status.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    # --- building ----------------------------------------------------------------------------
    def _namespaces(self) -> None:
        ns = self.ns
        for name in ns.values():
            run(["ip", "netns", "add", name])
            ip(name, "link", "set", "lo", "up")
        veth("up0", ns["hv"], "eth0", ns["ta"])
        veth("up1", ns["hv"], "eth0", ns["tb"])
        veth("a0", ns["srv"], "s0", ns["ta"])
        veth("b0", ns["srv"], "s1", ns["tb"])
        for tor, (_, link, srv_side, srv_addr, _) in TORS.items():
            ip(ns[tor], "addr", "add", f"{link}/31", "dev", "eth0")
            ip(ns[tor], "addr", "add", f"{srv_side}/31", "dev", "s0" if tor == "ta" else "s1")
            ip(ns[tor], "route", "add", f"{SERVER}/32", "via", srv_addr)
            run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=ns[tor])
        ip(ns["srv"], "addr", "add", f"{SERVER}/32", "dev", "lo")
        ip(ns["srv"], "addr", "add", "10.254.9.1/31", "dev", "a0")
        ip(ns["srv"], "addr", "add", "10.254.9.3/31", "dev", "b0")
        ip(ns["srv"], "route", "add", EXTERNAL, "via", "10.254.9.0", "src", SERVER)
        for conf in ("all", "default", "a0", "b0"):  # answers may come back through ToR B
            run(["sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0"], ns=ns["srv"])
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", ns["srv"],
             *self.python("-m", "ovsnat.lab.peer", "tcp-server", "--port", str(SERVER_PORT))],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.server.stdout.readline().strip() == "READY"

    def _switch(self) -> None:
        self.ovs.start()
        self.ovs.add_bridge("br-int")
        for dev in ("up0", "up1"):
            self.ovs.vsctl("add-port", "br-int", dev)
        for k, dev in enumerate(("bgp0", "bgp1")):
            self.ovs.vsctl("add-port", "br-int", dev, "--", "set", "Interface", dev,
                           "type=internal")  # fmt: skip
            ip(self.ns["hv"], "addr", "add", f"10.254.1.{2 * k + 1}/31", "dev", dev)
            ip(self.ns["hv"], "link", "set", dev, "up")

    def _write_conf(self) -> None:
        options = {
            **defaults(),
            **OPTIONS,
            "ovsdb_connection": f"unix:{self.ovs.db_sock}",
            "status_file": os.path.join(self.rundir, "ovsnat-status.json"),
        }
        with open(self.conf, "w") as f:
            f.write("[ovsnat]\n" + "".join(f"{k} = {'' if v is None else v}\n"
                                           for k, v in options.items()))  # fmt: skip

    def _static_routes(self) -> None:
        """zebra's part, by hand: the ToRs to the host, the host's ECMP default."""
        for tor, (_, _, _, _, host) in TORS.items():
            ip(self.ns[tor], "route", "add", EXTERNAL, "via", host)
        ip(self.ns["hv"], "route", "add", "default", "proto", "bgp", *ECMP)
        for _, tor, *_ in TORS.values():  # what the BGP sessions' traffic would resolve
            wait_for(lambda t=tor: ping(self.ns["hv"], t, count=1, wait=1).received, 20,
                     what=f"the host's kernel reaching ToR {tor}")  # fmt: skip

    def _frr(self) -> None:
        """FRR on the host (ovsnat bgp render) and both ToRs; wait for both sessions."""
        self.frr_rundir = make_rundir(self.lab_id)
        for role in ("ta", "tb", "hv"):
            self.nodes[role] = FrrNode(self.ns[role], os.path.join(self.frr_rundir, role))
        for tor, (asn, _, _, _, host) in TORS.items():
            router_id = f"10.255.0.{1 if tor == 'ta' else 3}"
            self.nodes[tor].start()
            self.nodes[tor].configure(
                tor_conf(tor, asn, router_id, [TorPeer(host, HOST_ASN)], [EXTERNAL])
            )
        self.start_host_frr()
        for tor in TORS:
            wait_for(lambda t=tor: self.established(t) == 1, 40,
                     what=f"{tor}'s session with the host")  # fmt: skip

    def start_host_frr(self) -> None:
        """The host's FRR, configured by `ovsnat bgp render` from the host's options."""
        self.nodes["hv"].start()
        self.nodes["hv"].configure(render(HostConfig.parse({**defaults(), **OPTIONS}).bgp, "hv"))

    # --- reading FRR ----------------------------------------------------------------------
    def updates_from_host(self, tor: str) -> int:
        """BGP UPDATE messages the ToR has received from the host."""
        host = TORS[tor][4]
        answer = self.nodes[tor].show(f"show bgp neighbors {host} json").get(host, {})
        return int(answer.get("messageStats", {}).get("updatesRecv", 0))
