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
import time
from dataclasses import dataclass, field

from ovsnat.lab.bgpplan import (
    TOR_ASNS,
    host_asn,
    link_address,
    snat_address,
    tor_address,
    tor_router_id,
)
from ovsnat.lab.frr import FrrNode, ReadsFrr, TorPeer, make_rundir, tor_conf
from ovsnat.lab.ovs import Ovs
from ovsnat.lab.routedhv import Controller, Hypervisor
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.traffic import ping
from ovsnat.lab.vmplug import arp_frame

SERVER = "198.51.100.10"
SNAT = snat_address(1)  # host 1's
SERVER_PORT = 8080  # the server's TCP echo (it says the address it saw)
EXTERNAL = "203.0.113.0/24"
MAX_HOSTS = 8  # the server's links are 10.254.9.0/31 and 10.254.9.2/31
# ToR: (ASN, its link address to host 1, its side to srv, srv's side, host 1's link address)
TORS = {
    tor: (TOR_ASNS[tor], tor_address(1, tor), f"10.254.9.{k}", f"10.254.9.{k + 1}",
          link_address(1, tor))
    for tor, k in (("ta", 0), ("tb", 2))
}  # fmt: skip
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
class Rarps:
    """The RARPs a migrated guest sends, under way."""

    proc: subprocess.Popen
    resumed: float  # time.monotonic() when the guest could first send on the destination

    def first(self) -> float:
        """When the first went (time.monotonic()): the VM's first frame on the destination."""
        out, _ = self.proc.communicate(timeout=30)
        return float(out.split("SENT first at ")[1])


