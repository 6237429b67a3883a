"""Hypervisors on routed uplinks with ovsnat's controller, their two ToRs and a server
behind them (docs/bgp.md sections 4 and 8): no shared external segment.

    srv (198.51.100.10) --- ta (ToR A) --- up0 [hv: OVS, ovsnat, FRR] up1 --- tb (ToR B) --- srv
                                       +-- up0 [hv2 ...] up1 --+          (hosts=2)
                                           bgp0 (10.254.n.1), bgp1 (10.254.n.3): internal ports
                                           tapN -> vmN (10.0.0.N; a FIP or PAT)

Each hypervisor is an ovsnat.lab.routedhv.Hypervisor: the kernel ports are OVS internal
ports in the namespace where the controller (ryu-manager) and FRR run, as in production.
With `frr=True` every node runs FRR (the hosts' configured by `ovsnat bgp render`, the
ToRs' by `frr.tor_conf`): the ToRs learn the hosts' /32s and send each a default route.
Without (one host only), `ip route` plays zebra's part: the ToRs route the external range to
the host, the host has an ECMP default through both ToRs.

A VM is a namespace whose veth can move to another host (`migrate`), its TCP state with it,
as a live migration moves a guest. Used by tests/test_bgp_controller_lab.py,
tests/test_bgp_e2e_lab.py and tests/test_bgp_migration_lab.py; `down()` removes all it
made, and stops only the processes it started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from ovsnat.lab.frr import FrrNode, ReadsFrr, TorPeer, make_rundir, tor_conf
from ovsnat.lab.ovs import Ovs
from ovsnat.lab.routedhv import HOST_ASN, Controller, Hypervisor, host_options, link_address
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.traffic import ping
from ovsnat.lab.vmplug import arp_frame

SERVER = "198.51.100.10"
SNAT = host_options(1)["snat_ip"]  # host 1's
SERVER_PORT = 8080  # the server's TCP echo (it says the address it saw)
EXTERNAL = "203.0.113.0/24"
OPTIONS = host_options(1)
# ToR: (ASN, its link address to host 1, its side to srv, srv's side, host 1's link address)
TORS = {
    "ta": (4200000001, "10.254.1.0", "10.254.9.0", "10.254.9.1", link_address(1, "ta")),
    "tb": (4200000002, "10.254.1.2", "10.254.9.2", "10.254.9.3", link_address(1, "tb")),
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


@dataclass
class RoutedHost(ReadsFrr):
    frr: bool = False
    hosts: int = 1  # more than one needs FRR (the ToRs must learn which host holds what)
    lab_id: str = field(default_factory=lambda: secrets.token_hex(3))
    hvs: list[Hypervisor] = field(default_factory=list)
    nodes: dict[str, FrrNode] = field(default_factory=dict)
    rundir: str = ""
    frr_rundir: str = ""
    vms: list[str] = field(default_factory=list)  # the VMs' namespaces
    vm_ids: dict[int, dict[str, str]] = field(default_factory=dict)  # VM n -> its port's ids
    server: subprocess.Popen | None = None

    @property
    def ns(self) -> dict[str, str]:
        roles = ("ta", "tb", "srv", *(self.role(n) for n in range(1, self.hosts + 1)))
        return {r: f"ovsnat-{self.lab_id}-{r}" for r in roles}

    @staticmethod
    def role(n: int) -> str:
        return "hv" if n == 1 else f"hv{n}"

    def hv(self, n: int = 1) -> Hypervisor:
        return self.hvs[n - 1]

    # host 1, as the one-host tests know it
    @property
    def ovs(self) -> Ovs:
        return self.hv(1).ovs

    @property
    def controllers(self) -> list[Controller]:
        return self.hv(1).controllers

    @property
    def controller(self) -> Controller:
        return self.hv(1).controller

    @property
    def conf(self) -> str:
        return self.hv(1).conf

    def start_controller(self) -> Controller:
        return self.hv(1).start_controller()

    def announced(self) -> set[str]:
        return self.hv(1).announced()

    def status(self) -> dict:
        return self.hv(1).status()

    def up(self) -> RoutedHost:
        assert self.frr or self.hosts == 1, "hosts share the ToRs only through BGP"
        self.rundir = tempfile.mkdtemp(prefix=f"ovsnat-{self.lab_id}-ovs-")
        try:
            self._namespaces()
            for n in range(1, self.hosts + 1):
                hv = Hypervisor(n, self.ns[self.role(n)], os.path.join(self.rundir, f"hv{n}"))
                self.hvs.append(hv)
                hv.build()
                hv.start_controller()
                hv.connect()
            self._frr() if self.frr else self._static_routes()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait(10)
        for node in self.nodes.values():
            node.stop()
        for hv in self.hvs:
            hv.stop()
        for name in [*self.ns.values(), *self.vms]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        for d in (self.rundir, self.frr_rundir):
            if d:
                shutil.rmtree(d, ignore_errors=True)

    def python(self, *args: str) -> list[str]:
        """argv of this interpreter (what ovsnat.lab.traffic runs in a namespace)."""
        return [sys.executable, *args]

    # --- VMs ---------------------------------------------------------------------------------
    def add_vm(self, n: int, fip: str | None = None, host: int = 1, plug: bool = True) -> str:
        """A VM namespace vmN (10.0.0.N) on port tapN of a host; returns the namespace.
        plug=False: its device only, for the caller to time `plug`."""
        vm, mac = f"ovsnat-{self.lab_id}-vm{n}", f"02:00:0a:00:00:{n:02x}"
        run(["ip", "netns", "add", vm])
        self.vms.append(vm)
        veth(f"tap{n}", self.ns[self.role(host)], "eth0", vm)
        ip(vm, "link", "set", "eth0", "address", mac)
        ip(vm, "addr", "add", f"10.0.0.{n}/24", "dev", "eth0")
        ip(vm, "route", "add", "default", "via", "10.0.0.1")
        ids = {"iface-id": f"vm{n}", "attached-mac": f'"{mac}"', "ovsnat-fixed-ip": f"10.0.0.{n}"}
        if fip:
            ids["ovsnat-fip"] = fip
        self.vm_ids[n] = ids
        if plug:
            self.plug(self.hv(host), n)
        return vm

    def migrate(self, n: int, source: int, dest: int) -> float:
        """Live-migrate VM n as Nova does: the destination's port exists before the guest
        runs there (its row without a device), then the guest's device moves and it sends
        QEMU's RARP. The source's row stays (the caller unplugs it, as Nova does after the
        migration). Returns when the RARP went (time.monotonic()): the VM's first frame there."""
        tap, src, dst = f"tap{n}", self.hv(source), self.hv(dest)
        self.plug(dst, n)
        run(["ip", "-n", src.ns, "link", "set", tap, "netns", dst.ns])
        run(["ethtool", "-K", tap, "tx", "off", "rx", "off"], ns=dst.ns, check=False)
        ip(dst.ns, "link", "set", tap, "up")
        wait_for(lambda: dst.ovs.ofport(tap) > 0, 10, what=f"{tap} on host {dest}")
        mac = self.vm_ids[n]["attached-mac"].strip('"')
        sent = run([*self.python("-m", "ovsnat.lab.peer", "send", "--iface", "eth0",
                                 arp_frame(mac, "0.0.0.0", rarp=True).hex())],
                   ns=f"ovsnat-{self.lab_id}-vm{n}").stdout  # fmt: skip
        return float(sent.split("SENT first at ")[1])

    def unplug(self, n: int, host: int) -> None:
        self.hv(host).ovs.vsctl("--if-exists", "del-port", "br-int", f"tap{n}")

    def plug(self, hv: Hypervisor, n: int) -> None:
        """Create VM n's port on a host (its device there or not yet)."""
        ids = (f"external_ids:{k}={v}" for k, v in self.vm_ids[n].items())
        hv.ovs.vsctl("--may-exist", "add-port", "br-int", f"tap{n}", "--", "set", "Interface",
                     f"tap{n}", *ids)  # fmt: skip

    # --- the group ---------------------------------------------------------------------------
    def watched_ports(self) -> list[int]:
        """The watch ports of the ToRs' group's buckets, as the switch holds them."""
        out = self.ovs.ofctl("dump-groups", "br-int")
        return sorted(int(w.split(",")[0]) for w in out.split("watch_port:")[1:])

    def routed_through(self, *devs: str) -> bool:
        return self.watched_ports() == sorted(int(self.ovs.ofport(d)) for d in devs)

    # --- building ----------------------------------------------------------------------------
    def _namespaces(self) -> None:
        ns = self.ns
        for name in ns.values():
            run(["ip", "netns", "add", name])
            ip(name, "link", "set", "lo", "up")
        for n in range(1, self.hosts + 1):
            hv = ns[self.role(n)]
            veth("up0", hv, f"eth{n - 1}", ns["ta"])
            veth("up1", hv, f"eth{n - 1}", ns["tb"])
            for tor in ("ta", "tb"):
                tor_side = link_address(n, tor).rsplit(".", 1)
                tor_side = f"{tor_side[0]}.{int(tor_side[1]) - 1}"
                ip(ns[tor], "addr", "add", f"{tor_side}/31", "dev", f"eth{n - 1}")
        veth("a0", ns["srv"], "s0", ns["ta"])
        veth("b0", ns["srv"], "s1", ns["tb"])
        for tor, (_, _, srv_side, srv_addr, _) in TORS.items():
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

    def _static_routes(self) -> None:
        """zebra's part, by hand: the ToRs to the host, the host's ECMP default."""
        for tor, (_, _, _, _, host) in TORS.items():
            ip(self.ns[tor], "route", "add", EXTERNAL, "via", host)
        ip(self.ns["hv"], "route", "add", "default", "proto", "bgp", *ECMP)
        for _, tor, *_ in TORS.values():  # what the BGP sessions' traffic would resolve
            wait_for(lambda t=tor: ping(self.ns["hv"], t, count=1, wait=1).received, 20,
                     what=f"the host's kernel reaching ToR {tor}")  # fmt: skip

    def _frr(self) -> None:
        """FRR on the hosts (ovsnat bgp render) and both ToRs; wait for every session."""
        self.frr_rundir = make_rundir(self.lab_id)
        for role in ("ta", "tb", *(self.role(n) for n in range(1, self.hosts + 1))):
            self.nodes[role] = FrrNode(self.ns[role], os.path.join(self.frr_rundir, role))
        for tor, (asn, *_) in TORS.items():
            router_id = f"10.255.0.{1 if tor == 'ta' else 3}"
            peers = [TorPeer(link_address(n, tor), HOST_ASN + n - 1)
                     for n in range(1, self.hosts + 1)]  # fmt: skip
            self.nodes[tor].start()
            self.nodes[tor].configure(tor_conf(tor, asn, router_id, peers, [EXTERNAL]))
        for n in range(1, self.hosts + 1):
            self.start_host_frr(n)
        for tor in TORS:
            wait_for(lambda t=tor: self.established(t) == self.hosts, 40,
                     what=f"{tor}'s sessions with the hosts")  # fmt: skip

    def start_host_frr(self, n: int = 1) -> None:
        """A host's FRR, configured by `ovsnat bgp render` from the host's options."""
        node = self.nodes[self.role(n)]
        node.start()
        node.configure(self.hv(n).frr_conf())

    # --- reading FRR ----------------------------------------------------------------------
    def updates_from_host(self, tor: str, n: int = 1) -> int:
        """BGP UPDATE messages the ToR has received from host n."""
        host = link_address(n, tor)
        answer = self.nodes[tor].show(f"show bgp neighbors {host} json").get(host, {})
        return int(answer.get("messageStats", {}).get("updatesRecv", 0))
