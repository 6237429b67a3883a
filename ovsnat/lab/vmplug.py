"""How a VM attaches to a hypervisor, as Nova, os-vif and QEMU do it: its namespace and
veth, the Interface row with the port's external_ids, the frames a VM sends when it appears
(a GARP at boot, QEMU's RARPs after a live migration), and the move of a live migration.
A mixin of topology.Lab, which owns the namespaces and the record these methods update
(`_add_ns`, `_veth`, `_save`, `hosts`, `vms`, `namespaces`, `stop_proc`)."""

from __future__ import annotations

import struct
import subprocess
import sys

from ovsnat.lab import dhcpclient
from ovsnat.lab.nodes import BRIDGE, INTERNAL_GW, INTERNAL_PREFIX, Vm
from ovsnat.lab.sh import run


class VmPlumbing:
    """Lab's VM operations (module doc)."""

    def add_vm(
        self,
        name: str,
        host: str,
        ip: str,
        mac: str,
        external_ids: dict[str, str] | None = None,
        boot: bool = True,
        ofport: int | None = None,
        net=None,
        dhcp: bool = False,
    ) -> Vm:
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

    def plug(
        self,
        vm: Vm,
        host: str,
        external_ids: dict[str, str] | None = None,
        ofport: int | None = None,
    ) -> int:
        """Add the VM's tap to host's br-int with its Interface external_ids; returns ofport."""
        if external_ids is not None:
            vm.external_ids = dict(external_ids)
        ids = self._ids(vm)
        h = self.hosts[host]
        args = ["--may-exist", "add-port", BRIDGE, vm.tap]
        settings = [f'external_ids:{k}="{v}"' for k, v in ids.items()] + (
            [f"ofport_request={ofport}"] if ofport else []
        )
        if settings:
            args += ["--", "set", "Interface", vm.tap, *settings]
        h.vsctl(*args)
        return h.ofport(vm.tap)

    def announce(
        self,
        vm: Vm,
        kind: str = "garp",
        count: int = 5,
        interval: float = 0.05,
        step: float = 0.1,
        wait: bool = False,
    ) -> None:
        """Frames a VM sends when it appears on a host: a GARP for its address (boot), or
        RARPs as QEMU sends them after a live migration (5 rounds, 50 ms apart growing by
        100 ms: QEMU's announce-initial/-step/-rounds defaults). Runs in the background
        unless wait=True, as the VM does not wait either."""
        frame = arp_frame(vm.mac, vm.ip, rarp=(kind == "rarp"))
        argv = [
            sys.executable,
            "-m",
            "ovsnat.lab.peer",
            "send",
            "--iface",
            "eth0",
            "--count",
            str(count),
            "--interval",
            str(interval),
            "--step",
            str(step),
            frame.hex(),
        ]
        if wait:
            run(argv, ns=vm.ns)
        else:
            subprocess.Popen(
                ["ip", "netns", "exec", vm.ns, *argv],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )

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
            dst.vsctl(
                "--may-exist",
                "add-port",
                BRIDGE,
                vm.tap,
                "--",
                "set",
                "Interface",
                vm.tap,
                *[f'external_ids:{k}="{v}"' for k, v in self._ids(vm).items()],
            )
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