@dataclass
class RoutedHost(ReadsFrr):
    frr: bool = False
    hosts: int = 1  # more than one needs FRR (the ToRs must learn which host holds what)
    options: dict = field(default_factory=dict)  # every host's, beyond bgpplan's
    lab_id: str = field(default_factory=lambda: secrets.token_hex(3))
    hvs: list[Hypervisor] = field(default_factory=list)
    nodes: dict[str, FrrNode] = field(default_factory=dict)
    rundir: str = ""
    frr_rundir: str = ""
    vms: list[str] = field(default_factory=list)  # the VMs' namespaces
    vm_ids: dict[int, dict[str, str]] = field(default_factory=dict)  # VM n -> its port's ids
    vm_ifaces: dict[int, dict[int, str]] = field(default_factory=dict)  # VM n: host -> its dev
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
        assert 1 <= self.hosts <= MAX_HOSTS, f"1 to {MAX_HOSTS} hosts"
        self.rundir = tempfile.mkdtemp(prefix=f"ovsnat-{self.lab_id}-ovs-")
        try:
            self._namespaces()
            for n in range(1, self.hosts + 1):
                rundir = os.path.join(self.rundir, f"hv{n}")
                hv = Hypervisor(n, self.ns[self.role(n)], rundir, dict(self.options))
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
        """Remove all it made, whatever fails on the way; then say what failed."""
        errors = []

        def attempt(what: str, step) -> None:
            try:
                step()
            except Exception as e:
                errors.append(f"{what}: {type(e).__name__}: {e}")

        if self.server is not None:
            attempt("server", lambda: (self.server.kill(), self.server.wait(10)))
        for role, node in self.nodes.items():
            attempt(f"FRR {role}", node.stop)
        for hv in self.hvs:
            errors += hv.stop()
        for name in [*self.ns.values(), *self.vms]:
            argv = ["ip", "netns", "del", name]
            attempt(name, lambda a=argv: subprocess.run(a, capture_output=True, timeout=30))
        for d in (self.rundir, self.frr_rundir):
            if d:
                shutil.rmtree(d, ignore_errors=True)
        if errors:
            raise RuntimeError("routed lab teardown: " + "; ".join(errors))

    def python(self, *args: str) -> list[str]:
        """argv of this interpreter (what ovsnat.lab.traffic runs in a namespace)."""
        return [sys.executable, *args]

    # --- VMs ---------------------------------------------------------------------------------
    def add_vm(self, n: int, fip: str | None = None, host: int = 1, plug: bool = True) -> str:
        """A VM namespace vmN (10.0.0.N) on port tapN of a host; returns the namespace.
        plug=False: its device only, for the caller to time `plug`."""
        vm, mac = self._vm_ns(n), f"02:00:0a:00:00:{n:02x}"
        run(["ip", "netns", "add", vm])
        self.vms.append(vm)
        ids = {"iface-id": f"vm{n}", "attached-mac": f'"{mac}"', "ovsnat-fixed-ip": f"10.0.0.{n}"}
        if fip:
            ids["ovsnat-fip"] = fip
        self.vm_ids[n], self.vm_ifaces[n] = ids, {host: "eth0"}
        veth(f"tap{n}", self.ns[self.role(host)], "eth0", vm)
        self._vm_iface(n, "eth0")
        ip(vm, "addr", "add", f"10.0.0.{n}/24", "dev", "eth0")
        ip(vm, "route", "add", "default", "via", "10.0.0.1")
        if plug:
            self.plug(self.hv(host), n)
        return vm

    def prepare(self, n: int, dest: int) -> None:
        """A live migration's first half, as Nova and libvirt do it: the destination's port
        and the guest's device exist (QEMU waits there, paused, and says nothing) while the
        guest still runs on the source. The VM's namespace gets an interface towards the
        destination (its MAC, no address, no IPv6: silent) the first time."""
        vm, tap, ifaces = self._vm_ns(n), f"tap{n}", self.vm_ifaces[n]
        if dest not in ifaces:
            ifaces[dest] = f"eth{len(ifaces)}"
            run(["ip", "link", "add", tap, "netns", self.hv(dest).ns, "type", "veth", "peer",
                 "name", ifaces[dest], "netns", vm])  # fmt: skip
            self._vm_iface(n, ifaces[dest])
        ip(vm, "link", "set", ifaces[dest], "up")
        run(["ethtool", "-K", tap, "tx", "off", "rx", "off"], ns=self.hv(dest).ns, check=False)
        ip(self.hv(dest).ns, "link", "set", tap, "up")
        self.plug(self.hv(dest), n)
        wait_for(lambda: self.hv(dest).ovs.ofport(tap) > 0, 10, what=f"{tap} on host {dest}")

    def switch_over(self, n: int, source: int, dest: int) -> Rarps:
        """The second half: the guest stops on the source and runs on the destination, with
        its address and TCP state, and sends QEMU's RARPs (5, 50 ms then 100 ms more apart
        each time). Its device on the source stays, silent (QEMU there exits later), so the
        source announces the FIP until the caller unplugs its port, as Nova does once the
        migration is over. Rarps.resumed is when the guest could first send on the
        destination: its first frame is at or after it."""
        vm, old, new = self._vm_ns(n), self.vm_ifaces[n][source], self.vm_ifaces[n][dest]
        mac = self.vm_ids[n]["attached-mac"].strip('"')
        argv = self.python("-m", "ovsnat.lab.peer", "send", "--iface", new, "--count", "5",
                           "--interval", "0.05", "--step", "0.1", "--go-on-stdin",
                           arp_frame(mac, "0.0.0.0", rarp=True).hex())  # fmt: skip
        proc = subprocess.Popen(["ip", "netns", "exec", vm, *argv], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert proc.stdout.readline().strip() == "READY"
        # The guest left the source: what still arrives there is lost, as for a paused
        # guest (strict reverse-path filtering: its address is now reached the other way).
        run(["sysctl", "-qw", f"net.ipv4.conf.{old}.rp_filter=1"], ns=vm)
        run(["sysctl", "-qw", f"net.ipv4.conf.{new}.rp_filter=0"], ns=vm)
        ip(vm, "addr", "del", f"10.0.0.{n}/24", "dev", old)  # its routes go with it
        ip(vm, "addr", "add", f"10.0.0.{n}/24", "dev", new)
        ip(vm, "route", "replace", "default", "via", "10.0.0.1", "dev", new)
        resumed = time.monotonic()
        proc.stdin.write("go\n")
        proc.stdin.flush()  # communicate() closes it
        return Rarps(proc, resumed)

    def _vm_ns(self, n: int) -> str:
        return f"ovsnat-{self.lab_id}-vm{n}"

    def _vm_iface(self, n: int, dev: str) -> None:
        """One of VM n's interfaces: its MAC, no checksum offload, and silent until it has
        an address (no IPv6: its solicitations would be a first frame)."""
        vm = self._vm_ns(n)
        run(["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"], ns=vm)
        ip(vm, "link", "set", dev, "address", self.vm_ids[n]["attached-mac"].strip('"'))
        run(["ethtool", "-K", dev, "tx", "off", "rx", "off"], ns=vm, check=False)

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
                ip(ns[tor], "addr", "add", f"{tor_address(n, tor)}/31", "dev", f"eth{n - 1}")
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
        for tor, asn in TOR_ASNS.items():
            peers = [TorPeer(link_address(n, tor), host_asn(n)) for n in range(1, self.hosts + 1)]
            self.nodes[tor].start()
            self.nodes[tor].configure(tor_conf(tor, asn, tor_router_id(tor), peers, [EXTERNAL]))
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
