"""One hypervisor of the routed lab (ovsnat.lab.routedhost): its namespace holds OVS with
the routed uplinks and the internal ports the kernel speaks through, ovsnat's controller
(ryu-manager) and, with FRR, the host's bgpd and zebra, as in production.

Host n's links, ASN and SNAT address are ovsnat.lab.bgpplan's: each host announces what it
holds, and nothing of another's. `routed_ports` is shared with `ovsnat lab up --bgp`.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field

from ovsnat.compile.frr_conf import render
from ovsnat.lab.bgpplan import host_options, link_address
from ovsnat.lab.ovs import Ovs
from ovsnat.lab.scenario import CONTROLLER_ENV, controller_argv, controller_row_args
from ovsnat.lab.sh import pid_alive, run, wait_for
from ovsnat.model import HostConfig
from ovsnat.model.options import defaults


def routed_ports(ovs: Ovs, ns: str, n: int) -> None:
    """Host n's routed uplinks (up0, up1: their veths exist) on br-int, and the kernel's
    ports (bgp0, bgp1: OVS internal ports) with its link addresses."""
    for k, tor in enumerate(("ta", "tb")):
        ovs.vsctl("--may-exist", "add-port", "br-int", f"up{k}")
        ovs.vsctl("--may-exist", "add-port", "br-int", f"bgp{k}", "--", "set", "Interface",
                  f"bgp{k}", "type=internal")  # fmt: skip
        run(["ip", "-n", ns, "addr", "add", f"{link_address(n, tor)}/31", "dev", f"bgp{k}"])
        run(["ip", "-n", ns, "link", "set", f"bgp{k}", "up"])


def frr_conf(n: int, hostname: str, **options: str) -> str:
    """Host n's frr.conf, as `ovsnat bgp render` writes it from the host's options."""
    return render(HostConfig.parse({**defaults(), **host_options(n), **options}).bgp, hostname)


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
    extra: dict = field(default_factory=dict)  # options beyond bgpplan's (bgp_moved_hold...)
    ovs: Ovs = field(init=False)
    controllers: list[Controller] = field(default_factory=list)

    def __post_init__(self) -> None:
        os.makedirs(self.rundir, exist_ok=True)
        self.ovs = Ovs(self.rundir, self.ns)

    @property
    def options(self) -> dict[str, str]:
        return {**host_options(self.n), **self.extra}

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
        routed_ports(self.ovs, self.ns, self.n)
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
        self.ovs.vsctl(*controller_row_args())
        wait_for(lambda: "in sync" in self.controller.text(), 30,
                 what=f"host {self.n}'s controller in sync")  # fmt: skip

    def frr_conf(self) -> str:
        return frr_conf(self.n, f"hv{self.n}", **self.extra)

    def announced(self, table: int = 100) -> set[str]:
        """ovsnat's routes in one of the tables FRR announces from (100 LIVE, 101 MOVED);
        a table the kernel has never held a route in does not exist: none."""
        shown = run(["ip", "-n", self.ns, "-j", "route", "show", "table", str(table),
                     "proto", "250"], check=False)  # fmt: skip
        if shown.returncode != 0 and "does not exist" in shown.stderr:
            return set()
        return {r["dst"] for r in json.loads(shown.stdout) if r["type"] == "blackhole"}

    def status(self) -> dict:
        """The controller's status file ({} before its first)."""
        try:
            with open(os.path.join(self.rundir, "ovsnat-status.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def stop(self) -> list[str]:
        """Stop what it started; returns what failed (the caller goes on tearing down)."""
        errors = []
        for stop in (*(c.stop for c in self.controllers), self.ovs.stop):
            try:
                stop()
            except Exception as e:
                errors.append(f"host {self.n}: {type(e).__name__}: {e}")
        return errors
