"""A routed fabric of FRR nodes in namespaces: N hypervisors, each with a /31 link to each of
two ToRs (docs/bgp.md, section 8), no shared L2 segment. Each host's FRR is configured by
`ovsnat bgp render` from its own bgp_* options, each ToR by `frr.tor_conf`. The control
plane only, without OVS: many hosts cheaply (ovsnat.lab.routedhost has hosts with their
datapath and controller). The addresses and ASNs are ovsnat.lab.bgpplan's.

Used by tests/test_bgp_frr_lab.py and bench/bgp.py; everything it made goes in `down()`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field

import netaddr

from ovsnat.compile.frr_conf import render
from ovsnat.core.effects import Routes
from ovsnat.lab.bgpplan import TOR_ASNS, host_asn, tor_address, tor_router_id
from ovsnat.lab.bgpplan import link_address as host_side
from ovsnat.lab.frr import FrrNode, ReadsFrr, TorPeer, make_rundir, tor_conf
from ovsnat.lab.sh import run, wait_for
from ovsnat.model import bgp
from ovsnat.runtime.route_writer import RouteWriter

EXTERNAL = netaddr.IPNetwork("203.0.113.0/24")
TORS = {t: (asn, 0 if t == "ta" else 2) for t, asn in TOR_ASNS.items()}  # ASN, its address
HOST_ASN = host_asn(0)  # + the host's number


def host_settings(n: int, external=EXTERNAL, **options: str) -> bgp.BgpSettings:
    """Host n's bgp_* options: links 10.254.n.1/31 (to ta) and 10.254.n.3/31 (to tb)."""
    return bgp.parse_bgp(
        {
            "external_mode": "bgp",
            "bgp_asn": str(host_asn(n)),
            "bgp_uplinks": "up0,up1",
            "bgp_kernel_ports": "bgp0,bgp1",
            "bgp_links": f"{host_side(n, 'ta')}/31,{host_side(n, 'tb')}/31",
            **options,
        },
        netaddr.IPNetwork(external),
    )


def link_address(host: int, tor: str, side: str) -> str:
    """The host's ('host') or the ToR's ('tor') address on their link."""
    return host_side(host, tor) if side == "host" else tor_address(host, tor)


@dataclass
class BgpFabric(ReadsFrr):
    hosts: int = 2
    external: str = str(EXTERNAL)  # what the hosts announce /32s of (bgp_announce)
    lab_id: str = field(default_factory=lambda: secrets.token_hex(3))
    nodes: dict[str, FrrNode] = field(default_factory=dict)
    rundir: str = ""

    @property
    def names(self) -> dict[str, str]:
        roles = [*(f"h{n}" for n in range(1, self.hosts + 1)), *TORS]
        return {role: f"ovsnat-{self.lab_id}-{role}" for role in roles}

    def up(self) -> BgpFabric:
        self.rundir = make_rundir(self.lab_id)
        try:
            self._links()
            for role, ns in self.names.items():
                self.nodes[role] = FrrNode(ns, os.path.join(self.rundir, role))
                self.nodes[role].start()
            for n in range(1, self.hosts + 1):
                self.nodes[f"h{n}"].configure(render(host_settings(n, self.external), f"h{n}"))
            for tor, (asn, _) in TORS.items():
                peers = [
                    TorPeer(link_address(n, tor, "host"), host_asn(n))
                    for n in range(1, self.hosts + 1)
                ]
                conf = tor_conf(tor, asn, tor_router_id(tor), peers, [self.external])
                self.nodes[tor].configure(conf)
            for tor in TORS:
                wait_for(
                    lambda t=tor: self.established(t) == self.hosts,
                    30,
                    what=f"{tor}'s sessions with every host",
                )
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        for node in self.nodes.values():
            node.stop()
        for ns in self.names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        if self.rundir:
            shutil.rmtree(self.rundir, ignore_errors=True)

    def write(self, host: str, add=(), delete=()) -> None:
        """Routes written as ovsnat writes them: (address, table) pairs, one batch."""
        key = lambda pair: (netaddr.IPNetwork(f"{pair[0]}/32"), pair[1])  # noqa: E731
        effect = Routes(tuple(map(key, add)), tuple(map(key, delete)))
        done = RouteWriter(lambda _: None, self.names[host]).apply(effect)
        if done.failed:
            raise RuntimeError(f"{host}: {done.error}")

    def received(self, node: str, peer: str) -> dict[str, list]:
        answer = self.nodes[node].show(f"show bgp ipv4 unicast neighbors {peer} routes json")
        return answer.get("routes", {})

    def _links(self) -> None:
        for ns in self.names.values():
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        for n in range(1, self.hosts + 1):
            host = self.names[f"h{n}"]
            for k, tor in enumerate(TORS):
                dev, peer = f"bgp{k}", f"h{n}"
                run(["ip", "link", "add", dev, "netns", host, "type", "veth", "peer",
                     "name", peer, "netns", self.names[tor]])  # fmt: skip
                run(["ip", "-n", host, "addr", "add", f"{link_address(n, tor, 'host')}/31",
                     "dev", dev])  # fmt: skip
                run(["ip", "-n", self.names[tor], "addr", "add",
                     f"{link_address(n, tor, 'tor')}/31", "dev", peer])  # fmt: skip
                run(["ip", "-n", host, "link", "set", dev, "up"])
                run(["ip", "-n", self.names[tor], "link", "set", peer, "up"])
