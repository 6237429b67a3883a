"""Operator views of a live host: `ovsnat dump`, `diff`, `status`, `trace`.

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
from dataclasses import asdict, dataclass

import netaddr

from ovsnat.core.conntrack import pat_usage as conntrack_pat_usage
from ovsnat.core.conntrack import tally
from ovsnat.compile.flows import COOKIE_HOST, COOKIE_VM, cookie_kind, cookie_owner, is_ours
from ovsnat.model import HostConfig, VmPort, mac_str, port_from_row, with_gateway_mac
from ovsnat.model.options import read_ini
from ovsnat.ovsdb import Watcher
from ovsnat.compile.pipeline import BY_ID, INGRESS
from ovsnat.core.state import HostState


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
    text: str              # as ovsnat renders a flow: cookie, table, priority, match, actions

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
    r"priority=(?P<prio>\d+)(?P<rest>.*)$")


def parse_dump(text: str) -> list[Installed]:
    flows = []
    for line in text.splitlines():
        m = DUMP_LINE.search(line.strip())
        if not m:
            continue
        table = int(m.group("table") or 0)
        prefix = f"table={table}, " if table else ""
        body = f"cookie={m.group('cookie')}, {prefix}priority={m.group('prio')}{m.group('rest')}"
        flows.append(Installed(int(m.group("cookie"), 16), table, int(m.group("prio")),
                               int(m.group("pk")), int(m.group("by")), float(m.group("dur")),
                               body))
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
    status: dict            # the controller's status file, if any

    def owner(self, cookie: int) -> str:
        """The object that made a flow: host, a network, or a VM's port name."""
        if cookie_kind(cookie) == COOKIE_HOST:
            return "host"
        owner = self.host.owner_names.get(cookie >> 24)
        if isinstance(owner, tuple):
            return f"network {owner[1] or '(default)'}"
        if owner is not None:
            return owner
        if cookie_kind(cookie) == COOKIE_VM:
            return f"unknown VM {netaddr.IPAddress(cookie_owner(cookie))}"
        return f"unknown owner {cookie >> 24:#x}"


def load_view(conf_path: str) -> View:
    options = read_ini(conf_path)
    snap = Watcher(options["ovsdb_connection"], options["bridge"], lambda b: None) \
        .snapshot_once()
    uplink = snap.rows.get(options["uplink_port"])
    if uplink is None or not uplink.ofport or uplink.ofport < 1:
        raise InspectError(f"uplink port {options['uplink_port']} is not on bridge "
                           f"{options['bridge']}")
    fabric = snap.rows.get(options.get("fabric_port") or "")
    snat = snap.bridge_ids.get("ovsnat-snat-ip") or options.get("snat_ip")
    cfg = HostConfig.parse({**options, "uplink_ofport": uplink.ofport, "snat_ip": snat,
                            "fabric_ofport": fabric.ofport if fabric and fabric.ofport and
                            fabric.ofport > 0 else 0})
    installed = dump_flows(cfg.bridge)
    if cfg.learn_gateway_mac:
        cfg = with_gateway_mac(cfg, _installed_gateway_mac(installed))
    host = HostState(cfg)
    for name, row in sorted(snap.rows.items()):
        if name not in (cfg.uplink_port, cfg.fabric_port):
            host.update(name, port_from_row(name, row.ofport, row.external_ids,
                                            row.link_state))
    host.adopt_installed({(f.table, f.cookie) for f in installed})
    return View(cfg, host, snap.rows, installed, read_status(options))


def _installed_gateway_mac(installed: list[Installed]):
    for f in installed:
        m = re.search(r"set_field:([0-9a-f:]{17})->eth_dst,output", f.actions)
        if f.table == INGRESS and m and is_ours(f.cookie):
            return netaddr.EUI(m.group(1))
    return None


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
        groups[owner].append({"table": f.table, "role": table.name if table else "?",
                              "priority": f.priority, "match": f.match,
                              "actions": f.actions, "packets": f.packets, "bytes": f.bytes,
                              "cookie": f"{f.cookie:#x}"})
    return dict(groups)


