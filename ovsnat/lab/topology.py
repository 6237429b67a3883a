"""The lab topology: hypervisors, VMs, an external L2 segment and the outside world.

    vm namespaces ──veth── hypervisor namespace (OVS br-int) ──uplink── ext namespace (Linux
    bridge) ── out namespace (router 203.0.113.1) ──MTU 1400── srv namespace (198.51.100.10)

Every switch, VM and outside host lives in a namespace named `ovsnat-<labid>-<role>`; nothing is
created in or changed in the root namespace, and veth pairs are created directly between lab
namespaces. A JSON record under /run/ovsnat-lab/<labid>/ lists what exists, so `ovsnat lab down`
can remove a lab whose creator crashed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass, field

from ovsnat.lab import dhcpclient
from ovsnat.lab.ovs import Ovs, require_ovs
from ovsnat.lab.cleanup import kill_recorded as _kill_recorded
from ovsnat.lab.sh import LabError, run

STATE_ROOT = os.environ.get("OVSNAT_LAB_ROOT", "/run/ovsnat-lab")
NS_PREFIX = "ovsnat-"

ROUTER_IP = "203.0.113.1"
EXTERNAL_CIDR = "203.0.113.0/24"
SERVER_IP = "198.51.100.10"
SERVER_GW = "198.51.100.1"
SERVER_MTU = 1400          # smaller than the VMs' 1500: real "fragmentation needed" errors
INTERNAL_GW = "10.0.0.1"
INTERNAL_PREFIX = 24
BRIDGE = "br-int"
UPLINK = "uplink"


@dataclass
class Vm:
    """A VM: a namespace with eth0, attached to a hypervisor by a veth whose host end is `tap`."""

    name: str
    ns: str
    ip: str
    mac: str
    host: str
    tap: str
    external_ids: dict = field(default_factory=dict)   # as last plugged
    gateway: str = "10.0.0.1"

    def exec(self, *argv: str, check: bool = True, timeout: float = 30):
        return run(argv, ns=self.ns, check=check, timeout=timeout)


@dataclass
class Host:
    """A hypervisor: its own OVS (rundir, netns) with bridge br-int and an uplink port."""

    name: str
    ns: str
    rundir: str
    dummy: bool = False
    procs: dict = field(default_factory=dict)   # name -> pid of processes we spawned here
    fabric: bool = False                        # cabled to the lab's top-of-rack switch

    @property
    def ovs(self) -> Ovs:
        return Ovs(self.rundir, self.ns)

    def vsctl(self, *args: str, check: bool = True) -> str:
        return self.ovs.vsctl(*args, check=check)

    def ofctl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return self.ovs.ofctl(*args, check=check, input=input)

    def appctl(self, *args: str, check: bool = True) -> str:
        return self.ovs.appctl(*args, check=check)

    def ofport(self, iface: str) -> int:
        return self.ovs.ofport(iface)

    def exec(self, *argv: str, check: bool = True, timeout: float = 30):
        return run(argv, ns=self.ns, check=check, timeout=timeout)

    def install_flows(self, flows_text: str) -> None:
        """Replace every flow on br-int atomically (one OpenFlow bundle), as ovs-ofctl does."""
        self.ofctl("--bundle", "replace-flows", BRIDGE, "-", input=flows_text)


class Lab:
    """Create and tear down a lab. Use as a context manager so teardown always runs."""

    def __init__(self, lab_id: str | None = None, root: str = STATE_ROOT):
        self.id = lab_id or secrets.token_hex(3)
        self.dir = os.path.join(root, self.id)
        self.namespaces: list[str] = []
        self.hosts: dict[str, Host] = {}
        self.vms: dict[str, Vm] = {}
        self.procs: dict[str, dict] = {}    # name -> {"pid":, "ns":, "argv":, "log":}
        self.started = False

    # --- naming and state ---------------------------------------------------------------
    def ns_name(self, role: str) -> str:
        return f"{NS_PREFIX}{self.id}-{role}"

    @property
    def ext_ns(self) -> str:
        return self.ns_name("ext")

    @property
    def out_ns(self) -> str:
        return self.ns_name("out")

    @property
    def srv_ns(self) -> str:
        return self.ns_name("srv")

    def _save(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        state = {"id": self.id, "namespaces": self.namespaces,
                 "hosts": {n: asdict(h) for n, h in self.hosts.items()},
                 "vms": {n: asdict(v) for n, v in self.vms.items()},
                 "procs": self.procs}
        tmp = os.path.join(self.dir, "lab.json.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, os.path.join(self.dir, "lab.json"))

    @classmethod
    def load(cls, lab_id: str, root: str = STATE_ROOT) -> "Lab":
        lab = cls(lab_id, root)
        with open(os.path.join(lab.dir, "lab.json")) as f:
            state = json.load(f)
        lab.namespaces = state["namespaces"]
        lab.hosts = {n: Host(**h) for n, h in state["hosts"].items()}
        lab.vms = {n: Vm(**v) for n, v in state["vms"].items()}
        lab.procs = state.get("procs", {})
        lab.started = True
        return lab

    @staticmethod
    def list_ids(root: str = STATE_ROOT) -> list[str]:
        if not os.path.isdir(root):
            return []
        return sorted(d for d in os.listdir(root)
                      if os.path.exists(os.path.join(root, d, "lab.json")))

    # --- building blocks ---------------------------------------------------------------
    def _add_ns(self, role: str) -> str:
        ns = self.ns_name(role)
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        self._save()
        run(["ip", "link", "set", "lo", "up"], ns=ns)
        return ns

    @staticmethod
    def _veth(ns_a: str, name_a: str, ns_b: str, name_b: str, mtu: int | None = None) -> None:
        """A veth pair created inside ns_a with its peer placed straight into ns_b (the root
        namespace never holds either end). Checksum offload is off on both ends: with it on,
        TCP/UDP leave the userspace datapath with bad checksums."""
        run(["ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b,
             "netns", ns_b])
        for ns, name in ((ns_a, name_a), (ns_b, name_b)):
            if mtu:
                run(["ip", "-n", ns, "link", "set", name, "mtu", str(mtu)])
            run(["ethtool", "-K", name, "tx", "off", "rx", "off"], ns=ns, check=False)
            run(["ip", "-n", ns, "link", "set", name, "up"])

    def up(self) -> "Lab":
        """The external segment, the outside router and the server behind it."""
        require_ovs()
        os.makedirs(self.dir, exist_ok=True)
        self.started = True
        self._save()
        ext, out, srv = self._add_ns("ext"), self._add_ns("out"), self._add_ns("srv")
        run(["ip", "-n", ext, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", ext, "link", "set", "br0", "up"])
        self._veth(out, "eth0", ext, "out")
        run(["ip", "-n", ext, "link", "set", "out", "master", "br0"])
        run(["ip", "-n", out, "addr", "add", f"{ROUTER_IP}/24", "dev", "eth0"])
        self._veth(out, "eth1", srv, "eth0", mtu=SERVER_MTU)
        run(["ip", "-n", out, "addr", "add", f"{SERVER_GW}/24", "dev", "eth1"])
        run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=out)
        run(["ip", "-n", srv, "addr", "add", f"{SERVER_IP}/24", "dev", "eth0"])
        run(["ip", "-n", srv, "route", "add", "default", "via", SERVER_GW])
        return self

    def add_host(self, name: str, dummy: bool = False, fabric: bool = False) -> Host:
        """A hypervisor: namespace, private OVS, br-int (netdev, secure, OF1.3), uplink;
        with `fabric`, also a `fabric` port cabled to the lab's top-of-rack switch."""
        ns = self._add_ns(name)
        host = Host(name, ns, os.path.join(self.dir, name), dummy, fabric=fabric)
        self.hosts[name] = host
        self._save()
        host.ovs.start(dummy=dummy)
        self._veth(ns, UPLINK, self.ext_ns, name)
        run(["ip", "-n", self.ext_ns, "link", "set", name, "master", "br0"])
        host.ovs.add_bridge(BRIDGE, UPLINK)
        host.ofport(UPLINK)
        if fabric:
            from ovsnat.lab import fabric as tor
            tor.connect(self, host)
        return host

    def add_vm(self, name: str, host: str, ip: str, mac: str,
               external_ids: dict[str, str] | None = None, boot: bool = True,
               ofport: int | None = None, net=None, dhcp: bool = False) -> Vm:
        """A VM namespace with eth0 plugged into `host`: ip/24 with a default route via
        10.0.0.1, or in `net` (a fabric.LabNet, whose keys join the external_ids).
        external_ids go on the Interface row, as nova/os-vif would set them. boot=True: the
        VM then announces itself with a GARP, as a booting VM's first traffic would (False:
        a VM that never speaks first). ofport: ask OVS for this OpenFlow port number.
        dhcp=True: eth0 gets nothing by hand; a real DHCP client configures it, as a cloud
        image's does (ovsnat.lab.dhcpclient; no GARP: the client's requests come first)."""
        ns = self._add_ns(name)
        gateway, prefix = (net.gateway, net.prefix) if net else (INTERNAL_GW, INTERNAL_PREFIX)
        vm = Vm(name, ns, ip, mac, host, tap=f"tap{name}"[:15], gateway=gateway)
        if net is not None:
            external_ids = {**net.external_ids(), **(external_ids or {})}
        self.vms[name] = vm
        self._save()
        self._veth(ns, "eth0", self.hosts[host].ns, vm.tap)
        run(["ip", "-n", ns, "link", "set", "eth0", "address", mac])
        if not dhcp:
            run(["ip", "-n", ns, "addr", "add", f"{ip}/{prefix}", "dev", "eth0"])
            run(["ip", "-n", ns, "route", "add", "default", "via", gateway])
        self.plug(vm, host, external_ids, ofport)
        self._save()
        if dhcp:
            dhcpclient.start(self, vm)
        elif boot:
            self.announce(vm, "garp")
        return vm

    def plug(self, vm: Vm, host: str, external_ids: dict[str, str] | None = None,
             ofport: int | None = None) -> int:
        """Add the VM's tap to host's br-int with its Interface external_ids; returns ofport."""
        if external_ids is not None:
            vm.external_ids = dict(external_ids)
        ids = self._ids(vm)
        h = self.hosts[host]
        args = ["--may-exist", "add-port", BRIDGE, vm.tap]
        settings = [f'external_ids:{k}="{v}"' for k, v in ids.items()] + \
            ([f"ofport_request={ofport}"] if ofport else [])
        if settings:
            args += ["--", "set", "Interface", vm.tap, *settings]
        h.vsctl(*args)
        return h.ofport(vm.tap)

    def announce(self, vm: Vm, kind: str = "garp", count: int = 5, interval: float = 0.05,
                 step: float = 0.1, wait: bool = False) -> None:
        """Frames a VM sends when it appears on a host: a GARP for its address (boot), or
        RARPs as QEMU sends them after a live migration (5 rounds, 50 ms apart growing by
        100 ms: QEMU's announce-initial/-step/-rounds defaults). Runs in the background
        unless wait=True, as the VM does not wait either."""
        frame = arp_frame(vm.mac, vm.ip, rarp=(kind == "rarp"))
        argv = [sys.executable, "-m", "ovsnat.lab.peer", "send", "--iface", "eth0", "--count",
                str(count), "--interval", str(interval), "--step", str(step), frame.hex()]
        if wait:
            run(argv, ns=vm.ns)
        else:
            subprocess.Popen(["ip", "netns", "exec", vm.ns, *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)

    def unplug(self, vm: Vm) -> None:
        self.hosts[vm.host].vsctl("--if-exists", "del-port", BRIDGE, vm.tap)

    def remove_vm(self, vm: Vm) -> None:
        """Unplug the VM and delete its namespace (its veth goes with it): the name is free
        for another VM, and the lab holds no trace of it."""
        self.stop_proc(f"udhcpc-{vm.name}")
        self.unplug(vm)
        run(["ip", "netns", "del", vm.ns], check=False)
        if vm.ns in self.namespaces:
            self.namespaces.remove(vm.ns)
        self.vms.pop(vm.name, None)
        self._save()

    def move_vm(self, vm: Vm, dest: str, overlap: bool = False, announce: bool = True) -> int:
        """Live-migrate: move the VM's host-side veth to `dest` and plug it there; the VM
        namespace (and its TCP state) stays. Then the VM sends RARPs, as QEMU does.

        overlap=False: unplug from the source, then plug at the destination.
        overlap=True: as in a real migration, the destination's Interface row is created
        before the VM runs there (its device does not exist yet), and the source's row
        lingers after the VM left (its device is gone)."""
        src, dst = self.hosts[vm.host], self.hosts[dest]
        if overlap:
            dst.vsctl("--may-exist", "add-port", BRIDGE, vm.tap, "--", "set", "Interface",
                      vm.tap, *[f'external_ids:{k}="{v}"' for k, v in self._ids(vm).items()])
        else:
            self.unplug(vm)
        run(["ip", "-n", src.ns, "link", "set", vm.tap, "netns", dst.ns])
        run(["ip", "-n", dst.ns, "link", "set", vm.tap, "up"])
        run(["ethtool", "-K", vm.tap, "tx", "off", "rx", "off"], ns=dst.ns, check=False)
        vm.host = dest
        ofport = self.plug(vm, dest) if not overlap else dst.ofport(vm.tap)
        self._save()
        if announce:
            self.announce(vm, "rarp")
        return ofport

    def _ids(self, vm: Vm) -> dict[str, str]:
        return {"iface-id": vm.name, "attached-mac": vm.mac, **vm.external_ids}

    # --- processes ----------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], ns: str | None = None,
              env: dict | None = None) -> subprocess.Popen:
        """Start a long-running process (controller, server) inside ns; recorded by pid so
        teardown (even `ovsnat lab down` after a crash) stops it and nothing else."""
        log = os.path.join(self.dir, f"{name}.log")
        full = (["ip", "netns", "exec", ns] if ns else []) + argv
        # The lab id in the environment lets teardown recognise the pid as ours.
        proc_env = dict(os.environ, OVSNAT_LAB_ID=self.id, **(env or {}))
        with open(log, "ab") as logf:
            proc = subprocess.Popen(full, stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=proc_env,
                                    start_new_session=True)
        self.procs[name] = {"pid": proc.pid, "ns": ns, "argv": argv, "log": log}
        self._save()
        return proc

    def stop_proc(self, name: str) -> None:
        info = self.procs.pop(name, None)
        if info:
            _kill_recorded(info, self.id)
            self._save()

    def python(self, *args: str) -> list[str]:
        """argv to run this interpreter (the venv's) with args, e.g. inside a namespace."""
        return [sys.executable, *args]

    # --- teardown -----------------------------------------------------------------------
    def down(self) -> None:
        """Remove everything this lab created; safe to call twice and after partial setup."""
        errors = []
        for name in list(self.procs):
            try:
                _kill_recorded(self.procs.pop(name), self.id)
            except Exception as e:    # keep tearing down
                errors.append(str(e))
        for host in self.hosts.values():
            try:
                host.ovs.stop()
            except Exception as e:
                errors.append(str(e))
        for ns in reversed(self.namespaces):
            run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()
        # namespaces its own processes made (OpenStack lab guests): unrecorded, same prefix
        for ns in list_lab_namespaces():
            if ns.startswith(self.ns_name("")):
                run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise LabError("lab teardown finished with errors:\n" + "\n".join(errors))

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.down()


def arp_frame(mac: str, ip: str, rarp: bool = False) -> bytes:
    """A gratuitous ARP for ip (sender = target = ip), or a RARP as QEMU sends it."""
    hw = bytes.fromhex(mac.replace(":", ""))
    addr = bytes(int(b) for b in ip.split("."))
    zero4 = bytes(4)
    if rarp:
        body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 3) + hw + zero4 + hw + zero4
        return b"\xff" * 6 + hw + b"\x80\x35" + body
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + hw + addr + bytes(6) + addr
    return b"\xff" * 6 + hw + b"\x08\x06" + body


def down_all(root: str = STATE_ROOT) -> list[str]:
    """Tear down every recorded lab, then any orphan ovsnat-* namespace. Returns what went."""
    gone = []
    for lab_id in Lab.list_ids(root):
        Lab.load(lab_id, root).down()
        gone.append(lab_id)
    for ns in list_lab_namespaces():
        run(["ip", "netns", "del", ns], check=False)
        gone.append(ns)
    return gone


def list_lab_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0].startswith(NS_PREFIX)]
