"""`ovsnat lab up --bgp`: the reference lab on a routed fabric (docs/bgp.md, section 8).

    srv 198.51.100.10 -- out (outside router, FRR) --eBGP-- ta, tb (ToRs, FRR)
                                                            --eBGP-- hv1, hv2 (OVS, ovsnat, FRR)

Each hypervisor has a routed /31 to each ToR (its uplinks up0 and up1, the kernel's ports
bgp0 and bgp1) and announces by BGP the /32s it holds: its SNAT address and its live FIPs.
There is no shared external segment anywhere. The outside router peers with both ToRs, so
inbound traffic fails over too. The tenant fabric is the l2 lab's (`fabric` ports on one
L2 switch: VLANs, east-west, the PAT handoff). Every FRR's directory is in the lab's state,
so `ovsnat lab down` stops its daemons by their pids even after a crash.
"""

from __future__ import annotations

import os

from ovsnat.lab import fabric
from ovsnat.lab.bgpplan import (
    TOR_ASNS,
    host_asn,
    host_options,
    link_address,
    tor_address,
    tor_router_id,
)
from ovsnat.lab.frr import FrrNode, ReadsFrr, TorPeer, make_rundir, tor_conf
from ovsnat.lab.nodes import BRIDGE, EXTERNAL_CIDR, SERVER_GW, SERVER_IP, SERVER_MTU, Host
from ovsnat.lab.ovs import require_ovs
from ovsnat.lab.routedhv import frr_conf, routed_ports
from ovsnat.lab.sh import run, wait_for

OUT_ASN = 4200000100
# Each ToR's link to the outside router: (the ToR's address, the router's), a /31 above
# the hosts' links (ovsnat.lab.bgpplan)
UPSTREAM = {"ta": ("10.254.200.0", "10.254.200.1"), "tb": ("10.254.200.2", "10.254.200.3")}
SERVER_NET = "198.51.100.0/24"


def up(lab) -> None:
    """The ToRs, the outside router and the server behind it, each router with FRR."""
    require_ovs()
    os.makedirs(lab.dir, exist_ok=True)
    lab.started = True
    lab._save()
    out, srv = lab._add_ns("out"), lab._add_ns("srv")
    lab._veth(out, "eth0", srv, "eth0", mtu=SERVER_MTU)
    run(["ip", "-n", out, "addr", "add", f"{SERVER_GW}/24", "dev", "eth0"])
    run(["ip", "-n", srv, "addr", "add", f"{SERVER_IP}/24", "dev", "eth0"])
    run(["ip", "-n", srv, "route", "add", "default", "via", SERVER_GW])
    for tor, (tor_side, out_side) in UPSTREAM.items():
        ns = lab._add_ns(tor)
        lab._veth(ns, "out", out, tor)
        run(["ip", "-n", ns, "addr", "add", f"{tor_side}/31", "dev", "out"])
        run(["ip", "-n", out, "addr", "add", f"{out_side}/31", "dev", tor])
        run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=ns)
    run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=out)
    lab.frr_root = make_rundir(lab.id)
    start_frr(lab, "out", out_conf())


def start_frr(lab, role: str, conf: str) -> FrrNode:
    node = FrrNode(lab.ns_name(role), os.path.join(lab.frr_root, role))
    lab.frr[role] = node.rundir
    lab._save()
    node.start()
    node.configure(conf)
    return node


def frr_node(lab, role: str) -> FrrNode:
    return FrrNode(lab.ns_name(role), lab.frr[role])