def describe_owner(view: View, owner: str) -> str:
    if owner in ("host", "foreign"):
        return {"host": f"host-level (SNAT {view.cfg.snat_ip}:{view.cfg.snat_port_min}-"
                        f"{view.cfg.snat_port_max})",
                "foreign": "not ovsnat's (left alone)"}[owner]
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
            lines.append(f"  {f['table']:>2} {f['role']:<11} {f['packets']:>8} pkts  "
                         f"prio {f['priority']:<3} {f['match'] or '*'}  ->  {f['actions']}")
    return "\n".join(lines)


# --- ovsnat diff --------------------------------------------------------------------------------
def diff(view: View) -> dict:
    """Desired against installed: missing and stale ovsnat flows, and foreign flows."""
    desired = {f.text() for f in view.host.all_flows()}
    ours = {f.text for f in view.installed if is_ours(f.cookie)}
    return {"missing": sorted(desired - ours), "stale": sorted(ours - desired),
            "foreign": sorted(f.text for f in view.installed if not is_ours(f.cookie))}


# --- ovsnat status ------------------------------------------------------------------------------
def pat_usage(cfg: HostConfig, conntrack: str) -> dict:
    """PAT ports in use per VM (fixed IP) from `dpctl/dump-conntrack zone=ct_zone`, tallied
    as the controller tallies its own reads (ovsnat.core.conntrack)."""
    return conntrack_pat_usage(tally(conntrack, cfg.ct_zone, str(cfg.snat_ip)),
                               cfg.pat_port_count)


# Drop counters worth watching: (name, table, priority) of host-level drop flows.
DROP_COUNTERS = (("spoofed_or_unknown_source", 0, 0), ("pat_range_exhausted", 38, 0),
                 ("pat_unsolicited_inbound", 55, 0), ("pat_invalid", 35, 200),
                 ("network_pat_invalid", 31, 200), ("network_pat_exhausted", 32, 0),
                 ("fabric_spoofed", 5, 200), ("ingress_unknown_destination", 50, 0),
                 ("ttl_expired_out", 30, 300), ("ttl_expired_in", 50, 300))


def drop_counters(view: View) -> dict[str, int]:
    counts = dict.fromkeys(name for name, _, _ in DROP_COUNTERS)
    for name, table, prio in DROP_COUNTERS:
        counts[name] = sum(f.packets for f in view.installed if f.table == table and
                           f.priority == prio and cookie_kind(f.cookie) == COOKIE_HOST)
    return counts


def status(view: View, conntrack: str) -> dict:
    cfg, host = view.cfg, view.host
    vms = []
    waiting = (view.status or {}).get("waiting", {})
    leases = (view.status or {}).get("dhcp_leases", {})
    for port in host.accepted:
        vms.append({"name": port.name, "iface_id": port.iface_id, "ofport": port.ofport,
                    "network": host.net(port).label,
                    "mac": mac_str(port.mac), "fixed_ip": str(port.fixed_ip),
                    "nat": f"FIP {port.fip}" if port.fip else "PAT",
                    "fip_state": ("pending" if host.is_pending(port.name) else "active")
                    if port.fip else None,
                    "waiting": waiting.get(port.name, {}).get("state"),
                    "dhcp": leases.get(port.name)})
    return {
        "bridge": cfg.bridge, "snat_ip": str(cfg.snat_ip), "transit_cidr": str(cfg.transit_cidr),
        "snat_ports": f"{cfg.snat_port_min}-{cfg.snat_port_max}",
        "gateway_mac": mac_str(cfg.external_gateway_mac) if cfg.external_gateway_mac else None,
        "fabric_port": cfg.fabric_port or None,
        "networks": [{"name": net.label, "vlan": net.vlan, "cidr": str(net.cidr),
                      "gateway": str(net.gateway),
                      "vms": sum(1 for vm in vms if vm["network"] == net.label)}
                     for net in sorted(host.nets.values(), key=lambda n: (n.id, n.name))],
        "vms": vms,
        "rejected": [asdict(r) for r in host.rejected],
        "pat": pat_usage(cfg, conntrack),
        "drift": {k: len(v) for k, v in diff(view).items()},
        "drops": drop_counters(view),
        "controller": view.status,
    }


