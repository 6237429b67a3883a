"""More external networks for the lab (docs/routers.md, issue 26 item 3): each is one VLAN
on the external segment, as on a real uplink trunk, with its gateway on the outside router.

This kernel has no 8021q and no VLAN-filtering bridge, so the outside router cannot tag by
itself: a small switch (its own Open vSwitch, standalone, learning) joins the external
segment on a trunk port carrying only that VLAN and gives the router a plain interface on
an access port, as a top-of-rack switch would. Its daemons run in the foreground under the
lab's records, so every teardown (and `ovsnat lab down` after a crash) stops them.
"""

from __future__ import annotations

import ipaddress
import os

from ovsnat.lab.nodes import SERVER_GW
from ovsnat.lab.ovs import SCHEMA, Ovs
from ovsnat.lab.sh import run, wait_for


def add_external_vlan(lab, vlan: int, gateway_cidr: str) -> str:
    """A tagged external network: VLAN `vlan` on the external segment, the outside router
    at `gateway_cidr` (address/prefix) on its interface `eth<vlan>`. Returns that name."""
    name, dev = f"vlan{vlan}", f"eth{vlan}"
    ns = lab._add_ns(name)
    ovs = Ovs(os.path.join(lab.dir, name), ns)
    os.makedirs(ovs.rundir, exist_ok=True)
    db = os.path.join(ovs.rundir, "conf.db")
    run(["ovsdb-tool", "create", db, SCHEMA])
    log = f"--log-file={os.path.join(ovs.rundir, '%s.log')}"
    lab.spawn(
        f"{name}-ovsdb-server",
        ["ovsdb-server", db, f"--remote=punix:{ovs.db_sock}", log % "ovsdb-server"],
        ns=ns,
        env=ovs.env,
    )
    wait_for(lambda: os.path.exists(ovs.db_sock), 10, what=f"{name}'s ovsdb-server")
    ovs.vsctl("--no-wait", "init")
    lab.spawn(
        f"{name}-ovs-vswitchd",
        ["ovs-vswitchd", f"unix:{ovs.db_sock}", log % "ovs-vswitchd"],
        ns=ns,
        env=ovs.env,
    )
    lab._veth(ns, "trunk", lab.ext_ns, name)
    run(["ip", "-n", lab.ext_ns, "link", "set", name, "master", "br0"])
    lab._veth(ns, "access", lab.out_ns, dev)
    ovs.vsctl(
        "add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev",
        "--", "add-port", "br0", "trunk", f"trunks={vlan}",
        "--", "add-port", "br0", "access", f"tag={vlan}",
    )  # fmt: skip
    run(["ip", "-n", lab.out_ns, "addr", "add", gateway_cidr, "dev", dev])
    # The server's own link may hold the range (198.51.100.0/24): it goes through its router.
    cidr = str(ipaddress.ip_interface(gateway_cidr).network)
    run(["ip", "-n", lab.srv_ns, "route", "add", cidr, "via", SERVER_GW])
    return dev
