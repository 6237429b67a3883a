"""Operator views of a live host: `ovsnat dump` and `diff` here, `status` (ovsnat.cli.status)
and `trace` (ovsnat.cli.trace) on the same view.

They run on the hypervisor, next to the controller, and read the same two sources it does:
OVSDB (through ovsnat.ovsdb) and the switch (through `ovs-ofctl`/`ovs-appctl`, as an
operator would). Desired flows come from the same core code as the controller's, so `diff`
says exactly what the controller would send.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter, defaultdict
from dataclasses import dataclass

import netaddr

from ovsnat.compile import flowident
from ovsnat.compile.flows import COOKIE_HOST, COOKIE_VM, cookie_kind, cookie_owner, is_ours
from ovsnat.compile.pipeline import INGRESS
from ovsnat.compile.tables import BY_ID
from ovsnat.core.state import HostState
from ovsnat.model import HostConfig, VmPort, port_from_row, routing
from ovsnat.model.externals import parse_externals, served_ids
from ovsnat.model.hostconfig import Settings
from ovsnat.model.options import read_ini
from ovsnat.model.secgroups import parse_bridge
from ovsnat.ovsdb import Watcher


class InspectError(RuntimeError):
    pass


# --- the switch, read with the OVS tools -------------------------------------------------------
@dataclass
class Installed:
    cookie: int
    table: int
    priority: int
    packets: int
    bytes: int
    duration: float
    text: str  # as ovsnat renders a flow: cookie, table, priority, match, actions

    @property
    def match(self) -> str:
        head = self.text.split(" actions=")[0].split("priority=", 1)[1]
        return head.partition(",")[2]

    @property
    def actions(self) -> str:
        return self.text.split(" actions=", 1)[1]


DUMP_LINE = re.compile(
    r"cookie=(?P<cookie>0x[0-9a-f]+), duration=(?P<dur>[\d.]+)s, (?:table=(?P<table>\d+), )?"
    r"n_packets=(?P<pk>\d+), n_bytes=(?P<by>\d+), (?:idle_age=\d+, )?(?:hard_age=\d+, )?"
    r"priority=(?P<prio>\d+)(?P<rest>.*)$"
)


def parse_dump(text: str) -> list[Installed]:
    flows = []
    for line in text.splitlines():
        m = DUMP_LINE.search(line.strip())
        if not m:
            continue
        table = int(m.group("table") or 0)
        prefix = f"table={table}, " if table else ""
        body = f"cookie={m.group('cookie')}, {prefix}priority={m.group('prio')}{m.group('rest')}"
        flows.append(
            Installed(
                int(m.group("cookie"), 16),
                table,
                int(m.group("prio")),
                int(m.group("pk")),
                int(m.group("by")),
                float(m.group("dur")),
                body,
            )
        )
    return flows


def ovs_tool(*argv: str) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise InspectError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def dump_flows(bridge: str) -> list[Installed]:
    return parse_dump(ovs_tool("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge))


# --- the host as the controller sees it ---------------------------------------------------------
@dataclass
class View:
    cfg: HostConfig
    host: HostState
    rows: dict
    installed: list[Installed]
    status: dict  # the controller's status file, if any

    def owner(self, cookie: int, table: int | None = None) -> str:
        """The object that made a flow: host, a network, a VM's port name, or the security
        group and rule (a security profile's flow, with its table)."""
        if cookie_kind(cookie) == COOKIE_HOST:
            return "host"
        owner = self.host.owner_names.get(cookie >> 24)
        if isinstance(owner, tuple) and owner[0] in ("sgp", "sgg", "sgm"):
            return self.host.sg.explain(owner, table if table is not None else -1, cookie)
        if isinstance(owner, tuple) and owner[0] != "net":
            return flowident.label(owner)
        if isinstance(owner, tuple):
            return flowident.label(owner)  # a network, a departed port, a VIP
        if owner is not None:
            return owner
        if cookie_kind(cookie) == COOKIE_VM:
            return f"unknown VM {netaddr.IPAddress(cookie_owner(cookie))}"
        return f"unknown owner {cookie >> 24:#x}"


def load_view(conf_path: str) -> View:
    """The host as the controller sees it: its config resolved from OVSDB by the
    controller's own code (ovsnat.model.hostconfig), the gateway MACs it learned read back
    from its installed flows."""
    options = read_ini(conf_path)
    snap = Watcher(options["ovsdb_connection"], options["bridge"], lambda b: None).snapshot_once()
    base = HostConfig.parse(options)
    installed = dump_flows(base.bridge)
    settings = Settings(base, log=False)
    cfg = settings.resolve(
        snap.rows,
        snap.bridge_ids,
        base.external_gateway_mac or _installed_gateway_mac(installed),
        None,
        _ext_macs(base, snap.bridge_ids, installed),
    )
    if cfg is None:
        raise InspectError("; ".join(settings.waiting_for()) or "no host config")
    host = HostState(cfg)
    host.set_security(parse_bridge(snap.bridge_ids))
    served = served_ids(snap.bridge_ids, cfg.externals)
    host.set_routing(routing.parse_bridge(snap.bridge_ids, served))
    for name, row in sorted(snap.rows.items()):
        if name not in settings.infra():
            host.update(name, port_from_row(name, row.ofport, row.external_ids, row.link_state))
    host.adopt_installed({(f.table, f.cookie) for f in installed})
    return View(cfg, host, snap.rows, installed, read_status(options))


def _installed_gateway_mac(installed: list[Installed]):
    for f in installed:
        m = re.search(r"set_field:([0-9a-f:]{17})->eth_dst,output", f.actions)
        if f.table == INGRESS and m and is_ours(f.cookie):
            return netaddr.EUI(m.group(1))
    return None


def _ext_macs(cfg: HostConfig, bridge_ids: dict, installed: list[Installed]) -> dict:
    """The tagged external networks' gateway MACs their flows use, by (VLAN, gateway), as
    the controller keeps what it learned (the untagged gateway's: above)."""
    macs = {}
    pattern = r"set_field:([0-9a-f:]{17})->eth_dst,push_vlan"
    for ext in parse_externals(bridge_ids, cfg)[0]:
        if ext.vlan is None:
            continue
        for f in installed:
            m = re.search(pattern, f.actions)
            if m and f.table == INGRESS and is_ours(f.cookie) and f"nw_src={ext.cidr}" in f.text:
                macs[(ext.vlan, str(ext.gateway))] = netaddr.EUI(m.group(1))
                break
    return macs


def read_status(options: dict) -> dict:
    path = options.get("status_file") or ""
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


# --- ovsnat dump --------------------------------------------------------------------------------
def dump(view: View) -> dict:
    """Installed flows grouped by owner, each with its table's role and counters."""
    groups: dict[str, list] = defaultdict(list)
    for f in view.installed:
        owner = view.owner(f.cookie) if is_ours(f.cookie) else "foreign"
        table = BY_ID.get(f.table)
        groups[owner].append(
            {
                "table": f.table,
                "role": table.name if table else "?",
                "priority": f.priority,
                "match": f.match,
                "actions": f.actions,
                "packets": f.packets,
                "bytes": f.bytes,
                "cookie": f"{f.cookie:#x}",
            }
        )
    return dict(groups)


def describe_owner(view: View, owner: str) -> str:
    if owner in ("host", "foreign"):
        return {
            "host": f"host-level (SNAT {view.cfg.snat_ip}:{view.cfg.snat_port_min}-"
            f"{view.cfg.snat_port_max})",
            "foreign": "not ovsnat's (left alone)",
        }[owner]
    port = view.host.valid.get(owner)
    if port is None:
        return owner
    nat = f"FIP {port.fip}" if port.fip else "PAT"
    net = view.host.net(port)
    where = "" if not net.name else f"network {net.name}, "
    return f"{owner} ({port.iface_id}, {where}{port.fixed_ip}, {nat}, ofport {port.ofport})"


def format_dump(view: View, groups: dict) -> str:
    lines = []
    for owner in sorted(groups, key=lambda o: (o != "host", o == "foreign", o)):
        flows = groups[owner]
        lines.append(f"{describe_owner(view, owner)}: {len(flows)} flows")
        for f in sorted(flows, key=lambda f: (f["table"], -f["priority"])):
            lines.append(
                f"  {f['table']:>2} {f['role']:<11} {f['packets']:>8} pkts  "
                f"prio {f['priority']:<3} {f['match'] or '*'}  ->  {f['actions']}"
            )
    return "\n".join(lines)


# --- ovsnat diff --------------------------------------------------------------------------------
def diff(view: View) -> dict:
    """Desired against installed: missing and stale ovsnat flows, and foreign flows."""
    desired = {f.text() for f in view.host.all_flows()}
    ours = {f.text for f in view.installed if is_ours(f.cookie)}
    return {
        "missing": sorted(desired - ours),
        "stale": sorted(ours - desired),
        "foreign": sorted(f.text for f in view.installed if not is_ours(f.cookie)),
    }


def vm_counts(view: View) -> Counter:
    return Counter("fip" if p.fip else "pat" for p in view.host.accepted)


def find_vm(view: View, key: str, network: str | None = None) -> VmPort:
    """A VM by port name, iface-id, fixed IP or FIP; `network` picks among VMs of several
    networks with the same fixed IP."""
    found = [
        p
        for p in view.host.accepted
        if key in (p.name, p.iface_id, str(p.fixed_ip), str(p.fip))
        and (
            network is None or view.host.net(p).label == network or view.host.net(p).name == network
        )
    ]
    if len(found) == 1:
        return found[0]
    if not found:
        raise InspectError(
            f"no VM port named {key!r} (port name, iface-id, fixed IP or FIP)"
            + (f" in network {network}" if network else "")
        )
    nets = ", ".join(sorted(view.host.net(p).label for p in found))
    raise InspectError(f"{key} is in several networks ({nets}): add --network NAME")


__all__ = ["COOKIE_VM", "load_view", "dump", "diff", "find_vm"]
