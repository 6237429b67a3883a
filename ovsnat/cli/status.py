"""`ovsnat status` on a live host: its VMs, networks, skipped ports, PAT usage (from
ovs-vswitchd's conntrack, tallied as the controller tallies it), drop counters and drift,
with what the controller's status file says beside them."""

from __future__ import annotations

from dataclasses import asdict

from ovsnat.cli.inspect import View, diff
from ovsnat.compile.flows import COOKIE_HOST, cookie_kind
from ovsnat.core.conntrack import pat_usage as conntrack_pat_usage
from ovsnat.core.conntrack import tally
from ovsnat.model import HostConfig, mac_str


def pat_usage(cfg: HostConfig, conntrack: str) -> dict:
    """PAT ports in use per VM (fixed IP) from `dpctl/dump-conntrack zone=ct_zone`, tallied
    as the controller tallies its own reads (ovsnat.core.conntrack)."""
    return conntrack_pat_usage(tally(conntrack, cfg.ct_zone, str(cfg.snat_ip)), cfg.pat_port_count)


# Drop counters worth watching: (name, table, priority) of host-level drop flows.
DROP_COUNTERS = (
    ("spoofed_or_unknown_source", 0, 0),
    ("pat_range_exhausted", 38, 0),
    ("pat_unsolicited_inbound", 55, 0),
    ("pat_invalid", 35, 200),
    ("network_pat_invalid", 31, 200),
    ("network_pat_exhausted", 32, 0),
    ("fabric_spoofed", 5, 200),
    ("ingress_unknown_destination", 50, 0),
    ("ttl_expired_out", 30, 300),
    ("ttl_expired_in", 50, 300),
)


def drop_counters(view: View) -> dict[str, int]:
    counts = dict.fromkeys(name for name, _, _ in DROP_COUNTERS)
    for name, table, prio in DROP_COUNTERS:
        counts[name] = sum(
            f.packets
            for f in view.installed
            if f.table == table and f.priority == prio and cookie_kind(f.cookie) == COOKIE_HOST
        )
    return counts


def status(view: View, conntrack: str) -> dict:
    cfg, host = view.cfg, view.host
    vms = []
    waiting = (view.status or {}).get("waiting", {})
    leases = (view.status or {}).get("dhcp_leases", {})
    for port in host.accepted:
        vms.append(
            {
                "name": port.name,
                "iface_id": port.iface_id,
                "ofport": port.ofport,
                "network": host.net(port).label,
                "mac": mac_str(port.mac),
                "fixed_ip": str(port.fixed_ip),
                "nat": _nat(host, port),
                "fip_state": ("pending" if host.is_pending(port.name) else "active")
                if port.fip
                else None,
                "waiting": waiting.get(port.name, {}).get("state"),
                "dhcp": leases.get(port.name),
            }
        )
    return {
        "bridge": cfg.bridge,
        "snat_ip": str(cfg.snat_ip),
        "transit_cidr": str(cfg.transit_cidr),
        "snat_ports": f"{cfg.snat_port_min}-{cfg.snat_port_max}",
        "gateway_mac": mac_str(cfg.external_gateway_mac) if cfg.external_gateway_mac else None,
        "fabric_port": cfg.fabric_port or None,
        # docs/metadata.md: the proxy's port, and its ofport or that it is not there yet
        "metadata_port": _metadata(cfg),
        # ovsnat-ext-* (docs/routers.md item 3): each with this host's SNAT address on it
        "externals": {e.id: e.describe() for e in cfg.externals},
        "networks": [
            {
                "name": net.label,
                "vlan": net.vlan,
                "cidr": str(net.cidr),
                "gateway": str(net.gateway),
                "vms": sum(1 for vm in vms if vm["network"] == net.label),
                "routing": host.route(net).describe(),
            }
            for net in sorted(host.nets.values(), key=lambda n: (n.id, n.name))
        ],
        "vms": vms,
        "rejected": [asdict(r) for r in host.rejected],
        "pat": pat_usage(cfg, conntrack),
        "drift": {k: len(v) for k, v in diff(view).items()},
        "drops": drop_counters(view),
        "controller": view.status,
    }


def _metadata(cfg) -> str | None:
    if not cfg.metadata_port:
        return None
    if not cfg.metadata_ofport:
        return f"{cfg.metadata_port} (not on the bridge: metadata dropped)"
    return f"{cfg.metadata_port} (ofport {cfg.metadata_ofport})"


