"""Instances of the OpenStack lab: a VM namespace whose veth host end plays QEMU's tap,
plugged into the host's bridge with os-vif (ovsnat.lab.openstack.vif) as nova-compute does.

Order as on a compute node: the tap exists first (libvirt creates it when it starts the
domain), then the port is plugged; unplugging removes the OVS port and leaves the VM. A live
migration moves the tap to the destination host's namespace while the VM namespace, with its
sockets, stays: the guest keeps running, as QEMU's memory copy makes it look.
"""

from __future__ import annotations

import json
import ipaddress

from ovsnat.lab.openstack import config as cfg
from ovsnat.lab.openstack.vif import VifSpec
from ovsnat.lab.sh import run
from ovsnat.lab.topology import Lab, Vm


def create_vm(lab: Lab, name: str, host: str, spec: VifSpec, ip: str, cidr: str,
              gateway: str | None, dhcp: bool = False) -> Vm:
    """The VM namespace with eth0 (the port's MAC); its peer, named as Nova names taps,
    waits in the host namespace. dhcp=False: the fixed IP and default route are set by hand
    (as config drive would); dhcp=True: eth0 gets nothing, the guest's DHCP client will
    (ovsnat.lab.dhcpclient, started once the port is plugged)."""
    ns = lab._add_ns(name)
    vm = Vm(name, ns, ip, spec.mac, host, tap=spec.vif_name, gateway=gateway or "")
    lab.vms[name] = vm
    lab._save()
    lab._veth(ns, "eth0", lab.hosts[host].ns, vm.tap, mtu=spec.mtu)
    run(["ip", "-n", ns, "link", "set", "eth0", "address", spec.mac])
    if not dhcp:
        prefix = ipaddress.ip_network(cidr).prefixlen
        run(["ip", "-n", ns, "addr", "add", f"{ip}/{prefix}", "dev", "eth0"])
        if gateway:
            run(["ip", "-n", ns, "route", "add", "default", "via", gateway])
    return vm


def move_tap(lab: Lab, vm: Vm, dest: str) -> None:
    """The guest now runs on `dest`: its tap appears in the destination host's namespace
    (where os-vif already created the OVS port, as Nova's pre-live-migration does) and
    vanishes from the source's."""
    src, dst = lab.hosts[vm.host], lab.hosts[dest]
    run(["ip", "-n", src.ns, "link", "set", vm.tap, "netns", dst.ns])
    run(["ethtool", "-K", vm.tap, "tx", "off", "rx", "off"], ns=dst.ns, check=False)
    run(["ip", "-n", dst.ns, "link", "set", vm.tap, "up"])
    vm.host = dest
    lab._save()


def os_vif(lab: Lab, host: str, action: str, *specs: VifSpec) -> float:
    """Run os-vif's plug or unplug for each spec in the host's namespace (one process);
    returns the wall clock time at which os-vif returned for the last one."""
    h = lab.hosts[host]
    vifs = [arg for spec in specs for arg in ("--vif", spec.to_json())]
    out = run([cfg.venv_bin("python"), "-m", "ovsnat.lab.openstack.vif", action,
               "--ovsdb", f"unix:{h.ovs.db_sock}", *vifs],
              ns=h.ns, timeout=120 + 2 * len(specs)).stdout
    return json.loads(out.strip().splitlines()[-1])["done_at"]


def create_taps(lab: Lab, host: str, taps: list[str]) -> None:
    """Taps without a guest (a veth whose other end stays up in the host namespace): many
    ports on one host, for scale, at the cost of one `ip -batch`."""
    lines = []
    for i, tap in enumerate(taps):
        peer = f"g{lab.id}{i}"[:15]
        lines += [f"link add {tap} type veth peer name {peer}", f"link set {tap} up",
                  f"link set {peer} up"]
    run(["ip", "-n", lab.hosts[host].ns, "-batch", "-"], input="\n".join(lines) + "\n")


def boot(lab: Lab, name: str, host: str, spec: VifSpec, ip: str, cidr: str,
         gateway: str | None) -> tuple[Vm, float]:
    """create_vm (addresses set by hand), then plug: returns the VM and when os-vif's plug
    returned."""
    vm = create_vm(lab, name, host, spec, ip, cidr, gateway)
    return vm, os_vif(lab, host, "plug", spec)
