"""Native DHCP for this host's own VMs: the answer comes from what the host already knows.

A VM's DHCP request reaches the controller through a metered packet-in (ovsnat.compile.compiler);
this module decides the answer, ovsnat.packets.dhcp reads and writes the bytes (defensively:
the VM controls every one of them). RFC 2131: DISCOVER -> OFFER, REQUEST -> ACK, or NAK
when the client asks for another address or another server, INFORM -> ACK with options
only, RELEASE and DECLINE -> nothing. Stateless: the lease is always the VM's fixed IP, so a
renewal after a controller restart is answered like any other. Nothing of it leaves the
host: replies go out of the VM's own port only.

A port that floods requests is quarantined for a while (ovsnat.core.punts: a drop flow of its
own that expires by itself), so one VM cannot use up the shared meter and slow another
VM's lease.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

import netaddr

from ovsnat.model import HostConfig, VmPort, dhcp_keys, mac_str
from ovsnat.model.metadata import METADATA_IP
from ovsnat.model.networks import Network
from ovsnat.packets import dhcp as dhcp_wire
from ovsnat.packets.dhcp import CLIENT_PORT, SERVER_PORT, DhcpRequest

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
OPT_MASK, OPT_ROUTER, OPT_DNS, OPT_DOMAIN, OPT_MTU = 1, 3, 6, 15, 26
OPT_REQUESTED, OPT_LEASE, OPT_TYPE, OPT_SERVER, OPT_T1, OPT_T2 = 50, 51, 53, 54, 58, 59
OPT_ROUTES = 121
METADATA_ROUTE = f"{METADATA_IP}/32"
LOG_EVERY_S = 60
LOG = logging.getLogger("ovsnat")


@dataclass(frozen=True)
class Lease:
    """What the host hands out to one port."""

    mac: str
    ip: netaddr.IPAddress
    cidr: netaddr.IPNetwork
    gateway: netaddr.IPAddress
    dns: tuple[str, ...]
    domain: str
    lease_time: int
    mtu: int
    routes: tuple[tuple[str, str], ...] = ()  # (cidr, next hop) beside the default


def lease_for(cfg: HostConfig, port: VmPort, net: Network) -> Lease:
    """The host's options, with the port's own (Neutron's subnet and network) on top."""
    own, host = port.dhcp, cfg.dhcp
    mtu = dhcp_keys.effective_mtu(host, own, bool(net.vlan and cfg.fabric_port))
    routes = own.routes if own else ()
    return Lease(
        mac_str(port.mac),
        port.fixed_ip,
        net.cidr,
        net.gateway,
        own.dns if own and own.dns else host.dns,
        own.domain if own and own.domain else host.domain,
        host.lease_time,
        mtu,
        _with_metadata(cfg, routes, net.gateway),
    )


def _with_metadata(cfg: HostConfig, routes: tuple, gateway) -> tuple:
    """With metadata on, the route to 169.254.169.254 through the gateway (option 121, as
    Neutron's DHCP gives it): the host's flows take the request whatever MAC it is sent to,
    but an image with a link-local route on its NIC, or a subnet route sending
    169.254.0.0/16 elsewhere, would not send it at all. A subnet's own route for it wins."""
    if not cfg.metadata_port or any(c == METADATA_ROUTE for c, _ in routes):
        return routes
    return (*routes, (METADATA_ROUTE, str(gateway)))


def is_request(frame: bytes) -> bool:
    """An IPv4 UDP datagram from the DHCP client port to the server port (whatever else it
    holds: dhcp_wire.parse_request says whether it is one ovsnat can answer)."""
    return dhcp_wire.udp_ports(frame) == (CLIENT_PORT, SERVER_PORT)


@dataclass
class Verdict:
    kind: str  # offer ack nak inform release decline ignored
    reply: bytes | None = None
    why: str = ""


def answer(msg: DhcpRequest, lease: Lease, router_mac: str) -> Verdict:
    """The answer to one client message for the port that sent it (the caller checked the
    port); a message for another MAC gets nothing."""
    if msg.chaddr != lease.mac:
        return Verdict("ignored", why=f"asks for MAC {msg.chaddr}, not the port's")
    kind = msg.kind
    if kind == DISCOVER:
        return Verdict("offer", _reply(msg, lease, router_mac, OFFER))
    if kind == REQUEST:
        asked = _ip(msg.requested) or netaddr.IPAddress(int.from_bytes(msg.ciaddr, "big"))
        server = _ip(msg.server)
        if asked != lease.ip or (server is not None and server != lease.gateway):
            return Verdict(
                "nak",
                _reply(msg, lease, router_mac, NAK),
                why=f"asked for {asked}" + (f" from {server}" if server else ""),
            )
        return Verdict("ack", _reply(msg, lease, router_mac, ACK))
    if kind == INFORM:
        return Verdict("inform", _reply(msg, lease, router_mac, ACK, inform=True))
    if kind in (RELEASE, DECLINE):
        return Verdict("release" if kind == RELEASE else "decline")
    return Verdict("ignored", why=f"message type {kind}")


def _ip(raw: bytes | None) -> netaddr.IPAddress | None:
    if not raw or len(raw) != 4 or raw == bytes(4):
        return None
    return netaddr.IPAddress(int.from_bytes(raw, "big"))


def _options(lease: Lease, kind: int, inform: bool) -> list[tuple[int, bytes]]:
    out = [(OPT_TYPE, bytes([kind])), (OPT_SERVER, lease.gateway.packed)]
    if kind == NAK:
        return out
    if not inform:
        t = lease.lease_time
        out += [
            (OPT_LEASE, struct.pack("!I", t)),
            (OPT_T1, struct.pack("!I", t // 2)),
            (OPT_T2, struct.pack("!I", t * 7 // 8)),
        ]
    out += [
        (OPT_MASK, lease.cidr.netmask.packed),
        (OPT_ROUTER, lease.gateway.packed),
        (OPT_MTU, struct.pack("!H", lease.mtu)),
    ]
    if lease.dns:
        out.append((OPT_DNS, b"".join(netaddr.IPAddress(d).packed for d in lease.dns)))
    if lease.domain:
        out.append((OPT_DOMAIN, lease.domain.encode()[:255]))
    if lease.routes:  # RFC 3442: with classless routes, the default route goes too
        default = (
            []
            if any(c == "0.0.0.0/0" for c, _ in lease.routes)
            else [("0.0.0.0/0", str(lease.gateway))]
        )
        out.append((OPT_ROUTES, _routes([*default, *lease.routes])))
    return out


def _routes(routes: list) -> bytes:
    """Option 121's value: whole routes while they fit its 255 bytes (a route cut in the
    middle would make a client drop them all, option 3's default with them). The port's
    keys allow no more than fit (dhcp_keys.MAX_ROUTES): this only guards that bound."""
    value = b""
    for cidr, hop in routes:
        route = _route(cidr, hop)
        if len(value) + len(route) > 255:
            break
        value += route
    return value


def _route(cidr: str, hop: str) -> bytes:
    net = netaddr.IPNetwork(cidr)
    width = (net.prefixlen + 7) // 8
    return bytes([net.prefixlen]) + net.network.packed[:width] + netaddr.IPAddress(hop).packed


def _reply(
    msg: DhcpRequest, lease: Lease, router_mac: str, kind: int, inform: bool = False
) -> bytes:
    """From the gateway to the client's MAC: to the address it will have (or has, for an
    INFORM or a renewal), or to everyone when it asked for a broadcast or gets a NAK."""
    broadcast = kind == NAK or msg.broadcast
    yiaddr = bytes(4) if inform or kind == NAK else lease.ip.packed
    to = b"\xff" * 4 if broadcast else (msg.ciaddr if msg.ciaddr != bytes(4) else lease.ip.packed)
    eth_dst = b"\xff" * 6 if broadcast else netaddr.EUI(lease.mac).packed
    return dhcp_wire.build_reply(
        msg,
        yiaddr=yiaddr,
        options=_options(lease, kind, inform),
        eth_src=netaddr.EUI(router_mac).packed,
        eth_dst=eth_dst,
        ip_src=lease.gateway.packed,
        ip_dst=to,
    )


class DhcpService:
    """Answers the DHCP requests of one host's VMs, and remembers what it handed out. Each
    port's share of requests is metered before they get here (ovsnat.core.punts: a port over it
    is quarantined at the switch); what arrives is read defensively (ovsnat.packets.dhcp)."""

    def __init__(self, stats, session):
        self.stats, self.session = stats, session
        self.leases: dict[str, dict] = {}  # port name -> what it got
        self.logged: dict[tuple, float] = {}  # (ofport, what) -> when

    def packet_in(self, host, in_port: int, frame: bytes, now: float) -> list:
        name = host.by_ofport.get(in_port)
        port = host.valid.get(name) if name is not None and name not in host.lost else None
        if port is None or (port.dhcp is not None and not port.dhcp.enabled):
            self.stats.inc("dhcp_refused")
            self._log(
                in_port,
                "unserved",
                now,
                "DHCP request from OpenFlow port %d (%s), which ovsnat does not serve: no answer",
                in_port,
                name or "unknown",
            )
            return []
        msg = dhcp_wire.parse_request(frame)
        if isinstance(msg, dhcp_wire.Refused):
            self.stats.drop("dhcp_" + msg.reason)
            self._log(
                in_port,
                msg.reason,
                now,
                "port %s sent a malformed DHCP request (%s); dropped",
                name,
                msg.reason.replace("_", " "),
            )
            return []
        lease = lease_for(host.cfg, port, host.net(port))
        verdict = answer(msg, lease, mac_str(host.cfg.router_mac))
        return self._act(host, name, in_port, lease, verdict, now)

    def _act(
        self, host, name: str, ofport: int, lease: Lease, verdict: Verdict, now: float
    ) -> list:
        counter = {
            "offer": "dhcp_offers",
            "ack": "dhcp_acks",
            "inform": "dhcp_acks",
            "nak": "dhcp_naks",
            "release": "dhcp_releases",
            "decline": "dhcp_releases",
        }.get(verdict.kind, "dhcp_refused")
        self.stats.inc(counter)
        if verdict.kind == "ack":
            if len(self.leases) > 2 * len(host.valid) + 64:  # ports that left
                self.prune(host)
            got = self.leases.get(name, {})
            self.leases[name] = {
                "ip": str(lease.ip),
                "mac": lease.mac,
                "acks": got.get("acks", 0) + 1,
                "at": now,
                "expires": now + lease.lease_time,
            }
        elif verdict.kind == "release":
            self.leases.pop(name, None)
        elif verdict.kind == "decline":
            self._log(
                ofport,
                "decline",
                now,
                "port %s declined %s: something else on its network answers for that address",
                name,
                lease.ip,
            )
        elif verdict.kind in ("nak", "ignored"):
            self._log(
                ofport,
                verdict.kind,
                now,
                "port %s: DHCP %s: %s",
                name,
                "NAK" if verdict.kind == "nak" else "no answer",
                verdict.why,
                level=logging.INFO,
            )
        if verdict.reply is None:
            return []
        return [self.session.packet_out(ofport, verdict.reply, f"DHCP {verdict.kind} to {name}")]

    def _log(
        self, ofport: int, what: str, now: float, fmt: str, *args, level: int = logging.WARNING
    ) -> None:
        """At most one line per port and kind a minute: a flood must not flood the log (and
        the map of what was logged stays bounded, whatever the ports send)."""
        if now - self.logged.get((ofport, what), -LOG_EVERY_S) < LOG_EVERY_S:
            return
        if len(self.logged) >= 1024:
            self.logged = {k: t for k, t in self.logged.items() if now - t < LOG_EVERY_S}
            if len(self.logged) >= 1024:
                return
        self.logged[(ofport, what)] = now
        LOG.log(level, "ovsnat: " + fmt, *args)

    def prune(self, host) -> None:
        """Forget the leases of ports that are gone (the map stays within twice the ports
        the host serves)."""
        self.leases = {n: got for n, got in self.leases.items() if n in host.valid}

    def status(self, host, now: float) -> dict:
        """Leases handed out, per VM port still here."""
        return {
            name: {**got, "remaining": max(0, int(got["expires"] - now))}
            for name, got in sorted(self.leases.items())
            if host is not None and name in host.valid
        }
