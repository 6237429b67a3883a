"""The lab's nodes and addresses: a hypervisor (its own OVS in a namespace) and a VM (a
namespace with eth0 on a veth whose host end is its tap), and the fixed addresses of the
outside world (topology.py draws them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ovsnat.lab.ovs import Ovs
from ovsnat.lab.sh import run

STATE_ROOT = os.environ.get("OVSNAT_LAB_ROOT", "/run/ovsnat-lab")
NS_PREFIX = "ovsnat-"

ROUTER_IP = "203.0.113.1"
EXTERNAL_CIDR = "203.0.113.0/24"
SERVER_IP = "198.51.100.10"
SERVER_GW = "198.51.100.1"
SERVER_MTU = 1400  # smaller than the VMs' 1500: real "fragmentation needed" errors
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
    external_ids: dict = field(default_factory=dict)  # as last plugged
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
    procs: dict = field(default_factory=dict)  # name -> pid of processes we spawned here
    fabric: bool = False  # cabled to the lab's top-of-rack switch

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
