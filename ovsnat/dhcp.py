"""Native DHCP for this host's own VMs: the answer comes from what the host already knows.

A VM's DHCP request reaches the controller through a metered packet-in (ovsnat.compiler);
this module decides and builds the answer with the framework's maintained packet library
(ryu.lib.packet / os_ken.lib.packet). RFC 2131: DISCOVER -> OFFER, REQUEST -> ACK, or NAK
when the client asks for another address or another server, INFORM -> ACK with options
only, RELEASE and DECLINE -> nothing. Stateless: the lease is always the VM's fixed IP, so a
renewal after a controller restart is answered like any other. Nothing of it leaves the
host: replies go out of the VM's own port only.

A port that floods requests is quarantined for a while (a drop flow of its own that
expires by itself), so one VM cannot use up the shared meter and slow another VM's lease.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

import netaddr

from ovsnat import compiler, dhcp_keys
from ovsnat import framework as fw
from ovsnat.model import HostConfig, VmPort, mac_str
from ovsnat.networks import Network

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
CLIENT_PORT, SERVER_PORT = 68, 67
OPT_MASK, OPT_ROUTER, OPT_DNS, OPT_DOMAIN, OPT_MTU = 1, 3, 6, 15, 26
OPT_REQUESTED, OPT_LEASE, OPT_TYPE, OPT_SERVER, OPT_T1, OPT_T2 = 50, 51, 53, 54, 58, 59
OPT_ROUTES = 121
BUCKET, REFILL_PER_S, QUARANTINE_S = 10, 2.0, 10   # per port: burst, rate, then quiet
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
    routes: tuple[tuple[str, str], ...] = ()       # (cidr, next hop) beside the default


def lease_for(cfg: HostConfig, port: VmPort, net: Network) -> Lease:
    """The host's options, with the port's own (Neutron's subnet and network) on top."""
    own, host = port.dhcp, cfg.dhcp
    mtu = dhcp_keys.effective_mtu(host, own, bool(net.vlan and cfg.fabric_port))
    return Lease(mac_str(port.mac), port.fixed_ip, net.cidr, net.gateway,
                 own.dns if own and own.dns else host.dns,
                 own.domain if own and own.domain else host.domain,
                 host.lease_time, mtu, own.routes if own else ())


def is_request(frame: bytes) -> bool:
    """An IPv4 UDP datagram from the DHCP client port to the server port."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return False
    ihl = (frame[14] & 0x0F) * 4
    return struct.unpack_from("!HH", frame, 14 + ihl) == (CLIENT_PORT, SERVER_PORT)


@dataclass
class Verdict:
    kind: str                   # offer ack nak inform release decline ignored
    reply: bytes | None = None
    why: str = ""


def answer(frame: bytes, lease: Lease, router_mac: str) -> Verdict:
    """The answer to one client message for the port that sent it (the caller checked the
    port); a message for another MAC gets nothing."""
    pkt = fw.packet.Packet(frame)
    msg = pkt.get_protocol(fw.dhcp.dhcp)
    if msg is None or msg.op != 1:
        return Verdict("ignored", why="not a DHCP request")
    if msg.chaddr.lower() != lease.mac:
        return Verdict("ignored", why=f"asks for MAC {msg.chaddr}, not the port's")
    opts = {o.tag: o.value for o in (msg.options.option_list if msg.options else [])}
    kind = opts.get(OPT_TYPE, b"\x00")[0]
    if kind == DISCOVER:
        return Verdict("offer", _reply(msg, lease, router_mac, OFFER))
    if kind == REQUEST:
        asked = _ip(opts.get(OPT_REQUESTED)) or netaddr.IPAddress(msg.ciaddr)
        server = _ip(opts.get(OPT_SERVER))
        if asked != lease.ip or (server is not None and server != lease.gateway):
            return Verdict("nak", _reply(msg, lease, router_mac, NAK),
                           why=f"asked for {asked}" + (f" from {server}" if server else ""))
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


def _options(lease: Lease, kind: int, inform: bool) -> list:
    opt, ip4 = fw.dhcp.option, lambda a: netaddr.IPAddress(a).packed
    out = [opt(OPT_TYPE, bytes([kind])), opt(OPT_SERVER, lease.gateway.packed)]
    if kind == NAK:
        return out
    if not inform:
        t = lease.lease_time
        out += [opt(OPT_LEASE, struct.pack("!I", t)), opt(OPT_T1, struct.pack("!I", t // 2)),
                opt(OPT_T2, struct.pack("!I", t * 7 // 8))]
    out += [opt(OPT_MASK, lease.cidr.netmask.packed), opt(OPT_ROUTER, lease.gateway.packed),
            opt(OPT_MTU, struct.pack("!H", lease.mtu))]
    if lease.dns:
        out.append(opt(OPT_DNS, b"".join(ip4(d) for d in lease.dns)))
    if lease.domain:
        out.append(opt(OPT_DOMAIN, lease.domain.encode()))
    if lease.routes:          # RFC 3442: with classless routes, the default route goes too
        default = [] if any(c == "0.0.0.0/0" for c, _ in lease.routes) else \
            [("0.0.0.0/0", str(lease.gateway))]
        routes = [*default, *lease.routes]
        out.append(opt(OPT_ROUTES, b"".join(_route(c, hop) for c, hop in routes)))
    return out


def _route(cidr: str, hop: str) -> bytes:
    net = netaddr.IPNetwork(cidr)
    width = (net.prefixlen + 7) // 8
    return bytes([net.prefixlen]) + net.network.packed[:width] + netaddr.IPAddress(hop).packed


def _reply(msg, lease: Lease, router_mac: str, kind: int, inform: bool = False) -> bytes:
    """From the gateway to the client's MAC: to the address it will have (or has, for an
    INFORM or a renewal), or to everyone when it asked for a broadcast or gets a NAK."""
    broadcast = kind == NAK or bool(msg.flags & 0x8000)
    yiaddr = "0.0.0.0" if inform or kind == NAK else str(lease.ip)
    to = "255.255.255.255" if broadcast else (msg.ciaddr if msg.ciaddr != "0.0.0.0"
                                              else str(lease.ip))
    body = fw.dhcp.dhcp(op=2, chaddr=lease.mac, xid=msg.xid, flags=msg.flags, hlen=6,
                        ciaddr=msg.ciaddr, yiaddr=yiaddr, siaddr="0.0.0.0",
                        giaddr=msg.giaddr,
                        options=fw.dhcp.options(option_list=_options(lease, kind, inform)))
    pkt = fw.packet.Packet()
    pkt.add_protocol(fw.ethernet.ethernet(dst="ff:ff:ff:ff:ff:ff" if broadcast else lease.mac,
                                          src=router_mac, ethertype=0x0800))
    pkt.add_protocol(fw.ipv4.ipv4(src=str(lease.gateway), dst=to, proto=17, ttl=64))
    pkt.add_protocol(fw.udp.udp(src_port=SERVER_PORT, dst_port=CLIENT_PORT))
    pkt.add_protocol(body)
    pkt.serialize()
    return bytes(pkt.data)


class DhcpService:
    """Answers the DHCP requests of one host's VMs, and remembers what it handed out.

    A port may send BUCKET requests at once and REFILL_PER_S after that (a client needs two
    per lease, and retries every few seconds); a port over its share is quarantined at the
    switch for QUARANTINE_S, so its flood never reaches the shared meter."""

    def __init__(self, stats, session):
        self.stats, self.session = stats, session
        self.tokens: dict[int, tuple[float, float]] = {}    # ofport -> (tokens, at)
        self.quarantined: dict[int, float] = {}              # ofport -> until
        self.leases: dict[str, dict] = {}                    # port name -> what it got
        self.logged: dict[tuple, float] = {}                 # (ofport, what) -> when

    def packet_in(self, host, in_port: int, frame: bytes, now: float) -> list:
        name = host.by_ofport.get(in_port)
        port = host.valid.get(name) if name is not None and name not in host.lost else None
        if port is None or (port.dhcp is not None and not port.dhcp.enabled):
            self.stats.inc("dhcp_refused")
            self._log(in_port, "unserved", now, "DHCP request from OpenFlow port %d (%s), "
                      "which ovsnat does not serve: no answer", in_port, name or "unknown")
            return []
        admitted = self._admit(in_port, now)
        if admitted != "yes":
            if admitted == "dropped":
                return []              # already quarantined: the drop flow is on its way
            self.stats.inc("dhcp_quarantines")
            LOG.warning("ovsnat: port %s floods DHCP requests; dropping them at the switch "
                        "for %d s", name, QUARANTINE_S)
            return [self.session.temporary_flow(compiler.dhcp_quarantine(in_port),
                                                QUARANTINE_S, f"DHCP quarantine of {name}")]
        lease = lease_for(host.cfg, port, host.net(port))
        verdict = answer(frame, lease, mac_str(host.cfg.router_mac))
        return self._act(name, in_port, lease, verdict, now)

    def _act(self, name: str, ofport: int, lease: Lease, verdict: Verdict,
             now: float) -> list:
        counter = {"offer": "dhcp_offers", "ack": "dhcp_acks", "inform": "dhcp_acks",
                   "nak": "dhcp_naks", "release": "dhcp_releases",
                   "decline": "dhcp_releases"}.get(verdict.kind, "dhcp_refused")
        self.stats.inc(counter)
        if verdict.kind == "ack":
            got = self.leases.get(name, {})
            self.leases[name] = {"ip": str(lease.ip), "mac": lease.mac,
                                 "acks": got.get("acks", 0) + 1, "at": now,
                                 "expires": now + lease.lease_time}
        elif verdict.kind == "release":
            self.leases.pop(name, None)
        elif verdict.kind == "decline":
            LOG.warning("ovsnat: port %s declined %s: something else on its network "
                        "answers for that address", name, lease.ip)
        elif verdict.kind in ("nak", "ignored"):
            LOG.info("ovsnat: port %s: DHCP %s: %s", name,
                     "NAK" if verdict.kind == "nak" else "no answer", verdict.why)
        if verdict.reply is None:
            return []
        return [self.session.packet_out(ofport, verdict.reply,
                                        f"DHCP {verdict.kind} to {name}")]

    def _admit(self, ofport: int, now: float) -> str:
        """Take one of the port's tokens: "yes"; "quarantine" when it has none left (from
        now on it is quarantined); "dropped" while it is."""
        if self.quarantined.get(ofport, 0) > now:
            return "dropped"
        n, at = self.tokens.get(ofport, (BUCKET, now))
        n = min(BUCKET, n + (now - at) * REFILL_PER_S)
        if n < 1:
            self.quarantined[ofport] = now + QUARANTINE_S
            self.tokens.pop(ofport, None)
            return "quarantine"
        self.tokens[ofport] = (n - 1, now)
        if len(self.tokens) > 1024:          # forget ports whose bucket is full again
            full = now - BUCKET / REFILL_PER_S
            self.tokens = {p: v for p, v in self.tokens.items() if v[1] > full}
            self.quarantined = {p: t for p, t in self.quarantined.items() if t > now}
        return "yes"

    def _log(self, ofport: int, what: str, now: float, fmt: str, *args) -> None:
        """At most one line per port and kind a minute: a flood must not flood the log."""
        if now - self.logged.get((ofport, what), -LOG_EVERY_S) >= LOG_EVERY_S:
            self.logged[(ofport, what)] = now
            LOG.warning("ovsnat: " + fmt, *args)

    def status(self, host, now: float) -> dict:
        """Leases handed out, per VM port still here."""
        return {name: {**got, "remaining": max(0, int(got["expires"] - now))}
                for name, got in sorted(self.leases.items())
                if host is not None and name in host.valid}