def add_host(lab, name: str, n: int) -> tuple[Host, dict[str, str]]:
    """Hypervisor n: OVS with the routed uplinks, the kernel's ports and the fabric port,
    and its FRR. Returns the host and its options for its controller's file (bgpplan's)."""
    ns = lab._add_ns(name)
    host = Host(name, ns, os.path.join(lab.dir, name), fabric=True)
    lab.hosts[name] = host
    lab._save()
    host.ovs.start()
    host.ovs.add_bridge(BRIDGE)
    for k, tor in enumerate(("ta", "tb")):
        lab._veth(ns, f"up{k}", lab.ns_name(tor), name)
        run(["ip", "-n", lab.ns_name(tor), "addr", "add", f"{tor_address(n, tor)}/31",
             "dev", name])  # fmt: skip
    routed_ports(host.ovs, ns, n)
    fabric.connect(lab, host)
    start_frr(lab, name, frr_conf(n, name))
    options = host_options(n)
    return host, {k: v for k, v in options.items() if k != "snat_ip"}


def peer_tors(lab, hosts: int) -> None:
    """The ToRs' FRR, once the hosts exist: each host and the outside router as peers;
    then wait for every session."""
    for tor, asn in TOR_ASNS.items():
        peers = [TorPeer(link_address(n, tor), host_asn(n)) for n in range(1, hosts + 1)]
        upstream = TorPeer(UPSTREAM[tor][1], OUT_ASN)
        conf = tor_conf(tor, asn, tor_router_id(tor), peers, [EXTERNAL_CIDR], upstream=upstream)
        start_frr(lab, tor, conf)
    routers = Routers(lab)
    for tor in TOR_ASNS:
        wait_for(lambda t=tor: routers.established(t) == hosts + 1, 60,
                 what=f"{tor}'s sessions with the hosts and the outside router")  # fmt: skip


class Routers(ReadsFrr):
    """What the lab's routers say (frr.ReadsFrr), by role: ta, tb, out, hv1..."""

    def __init__(self, lab):
        self.nodes = {role: frr_node(lab, role) for role in lab.frr}

    def best_via(self, role: str, prefix: str) -> list[str]:
        """The next hops of the router's best path to prefix/32 (empty: none)."""
        best = self.best(role, prefix)
        return [h["ip"] for h in best["nexthops"]] if best else []


def out_conf() -> str:
    """The outside router: learns the FIPs and SNAT addresses from both ToRs (the MOVED
    community preferred, as on the ToRs; ECMP over both), sends them the server's network
    and the default that the ToRs pass on to the hosts."""
    tors = [(UPSTREAM[t][0], asn) for t, asn in TOR_ASNS.items()]
    lines = [
        "frr defaults traditional",
        "hostname out",
        f"ip prefix-list HOSTS seq 5 permit {EXTERNAL_CIDR} ge 32",
        f"ip prefix-list SERVERS seq 5 permit {SERVER_NET}",
        "ip prefix-list SERVERS seq 10 permit 0.0.0.0/0",
        "bgp community-list standard MOVED seq 5 permit 64999:200",
        "route-map FROM-TOR permit 10",
        " match ip address prefix-list HOSTS",
        " match community MOVED",
        " set local-preference 200",
        "exit",
        "route-map FROM-TOR permit 20",
        " match ip address prefix-list HOSTS",
        "exit",
        "route-map TO-TOR permit 10",
        " match ip address prefix-list SERVERS",
        "exit",
        "bfd",
        " profile tors",
        "  transmit-interval 200",
        "  receive-interval 200",
        " exit",
        "exit",
        f"router bgp {OUT_ASN}",
        " bgp router-id 10.255.0.100",
        " no bgp default ipv4-unicast",
        " bgp bestpath as-path multipath-relax",
        *[f" neighbor {a} remote-as {asn}" for a, asn in tors],
        *[f" neighbor {a} advertisement-interval 0" for a, _ in tors],
        *[f" neighbor {a} bfd profile tors" for a, _ in tors],
        " address-family ipv4 unicast",
        f"  network {SERVER_NET}",
        "  maximum-paths 2",
    ]
    for a, _ in tors:
        lines += [
            f"  neighbor {a} activate",
            f"  neighbor {a} route-map FROM-TOR in",
            f"  neighbor {a} route-map TO-TOR out",
            f"  neighbor {a} default-originate",
        ]
    return "\n".join([*lines, " exit-address-family", "exit", "end"]) + "\n"
