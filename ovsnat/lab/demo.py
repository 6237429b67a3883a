"""The narrated demo `make lab` runs: NAT through FIP and PAT, then live migrations under
load, with what was measured. The lab stays up afterwards for exploring."""

from __future__ import annotations

import re
import time
from collections import Counter

import netaddr

from ovsnat.compile.flows import (
    COOKIE_GONE,
    COOKIE_HOST,
    COOKIE_NET,
    COOKIE_VLAN_GONE,
    COOKIE_VLAN_VM,
    cookie_kind,
    cookie_owner,
)
from ovsnat.compile.tables import BY_ID
from ovsnat.lab import dhcpclient, scenario
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import SERVER_IP, Lab
from ovsnat.lab.traffic import (
    background_ping,
    background_tcp,
    parse_ping,
    ping,
    ping_gap,
    tcp_connect,
    udp_request,
)


def say(text: str = "") -> None:
    print(text, flush=True)


def tenant_networks(lab: Lab) -> None:
    """East-west across the fabric, and two networks with the same addresses on one host."""
    vms = lab.vms
    step("2b. Tenant networks on the fabric (a top-of-rack switch joins the hosts)")
    say("  tenant-a (VLAN 101) and tenant-b (VLAN 102) both use 10.1.0.0/24; ta1 and tb1")
    say("  are both 10.1.0.11 on hv1, ta2 is 10.1.0.12 on hv2.")
    for src, dst in (("vm2", "vm4"), ("ta1", "ta2")):
        reply = tcp_connect(lab, vms[src].ns, vms[dst].ip, 7000)
        say(
            f"  {src} (hv1) -> {dst} (hv2) across the fabric: {dst} sees {reply.peer_ip} "
            "(no NAT inside a network)"
        )
    tb_to_ta2 = ping(vms["tb1"].ns, vms["ta2"].ip, count=2, wait=0.3)
    say(
        f"  tb1 -> 10.1.0.12: {tb_to_ta2.received} of 2 answered (tenant-b has no "
        "10.1.0.12; ta2 is in tenant-a)"
    )
    sessions = [
        background_tcp(lab, vms[n].ns, SERVER_IP, 8080, hold=2, src_port=45000)
        for n in ("ta1", "tb1")
    ]
    results = [s.result().strip().splitlines()[-1] for s in sessions]
    say(
        f"  ta1 and tb1 to the server from the same port at once: {results[0]} / "
        f"{results[1]} (each network's own conntrack zone, then one SNAT IP)"
    )


def step(title: str) -> None:
    say(f"\n== {title} " + "=" * max(0, 74 - len(title)))


def flow_summary(lab: Lab, host: str) -> str:
    """Flows of a host per owner and per table, decoded from the cookies."""
    out = lab.hosts[host].ofctl("dump-flows", "br-int")
    owners, tables = Counter(), Counter()
    for line in out.splitlines():
        m = re.search(r"cookie=(0x[0-9a-f]+),", line)
        if not m:
            continue
        cookie = int(m.group(1), 16)
        t = re.search(r"table=(\d+)", line)
        tables[int(t.group(1)) if t else 0] += 1
        owners[_owner(lab, cookie)] += 1
    lines = [
        f"  {host}: {sum(owners.values())} flows; by owner: "
        + ", ".join(f"{k} {v}" for k, v in sorted(owners.items()))
    ]
    lines.append(
        "    by table: "
        + ", ".join(f"{t} {BY_ID[t].name} {n}" for t, n in sorted(tables.items()) if t in BY_ID)
    )
    return "\n".join(lines)


def _owner(lab: Lab, cookie: int) -> str:
    """Who made a flow, from its cookie (see flows/pipeline.md)."""
    kind, owner = cookie_kind(cookie), cookie_owner(cookie)
    if kind == COOKIE_HOST:
        return "host-level"
    if kind == COOKIE_NET:
        return f"network in VLAN {owner}" if owner else "untagged network"
    if kind in (COOKIE_GONE, COOKIE_VLAN_GONE):
        return "handoff of a VM that left"
    vlan = owner >> 20 if kind == COOKIE_VLAN_VM else None
    for v in lab.vms.values():
        ip = int(netaddr.IPAddress(v.ip))
        v_vlan = int(v.external_ids.get("ovsnat-vlan", 0)) or None
        if v_vlan == vlan and (ip == owner if vlan is None else ip & 0xFFFFF == owner & 0xFFFFF):
            nat = f"FIP {v.external_ids['ovsnat-fip']}" if "ovsnat-fip" in v.external_ids else "PAT"
            return f"{v.name} ({v.ip}, {nat})"
    return f"owner {cookie >> 24:#x}"


