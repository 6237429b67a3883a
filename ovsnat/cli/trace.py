"""`ovsnat trace`: follow one packet through a live host's pipeline and say what happens in
plain words. Built on `ovs-appctl ofproto/trace` with `--ct-next` for conntrack steps."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import netaddr

from ovsnat.cli.inspect import InspectError, View, find_vm, ovs_tool
from ovsnat.compile.pipeline import SG_IN, SG_OUT
from ovsnat.compile.tables import BY_ID
from ovsnat.model import mac_str

STEP = re.compile(r"^\s*(\d+)\. (.*?), priority (\d+), cookie (0x[0-9a-f]+)")
FIELDS = re.compile(r"(nw_src|nw_dst|tp_src|tp_dst|dl_src|dl_dst)=([^,\s]+)")


@dataclass
class Step:
    table: int
    match: str
    cookie: int
    actions: list[str] = field(default_factory=list)


def trace_flow(
    view: View,
    source: str,
    dst: str,
    proto: str,
    dport: int,
    sport: int = 40000,
    src_ip: str = "198.51.100.10",
    network: str | None = None,
) -> str:
    """The ofproto/trace flow for a packet from a VM (port name, iface-id or IP; `network`
    picks among VMs of several networks with the same IP) or from "outside" (arriving on
    the uplink from src_ip)."""
    cfg = view.cfg
    l4 = {
        "tcp": f"tp_src={sport},tp_dst={dport},tcp_flags=syn",
        "udp": f"udp_src={sport},udp_dst={dport}",
        "icmp": "icmp_type=8,icmp_code=0",
    }.get(proto)
    if l4 is None:
        raise InspectError(f"protocol {proto!r}: use tcp, udp or icmp")
    try:
        dst_ip = netaddr.IPAddress(dst, version=4)
    except (netaddr.AddrFormatError, ValueError):
        raise InspectError(f"destination {dst!r} is not an IPv4 address") from None
    if source == "outside":
        gw = mac_str(cfg.external_gateway_mac) if cfg.external_gateway_mac else "02:00:00:00:00:fe"
        return (
            f"{proto},in_port={cfg.uplink_ofport},dl_src={gw},"
            f"dl_dst={mac_str(cfg.ip_mac(dst_ip))},nw_src={src_ip},nw_dst={dst},"
            f"nw_ttl=64,{l4}"
        )
    vm = find_vm(view, source, network)
    net = view.host.net(vm)
    local = next(
        (p for p in view.host.accepted if p.fixed_ip == dst_ip and view.host.net(p) == net), None
    )
    if local is not None:
        dl_dst = mac_str(local.mac)
    elif net.contains(dst_ip):
        dl_dst = "02:00:00:00:00:ff"  # a VM of the network on another host
    else:
        dl_dst = mac_str(cfg.router_mac)
    return (
        f"{proto},in_port={vm.ofport},dl_src={mac_str(vm.mac)},dl_dst={dl_dst},"
        f"nw_src={vm.fixed_ip},nw_dst={dst},nw_ttl=64,{l4}"
    )


def run_trace(view: View, flow: str) -> str:
    return ovs_tool(
        "ovs-appctl",
        "ofproto/trace",
        view.cfg.bridge,
        flow,
        *["--ct-next", "trk,new"] * 4,  # security zones, a network's, PAT's
    )


def parse_steps(output: str) -> list[Step]:
    steps: list[Step] = []
    for line in output.splitlines():
        m = STEP.match(line)
        if m:
            steps.append(Step(int(m.group(1)), m.group(2), int(m.group(4), 16)))
        elif (
            steps
            and line.startswith("    ")
            and not line.strip().startswith(("->", "thaw", "Resuming"))
        ):
            steps[-1].actions.append(line.strip())
    return steps


def analyse(view: View, flow: str, output: str, proto: str) -> dict:
    """What ofproto/trace says, as data: each step (table, its role, the flow's owner, match,
    actions), the verdict (where the packet leaves, or the table that drops it), the packet
    as it leaves, and notes on what the trace cannot know."""
    steps = parse_steps(output)
    finals = [
        line.split(":", 1)[1].strip()
        for line in output.splitlines()
        if line.startswith("Final flow:") and "unchanged" not in line
    ]
    result = {
        "packet": flow,
        "steps": [
            {
                "table": s.table,
                "role": BY_ID[s.table].name if s.table in BY_ID else None,
                "owner": view.owner(s.cookie, s.table),
                "cookie": f"{s.cookie:#x}",
                "match": s.match,
                "actions": s.actions,
            }
            for s in steps
        ],
        "notes": [],
    }
    outputs = [a for s in steps for a in s.actions if a.startswith("output:") or a == "IN_PORT"]
    if not outputs:
        last = steps[-1] if steps else None
        table = last.table if last else 0
        result["verdict"] = {
            "outcome": "dropped",
            "table": table,
            "role": BY_ID[table].name if table in BY_ID else None,
        }
        if last is not None and table in (SG_OUT, SG_IN):
            who = result["steps"][-1]["owner"]
            result["notes"].append(
                f"refused by the security groups of port {who}: no rule of its groups allows it"
                if who not in ("host",)
                else "dropped by the security-group tables: invalid, or a dead connection"
            )
        result["final"] = None
        return result
    action = outputs[-1]
    port = action.split(":", 1)[1] if action.startswith("output:") else "IN_PORT"
    if port.startswith("NXM_NX_REG11"):  # a filtered port's delivery: the port it loaded
        loads = [a for s in steps for a in s.actions if a.endswith("->NXM_NX_REG11[]")]
        port = str(int(loads[-1].split(":", 1)[1].split("->")[0], 16)) if loads else port
    name = next((n for n, r in view.rows.items() if str(r.ofport) == port), port)
    uplink = port == str(view.cfg.uplink_ofport)
    fabric = view.cfg.fabric_ofport and port == str(view.cfg.fabric_ofport)
    result["final"] = dict(FIELDS.findall(finals[-1])) if finals else {}
    where = "the uplink" if uplink else "the fabric" if fabric else f"port {name}"
    vlan = next(
        (
            a.split("->")[0].split(":")[1]
            for s in steps
            for a in s.actions
            if a.startswith("set_field:") and a.endswith("->vlan_vid")
        ),
        None,
    )
    if fabric and vlan:
        where += f" in VLAN {int(vlan) & 0xFFF}"
    result["verdict"] = {"outcome": "output", "port": port, "port_name": name, "where": where}
    nat = [a for s in steps for a in s.actions if a.startswith("nat(src=")]
    m = re.search(r"nat\(src=([\d.]+):(\d+)-(\d+)\)", nat[-1]) if nat else None
    if m:
        result["notes"].append(
            f"PAT: conntrack picks the source port from {m.group(2)}-"
            f"{m.group(3)} at run time; the trace shows the first one"
        )
    if any("ct(table=55" in a for s in steps for a in s.actions):
        result["notes"].append(
            "a reply to the SNAT IP is un-NATed by conntrack at run time; "
            "the trace cannot know which VM's connection it belongs to"
        )
    return result


def explain(view: View, flow: str, output: str, proto: str) -> str:
    """The analysis in words, one line per step."""
    r = analyse(view, flow, output, proto)
    lines = [f"packet: {flow}"]
    for s in r["steps"]:
        lines.append(
            f"  {s['table']:>2} {s['role'] or '?':<11} [{s['owner']}] {s['match']}"
            f"  ->  {', '.join(s['actions']) or 'drop'}"
        )
    v = r["verdict"]
    if v["outcome"] == "dropped":
        where = f"table {v['table']} ({v['role']})" if v["role"] else "table 0"
        lines.append(f"verdict: dropped in {where}; see flows/pipeline.md for its counter")
        return "\n".join(lines + [f"note: {n}" for n in r["notes"]])
    final = r["final"]
    ports = proto != "icmp" and "tp_src" in final
    src = final.get("nw_src", "?") + (f":{final.get('tp_src')}" if ports else "")
    dst = final.get("nw_dst", "?") + (f":{final.get('tp_dst')}" if ports else "")
    lines.append(
        f"verdict: leaves {v['where']} as {src} -> {dst} "
        f"(eth {final.get('dl_src', '?')} -> {final.get('dl_dst', '?')})"
    )
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)
