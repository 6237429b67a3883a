"""The narrated demo of `ovsnat lab demo --bgp`: the same NAT as the l2 lab's, on a routed
fabric. What each router learned is read from FRR's own JSON, and a live migration shows the
FIP's route following its VM (docs/bgp.md). The lab stays up afterwards for exploring."""

from __future__ import annotations

import time

from ovsnat.lab import routedlab
from ovsnat.lab.bgpplan import host_asn, link_address, snat_address
from ovsnat.lab.demo import say, step, tenant_networks
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import BRIDGE, SERVER_IP, Lab
from ovsnat.lab.traffic import background_tcp, ping, tcp_connect

ROUTERS = ("ta", "tb", "out")


def holder(lab: Lab, router: str, prefix: str) -> str:
    """Which host (or ToR) a router's best path to prefix/32 goes to, by name."""
    hosts = range(1, len(lab.hosts) + 1)
    names = {link_address(n, t): f"hv{n}" for n in hosts for t in ("ta", "tb")}
    names |= {tor_side: tor for tor, (tor_side, _) in routedlab.UPSTREAM.items()}
    hops = routedlab.Routers(lab).best_via(router, prefix)
    return "+".join(names.get(h, h) for h in hops) or "none"


def run_demo(lab: Lab) -> None:
    vms = lab.vms
    fips = {
        n: v.external_ids["ovsnat-fip"] for n, v in vms.items() if "ovsnat-fip" in v.external_ids
    }
    snats = {f"hv{n}": snat_address(n) for n in range(1, len(lab.hosts) + 1)}
    step("1. The lab: routed uplinks, no shared external segment")
    say("  Two hypervisors, each with OVS, ovsnat's controller and FRR in its namespace, a")
    say("  routed /31 to each of two ToRs (FRR), which peer with an outside router (FRR) in")
    say(f"  front of the server {SERVER_IP}. Each host announces by BGP the /32s it holds.")
    for fip in sorted(fips.values()):
        wait_for(lambda f=fip: all(holder(lab, r, f) != "none" for r in ROUTERS), 30,
                 what=f"the routers learning {fip}")  # fmt: skip
    step("2. What the fabric learned (each router's best path, from FRR's JSON)")
    for what, prefix in [*((f"{n}'s FIP", f) for n, f in sorted(fips.items())),
                         *((f"{h}'s SNAT", s) for h, s in sorted(snats.items()))]:  # fmt: skip
        via = ", ".join(f"{r} -> {holder(lab, r, prefix)}" for r in ROUTERS)
        say(f"  {prefix} ({what}): {via}")
    step("3. NAT through the fabric")
    for name, fip in sorted(fips.items()):
        got = ping(lab.srv_ns, fip, count=2, wait=1)
        say(f"  server -> {fip} ({name}'s FIP): {got.received} of 2 answered")
    for name in ("vm2", "vm4"):
        reply = tcp_connect(lab, vms[name].ns, SERVER_IP, 8080)
        say(f"  {name} ({vms[name].host}, PAT) -> server: the server sees {reply.peer_ip}")
    tenant_networks(lab)
    migrate(lab, vms["vm1"], fips["vm1"])
    step("5. Explore")
    say("  ovsnat lab status                        every router's vtysh command")
    say(f"  ip netns exec {lab.srv_ns} ping {fips['vm1']}")
    say(f"  vtysh --vty_socket {lab.frr['ta']} -c 'show bgp ipv4 unicast {fips['vm1']}/32'")
    say("  docs/bgp.md explains the mode; ovsnat lab down --all removes the lab")


def migrate(lab: Lab, vm, fip: str) -> None:
    step(f"4. Live-migrate {vm.name} (FIP {fip}) from hv1 to hv2 under an inbound session")
    say("  hv2 sees hv1's route to the FIP come back from the ToRs, so it waits for the VM's")
    say("  first frame, then announces the FIP with the MOVED community (local preference")
    say("  200 on the ToRs and the outside router).")
    session = background_tcp(lab, lab.srv_ns, fip, 7000, hold=5)
    time.sleep(1.0)
    start = time.monotonic()
    lab.move_vm(vm, "hv2", overlap=True)
    moved = {}
    while len(moved) < len(ROUTERS) and time.monotonic() - start < 10:
        for r in ROUTERS:
            there = _out_moved(lab, fip) if r == "out" else holder(lab, r, fip) == "hv2"
            if r not in moved and there:
                moved[r] = time.monotonic() - start
    lab.hosts["hv1"].vsctl("--if-exists", "del-port", BRIDGE, vm.tap)  # as Nova, once moved
    for r in ROUTERS:
        took = f"{moved[r]:.2f} s" if r in moved else "not within 10 s"
        say(f"  {r}: best path now {holder(lab, r, fip)} ({took} after the move began)")
    say(f"  the inbound TCP session: {session.result().strip().splitlines()[-1]}")


def _out_moved(lab: Lab, fip: str) -> bool:
    """The outside router's best path (through a ToR) ends at hv2: its AS path says so."""
    best = routedlab.Routers(lab).best("out", fip)
    return bool(best) and best.get("aspath", {}).get("string", "").endswith(str(host_asn(2)))