def run_demo(lab: Lab) -> None:
    vm1, vm2 = lab.vms["vm1"], lab.vms["vm2"]
    fip = vm1.external_ids["ovsnat-fip"]
    step("1. The lab")
    say("Two hypervisors, each its own Open vSwitch (userspace datapath) in a network")
    say("namespace with ovsnat's controller (ryu-manager ovsnat.app); VMs are namespaces.")
    say("Outside: router 203.0.113.1 and a server 198.51.100.10 behind it.")
    for vm in lab.vms.values():
        kind = (
            f"floating IP {vm.external_ids['ovsnat-fip']}"
            if "ovsnat-fip" in vm.external_ids
            else "PAT (no floating IP)"
        )
        say(f"  {vm.name} on {vm.host}: {vm.ip}, {kind}")
    wait_for(
        lambda: ping(lab.srv_ns, fip, count=1, wait=0.2).received,
        20,
        what="the controllers to program the hosts",
    )
    for vm in lab.vms.values():
        got = dhcpclient.lease(lab, vm)
        if got:
            say(
                f"  {vm.name} booted like a cloud image, by DHCP only (udhcpc): {vm.host}'s "
                f"ovsnat gave it {got['ip']}/{got['mask']}, gateway {got['router']}, DNS "
                f"{got['dns'].strip()}, domain {got['domain']}, MTU {got['mtu']}"
            )

    step("2. Static 1:1 NAT and PAT")
    for vm in lab.vms.values():
        reply = tcp_connect(lab, vm.ns, SERVER_IP, 8080)
        net = vm.external_ids.get("ovsnat-network", "default network")
        say(f"  {vm.name} ({net}) -> server: the server sees {reply.peer_ip}:{reply.peer_port}")
    for vm in lab.vms.values():
        if "ovsnat-fip" in vm.external_ids:
            f = vm.external_ids["ovsnat-fip"]
            reply = tcp_connect(lab, lab.srv_ns, f, 7000)
            say(f"  server -> {f}: reaches {vm.name}, which sees the client as {reply.peer_ip}")
    reply = udp_request(lab, vm1.ns, SERVER_IP, 8080, size=3000)
    say(f"  {vm1.name} -> server, 3000-byte UDP (fragmented): {reply.line}")

    tenant_networks(lab)

    step(f"3. Live-migrate {vm1.name} (FIP {fip}) from hv1 to hv2 under load")
    say(f"  the server holds a TCP session to {fip}:7000 and pings it every 10 ms")
    session = background_tcp(lab, lab.srv_ns, fip, 7000, hold=5)
    pinger = background_ping(lab.srv_ns, fip, interval=0.01, duration=5)
    time.sleep(1.5)
    t0 = time.monotonic()
    lab.move_vm(vm1, "hv2")
    moved = time.monotonic() - t0
    result, out = parse_ping(pinger.result()), session.result().strip().splitlines()[-1]
    say(
        f"  moved in {moved:.2f}s (unplug, move, plug, RARP); ping gap "
        f"{ping_gap(result.output, 0.01):.2f}s, {result.lost} of {result.sent} lost"
    )
    say(f"  the inbound TCP session: {out}  (stateless FIP: nothing to lose)")

    step(f"4. Live-migrate {vm2.name} (PAT) from hv1 to hv2 while it holds a session")
    say("  vm2 echoes to the server every 10 ms through hv1's SNAT IP; handoff_vlan 4000 is")
    say("  on (docs/handoff.md): hv1 keeps translating vm2's old session over the fabric.")
    session = background_tcp(lab, vm2.ns, SERVER_IP, 8080, hold=5)
    time.sleep(1)
    t0 = time.monotonic()
    lab.move_vm(vm2, "hv2")
    while (
        not (reply := tcp_connect(lab, vm2.ns, SERVER_IP, 8080, timeout=0.3)).ok
        and time.monotonic() - t0 < 5
    ):
        pass
    say(
        f"  a new session works {time.monotonic() - t0:.2f}s after the move; the server "
        f"sees {reply.peer_ip} (hv2's PAT address)"
    )
    say(
        f"  the old session: {session.result().strip().splitlines()[-1]}  (still through "
        "hv1's SNAT IP: no state copied, hv1 acts on its own conntrack)"
    )
    handoffs = scenario.status(lab, "hv1").get("handoffs", {})
    for name, h in handoffs.items():
        if h["role"] != "left":
            continue
        say(
            f"  hv1 status: {name} left, {h['sessions']} session(s) handed, ends when "
            f"they do or in {h['remaining']} s"
        )

    step("5. Flows per host (cookies name the owner)")
    for host in lab.hosts:
        say(flow_summary(lab, host))

    step("6. Explore")
    say("  ovsnat lab status                       hosts, VMs, rundirs, inspect commands")
    say("  ovsnat lab migrate vm1 hv1              move a VM by hand (--overlap: real-world")
    say("                                          order of Interface rows)")
    say(f"  ip netns exec {lab.srv_ns} ping {fip}    traffic from outside")
    say(f"  OVS_RUNDIR={lab.hosts['hv2'].rundir} ovs-ofctl -O OpenFlow13 dump-flows br-int")
    say("  flows/pipeline.md explains every table; ovsnat lab down --all removes the lab")
