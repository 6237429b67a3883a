"""One hypervisor of the routed lab (ovsnat.lab.routedhost): its namespace holds OVS with
the routed uplinks and the internal ports the kernel speaks through, ovsnat's controller
(ryu-manager) and, with FRR, the host's bgpd and zebra, as in production.

Host n (1, 2, ...) has the links 10.254.n.1/31 to ToR A (10.254.n.0) and 10.254.n.3/31 to
ToR B (10.254.n.2), its own ASN (4200100000 + n) and its own SNAT address (203.0.113.10 + n):
each host announces what it holds, and nothing of another's.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field

from ovsnat.compile.frr_conf import render
from ovsnat.lab.ovs import Ovs
from ovsnat.lab.scenario import CONTROLLER_ENV, controller_argv
from ovsnat.lab.sh import pid_alive, run, wait_for
from ovsnat.model import HostConfig
from ovsnat.model.options import defaults

OF_PORT = 6653  # inside the host's own namespace: no clash with other labs
HOST_ASN = 4200100001  # host 1's; host n's is HOST_ASN + n - 1


def host_options(n: int) -> dict[str, str]:
    """Host n's [ovsnat] options for bgp mode."""
    return {
        "snat_ip": f"203.0.113.{10 + n}",
        "external_mode": "bgp",
        "bgp_asn": str(HOST_ASN + n - 1),
        "bgp_uplinks": "up0,up1",
        "bgp_kernel_ports": "bgp0,bgp1",
        "bgp_links": f"10.254.{n}.1/31,10.254.{n}.3/31",
    }


def link_address(n: int, tor: str) -> str:
    """Host n's address on its link to ToR `ta` or `tb`."""
    return f"10.254.{n}.{1 if tor == 'ta' else 3}"


class Controller:
    """ryu-manager with ovsnat.app in the host's namespace; its log in the host's rundir."""

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
class Hypervisor:
    n: int
    ns: str
    rundir: str
    ovs: Ovs = field(init=False)
    controllers: list[Controller] = field(default_factory=list)

    def __post_init__(self) -> None:
        os.makedirs(self.rundir, exist_ok=True)
        self.ovs = Ovs(self.rundir, self.ns)

    @property
    def options(self) -> dict[str, str]:
        return host_options(self.n)

    @property
    def snat(self) -> str:
        return self.options["snat_ip"]

    @property
    def conf(self) -> str:
        return os.path.join(self.rundir, "ovsnat.conf")

    @property
    def controller(self) -> Controller:
        return self.controllers[-1]

    def build(self) -> None:
        """OVS with both uplinks and both kernel ports, the controller's file."""
        self.ovs.start()
        self.ovs.add_bridge("br-int")
        for dev in ("up0", "up1"):
            self.ovs.vsctl("add-port", "br-int", dev)
        for k, dev in enumerate(("bgp0", "bgp1")):
            self.ovs.vsctl("add-port", "br-int", dev, "--", "set", "Interface", dev,
                           "type=internal")  # fmt: skip
            address = link_address(self.n, "ta" if k == 0 else "tb")
            run(["ip", "-n", self.ns, "addr", "add", f"{address}/31", "dev", dev])
            run(["ip", "-n", self.ns, "link", "set", dev, "up"])
        options = {
            **defaults(),
            **self.options,
            "ovsdb_connection": f"unix:{self.ovs.db_sock}",
            "status_file": os.path.join(self.rundir, "ovsnat-status.json"),
        }
        with open(self.conf, "w") as f:
            f.write("[ovsnat]\n" + "".join(f"{k} = {'' if v is None else v}\n"
                                           for k, v in options.items()))  # fmt: skip

    def start_controller(self) -> Controller:
        self.controllers.append(Controller(self.ns, self.ovs, self.conf, len(self.controllers) + 1))
        return self.controller

    def connect(self) -> None:
        """Point the bridge at the controller and wait until it says it is in sync."""
        self.ovs.vsctl("--", "--id=@c", "create", "Controller",
                       f'target="tcp:127.0.0.1:{OF_PORT}"', "max_backoff=1000", "--",
                       "set", "Bridge", "br-int", "controller=@c")  # fmt: skip
        wait_for(lambda: "in sync" in self.controller.text(), 30,
                 what=f"host {self.n}'s controller in sync")  # fmt: skip

    def frr_conf(self) -> str:
        """The host's frr.conf, as `ovsnat bgp render` writes it from the host's options."""
        return render(HostConfig.parse({**defaults(), **self.options}).bgp, f"hv{self.n}")

    def announced(self, table: int = 100) -> set[str]:
        """ovsnat's routes in one of the tables FRR announces from (100 LIVE, 101 MOVED)."""
        shown = run(["ip", "-n", self.ns, "-j", "route", "show", "table", str(table),
                     "proto", "250"]).stdout  # fmt: skip
        return {r["dst"] for r in json.loads(shown) if r["type"] == "blackhole"}

    def status(self) -> dict:
        """The controller's status file ({} before its first)."""
        try:
            with open(os.path.join(self.rundir, "ovsnat-status.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        for c in self.controllers:
            c.stop()
        self.ovs.stop()