def format_status(st: dict) -> str:
    lines = [f"bridge {st['bridge']}: SNAT {st['snat_ip']} ports {st['snat_ports']}, "
             f"gateway MAC {st['gateway_mac'] or 'unknown'}, transit {st['transit_cidr']}"]
    lines.append(f"networks ({len(st['networks'])}), fabric port "
                 f"{st['fabric_port'] or 'none'}:")
    for net in st["networks"]:
        vlan = f"VLAN {net['vlan']}" if net["vlan"] else "untagged"
        lines.append(f"  {net['name']:<14} {vlan:<9} {net['cidr']:<18} gateway "
                     f"{net['gateway']:<15} {net['vms']} VMs")
    leased = sum(1 for vm in st["vms"] if vm.get("dhcp"))
    lines.append(f"VMs ({len(st['vms'])}, {leased} with a DHCP lease from this host):")
    for vm in st["vms"]:
        state = f" [{vm['fip_state']}" + (f": {vm['waiting']}" if vm.get("waiting") else "") + \
            "]" if vm["fip_state"] else ""
        lease = vm.get("dhcp")
        dhcp = f"  DHCP lease {lease['ip']}, {lease['acks']} acks, {lease['remaining']} s " \
            "left" if lease else ""
        lines.append(f"  {vm['name']:<12} {vm['iface_id']:<14} ofport {vm['ofport']:<5} "
                     f"{vm['network']:<12} {vm['fixed_ip']:<15} {vm['nat']}{state}{dhcp}")
    lines.append(f"skipped ports ({len(st['rejected'])}):")
    lines += [f"  {r['reason']}" for r in st["rejected"]]
    pat = st["pat"]
    lines.append(f"PAT: {pat['ports_in_use']} of {pat['capacity']} ports in use "
                 f"({pat['share']:.1%}); per VM: " +
                 (", ".join(f"{ip} {n}" for ip, n in pat["per_vm"].items()) or "none"))
    lines.append("drops: " + ", ".join(f"{k} {v}" for k, v in st["drops"].items()))
    d = st["drift"]
    lines.append(f"drift: {d['missing']} missing, {d['stale']} stale, {d['foreign']} foreign")
    ctl = st["controller"]
    if ctl:
        lines.append("controller: " + ", ".join(f"{k} {v}" for k, v in
                                                sorted(ctl.get("stats", {}).items())))
        for name, h in ctl.get("handoffs", {}).items():
            what = f"left, {h['sessions']} sessions handed to it" if h["role"] == "left" \
                else "arrived, its older sessions handed back to the host it left"
            lines.append(f"  handoff: {name} ({h['fixed_ip']}) {what}, {h['remaining']} s "
                         "left")
        dropped = ctl.get("packet_in_drops", {})
        if dropped:
            lines.append("packet-ins dropped: " +
                         ", ".join(f"{why} {n}" for why, n in sorted(dropped.items())))
        refused = ctl.get("conn_refused", {})
        if refused:
            lines.append("connections refused by conn_limit: " +
                         ", ".join(f"{name} {n}" for name, n in sorted(refused.items())))
        for c in ctl.get("conflicts", [])[-5:]:
            lines.append(f"  conflict: FIP {c['fip']} claimed by {c['mac']} at {c['time']}")
        for d in ctl.get("duplicate_flows", []):
            lines.append(f"  flow left out: {d['owner']}'s {d['flow']} (OVS holds one flow "
                         f"per table, priority and match: {d['kept_by']}'s)")
    return "\n".join(lines)


def vm_counts(view: View) -> Counter:
    return Counter("fip" if p.fip else "pat" for p in view.host.accepted)


def find_vm(view: View, key: str, network: str | None = None) -> VmPort:
    """A VM by port name, iface-id, fixed IP or FIP; `network` picks among VMs of several
    networks with the same fixed IP."""
    found = [p for p in view.host.accepted
             if key in (p.name, p.iface_id, str(p.fixed_ip), str(p.fip)) and
             (network is None or view.host.net(p).label == network or
              view.host.net(p).name == network)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise InspectError(f"no VM port named {key!r} (port name, iface-id, fixed IP or FIP)"
                           + (f" in network {network}" if network else ""))
    nets = ", ".join(sorted(view.host.net(p).label for p in found))
    raise InspectError(f"{key} is in several networks ({nets}): add --network NAME")


__all__ = ["COOKIE_VM", "load_view", "dump", "diff", "status", "find_vm"]
