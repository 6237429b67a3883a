"""Helpers of test_security_groups_lab.py's cases: servers booted with ports the tenant
made, rules, and timings of reachability from Neutron's answer (its own module: the test
module stays under 400 lines)."""

from __future__ import annotations

import time

from ovsnat.lab.openstack import servers
from ovsnat.lab.sh import wait_for
from ovsnat.lab.traffic import captured, tcp_connect
from tests.openstack_lab import unique, wait_key
from tests.secgroup_keys import new_group, new_port

PORT = servers.GUEST_PORT  # every guest's TCP echo server


def boot_with(cl, host: str, **port_kw) -> servers.Server:
    """A server Nova boots on `host` with a port the tenant made with `port_kw`, once its
    guest has its DHCP lease (ovsnat's DHCP): its traffic is what is judged."""
    port = new_port(cl, "port", **port_kw)
    return servers.boot(cl, unique("vm"), host, port=port.id, lease=True)


def allow(cl, group, direction: str = "ingress", **kw):
    return cl.tenant.network.create_security_group_rule(
        security_group_id=group.id, direction=direction, ether_type="IPv4", **kw
    )


def open_group(cl, name: str, port: int = PORT, **kw):
    """A group letting TCP `port` in from anywhere (plus the templates' egress)."""
    group = new_group(cl, name)
    allow(cl, group, protocol="tcp", port_range_min=port, port_range_max=port, **kw)
    return group


def reaches(cl, ns: str, host: str, port: int = PORT, timeout: float = 1.0) -> bool:
    return tcp_connect(cl.lab, ns, host, port, timeout=timeout).ok


def reached_within(
    cl, ns: str, host: str, since: float, port: int = PORT, timeout: float = 5.0
) -> float:
    """Seconds from `since` until a TCP connection from ns to host:port succeeds."""
    wait_for(
        lambda: reaches(cl, ns, host, port, timeout=0.3),
        timeout,
        interval=0.02,
        what=f"{host}:{port} from {ns}",
    )
    return time.time() - since


def blocked_within(
    cl, ns: str, host: str, since: float, port: int = PORT, timeout: float = 5.0
) -> float:
    wait_for(
        lambda: not reaches(cl, ns, host, port, timeout=0.3),
        timeout,
        interval=0.02,
        what=f"{host}:{port} from {ns} refused",
    )
    return time.time() - since


def ready(cl, inst, group_ids: list[str]) -> None:
    """The instance's groups are on its row (the agent's part), and its flows in."""
    wait_key(cl, inst, "ovsnat-sg", ",".join(sorted(group_ids)))
    wait_key(cl, inst, "ovsnat-installed", "true")


def ends_of_sessions(pcap: str) -> list[str]:
    """Every RST and FIN in a capture, with its wall-clock time, addresses and flags: who
    ended a session that should have held."""
    from scapy.layers.inet import IP, TCP

    return [
        f"{float(p.time):.3f} {p[IP].src}:{p[TCP].sport}>{p[IP].dst}:{p[TCP].dport} {p[TCP].flags}"
        for p in captured(pcap, lambda p: IP in p and TCP in p and p[TCP].flags & 0x05)
    ]


def last_inbound(pcap: str, src: str) -> list[float]:
    """Receive times of the TCP segments from `src` in a capture on a guest's eth0."""
    from scapy.layers.inet import IP, TCP

    return [
        float(p.time) for p in captured(pcap, lambda p: IP in p and TCP in p and p[IP].src == src)
    ]