def _nat(host, port) -> str:
    """How the port reaches outside: its FIP, PAT, or nothing its network's router allows
    (docs/routers.md); a FIP held inert is named."""
    route, inert = host.route(host.net(port)), host.inert.get(port.name)
    held = f", FIP {', '.join(inert['fips'])} inert" if inert else ""
    if port.fip:
        return f"FIP {port.fip}"
    if route.pat:
        return "PAT" + held
    return ("none: isolated" if not route.routed else "none: no PAT") + held


def format_status(st: dict) -> str:
    lines = [
        f"bridge {st['bridge']}: SNAT {st['snat_ip']} ports {st['snat_ports']}, "
        f"gateway MAC {st['gateway_mac'] or 'unknown'}, transit {st['transit_cidr']}"
    ]
    externals = st.get("externals") or {}
    if externals:
        lines.append(f"external networks ({len(externals)}):")
    for eid, e in sorted(externals.items()):
        vlan = f"VLAN {e['vlan']}" if e["vlan"] else "untagged"
        mac = f" ({e['gateway_mac']})" if e["gateway_mac"] else ""
        lines.append(
            f"  {eid:<14} {vlan:<9} {e['cidr']:<18} gateway {e['gateway']}{mac}, SNAT {e['snat']}"
        )
    lines.append(f"metadata proxy port: {st.get('metadata_port') or 'none (metadata off)'}")
    lines.append(f"networks ({len(st['networks'])}), fabric port {st['fabric_port'] or 'none'}:")
    for net in st["networks"]:
        vlan = f"VLAN {net['vlan']}" if net["vlan"] else "untagged"
        lines.append(
            f"  {net['name']:<14} {vlan:<9} {net['cidr']:<18} gateway "
            f"{net['gateway']:<15} {net['vms']} VMs; {net['routing']}"
        )
    leased = sum(1 for vm in st["vms"] if vm.get("dhcp"))
    lines.append(f"VMs ({len(st['vms'])}, {leased} with a DHCP lease from this host):")
    for vm in st["vms"]:
        state = (
            f" [{vm['fip_state']}" + (f": {vm['waiting']}" if vm.get("waiting") else "") + "]"
            if vm["fip_state"]
            else ""
        )
        lease = vm.get("dhcp")
        dhcp = (
            f"  DHCP lease {lease['ip']}, {lease['acks']} acks, {lease['remaining']} s left"
            if lease
            else ""
        )
        lines.append(
            f"  {vm['name']:<12} {vm['iface_id']:<14} ofport {vm['ofport']:<5} "
            f"{vm['network']:<12} {vm['fixed_ip']:<15} {vm['nat']}{state}{dhcp}"
        )
    lines.append(f"skipped ports ({len(st['rejected'])}):")
    lines += [f"  {r['reason']}" for r in st["rejected"]]
    pat = st["pat"]
    lines.append(
        f"PAT: {pat['ports_in_use']} of {pat['capacity']} ports in use "
        f"({pat['share']:.1%}); per VM: "
        + (", ".join(f"{ip} {n}" for ip, n in pat["per_vm"].items()) or "none")
    )
    lines.append("drops: " + ", ".join(f"{k} {v}" for k, v in st["drops"].items()))
    d = st["drift"]
    lines.append(f"drift: {d['missing']} missing, {d['stale']} stale, {d['foreign']} foreign")
    ctl = st["controller"]
    if ctl:
        lines.append(
            "controller: " + ", ".join(f"{k} {v}" for k, v in sorted(ctl.get("stats", {}).items()))
        )
        for name, h in ctl.get("handoffs", {}).items():
            what = (
                f"left, {h['sessions']} sessions handed to it"
                if h["role"] == "left"
                else "arrived, its older sessions handed back to the host it left"
            )
            lines.append(f"  handoff: {name} ({h['fixed_ip']}) {what}, {h['remaining']} s left")
        dropped = ctl.get("packet_in_drops", {})
        if dropped:
            lines.append(
                "packet-ins dropped: "
                + ", ".join(f"{why} {n}" for why, n in sorted(dropped.items()))
            )
        refused = ctl.get("conn_refused", {})
        if refused:
            lines.append(
                "connections refused by conn_limit: "
                + ", ".join(f"{name} {n}" for name, n in sorted(refused.items()))
            )
        for c in ctl.get("conflicts", [])[-5:]:
            lines.append(f"  conflict: FIP {c['fip']} claimed by {c['mac']} at {c['time']}")
        for d in ctl.get("duplicate_flows", []):
            lines.append(
                f"  flow left out: {d['owner']}'s {d['flow']} (OVS holds one flow "
                f"per table, priority and match: {d['kept_by']}'s)"
            )
    return "\n".join(lines)
