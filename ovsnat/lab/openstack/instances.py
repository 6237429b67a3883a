"""Instances of the OpenStack lab: a VM namespace whose veth host end plays QEMU's tap,
plugged into the host's bridge with os-vif (ovsnat.lab.openstack.vif) as nova-compute does,
by one long-lived os-vif process per host (os-vif initialized and its privsep daemon started
once, as in nova-compute; a process per plug cost about a second each).

Order as on a compute node: the tap exists first (libvirt creates it when it starts the
domain), then the port is plugged; unplugging removes the OVS port and leaves the VM. A live
migration moves the tap to the destination host's namespace while the VM namespace, with its
sockets, stays: the guest keeps running, as QEMU's memory copy makes it look.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import select
import subprocess
import threading
from datetime import datetime, timezone

from ovsnat.lab.openstack import config as cfg
from ovsnat.lab.openstack.vif import VifSpec
from ovsnat.lab.sh import LabError, run, wait_for
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
    """os-vif's plug or unplug of each spec on the host, by the host's long-lived os-vif
    process (its nova-compute, see vif.py); returns the wall clock time at which os-vif
    returned for the last one."""
    answer = _vif_worker(lab, host).request(
        {"action": action, "vifs": [json.loads(spec.to_json()) for spec in specs]},
        timeout=120 + 2 * len(specs))
    return answer["done_at"]


class _VifWorker:
    """`python -m ovsnat.lab.openstack.vif serve` in a host's namespace: recorded in the
    lab's processes (its teardown stops it, its privsep daemon with it); it exits at the
    end of its input, so also when this process does."""

    def __init__(self, lab: Lab, host: str) -> None:
        h, name = lab.hosts[host], f"os-vif-{host}"
        argv = [cfg.venv_bin("python"), "-m", "ovsnat.lab.openstack.vif", "serve",
                "--ovsdb", f"unix:{h.ovs.db_sock}"]
        log = os.path.join(lab.dir, f"{name}.log")
        with open(log, "ab") as logf:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", h.ns, *argv], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=logf, text=True, start_new_session=True,
                env=dict(os.environ, OVSNAT_LAB_ID=lab.id))
        lab.procs[name] = {"pid": self.proc.pid, "ns": h.ns, "argv": argv, "log": log}
        lab._save()
        self.log = log
        self.lock = threading.Lock()

    def request(self, request: dict, timeout: float) -> dict:
        """One request, its answer; a worker that does not answer in time is stopped (a
        late answer must not be taken for the next request's)."""
        with self.lock:
            try:
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()
            except OSError:             # it died: the answer below says so
                pass
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            line = self.proc.stdout.readline() if ready else ""
            if not line:
                self.stop()
        answer = json.loads(line) if line else \
            {"error": f"no answer within {timeout:.0f} s (see {self.log})"}
        if "error" in answer:
            raise LabError(f"os-vif {request['action']}: {answer['error']}")
        return answer

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, 15)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


_VIF_WORKERS: dict[tuple[str, str], _VifWorker] = {}


def _vif_worker(lab: Lab, host: str) -> _VifWorker:
    worker = _VIF_WORKERS.get((lab.id, host))
    if worker is None or worker.proc.poll() is not None:
        worker = _VIF_WORKERS[(lab.id, host)] = _VifWorker(lab, host)
    return worker


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


class RowWatch:
    """When an Interface row appears in a host's OVSDB, as ovsdb-server announces it to a
    monitor (`ovsdb-client --timestamp monitor`, caught up before the body runs): the moment
    os-vif's plug created the row. os-vif's own return does not say it: its transaction
    returns once ovs-vswitchd has applied the change, which can be a second later."""

    def __init__(self, lab: Lab, host: str, iface: str) -> None:
        self.ovs, self.iface = lab.hosts[host].ovs, iface
        self.path = os.path.join(lab.dir, f"rowwatch-{host}-{iface}.log")

    def __enter__(self) -> "RowWatch":
        with open(self.path, "w") as out:
            self.proc = subprocess.Popen(
                ["ovsdb-client", "--timestamp", "monitor", f"unix:{self.ovs.db_sock}",
                 "Open_vSwitch", "Interface", "name"], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.ovs.env)
        wait_for(lambda: " initial " in self._text(), 10, what="the OVSDB monitor")
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)
        os.unlink(self.path)

    def inserted_at(self, timeout: float = 10) -> float:
        """The wall clock time the row was inserted (ovsdb-server's update, in ms)."""
        return wait_for(self._inserted, timeout, what=f"{self.iface}'s row in the monitor")

    def _inserted(self) -> float | None:
        stamp = None
        for line in self._text().splitlines():
            if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$", line):
                stamp = line           # ovsdb-client prints UTC
            elif stamp and re.search(rf"\sinsert\s+\"?{re.escape(self.iface)}\"?(\s|$)", line):
                return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(
                    tzinfo=timezone.utc).timestamp()
        return None

    def _text(self) -> str:
        with open(self.path) as f:
            return f.read()
