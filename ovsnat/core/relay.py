"""What the controller answers for the routed paths: ICMP time exceeded where a TTL runs out
at this hop, and ICMP errors that went through a FIP (building and rewriting them is
ovsnat.packets.icmp's).

Time exceeded: a router answers a packet whose TTL runs out on it, so a traceroute shows the
hop. From a VM (egress), the answer comes from the VM's network's gateway; from outside
(ingress), from the FIP or SNAT IP the packet was sent to, as from the router it is.

A stateless FIP leaves the header an ICMP error quotes untranslated, so the switch hands
errors that went through a FIP to the controller (metered), after it translated the outer
header: an inbound error already has the VM's fixed IP as destination but still quotes the
FIP as source; an outbound one has the FIP as source but quotes the fixed IP. The controller
rewrites the quoted address and sends the error on: to the VM's port, to the gateway, or,
when it is between two FIPs of this host, straight to the other VM.
"""

from __future__ import annotations

import netaddr

from ovsnat.compile.pipeline import DELIVER, EGRESS, EGRESS_OUT, INGRESS
from ovsnat.core.state import HostState
from ovsnat.packets import icmp, vlan

TABLES = (EGRESS, INGRESS, EGRESS_OUT, DELIVER)


def answer(host: HostState, table: int, in_port: int, frame: bytes):
    """(output port, frame, counter name) for a frame punted by a routed table, or None."""
    if table in (EGRESS, INGRESS) and len(frame) > 22 and frame[22] <= 1:
        out = time_exceeded(host, table, in_port, frame)
        return out + ("ttl_expired",) if out else None
    if table == INGRESS:
        out = first_fragment(host, frame)
        return out + ("icmp_errors",) if out else None
    out = icmp_error(host, in_port, frame)
    return out + ("icmp_errors",) if out else None


def first_fragment(host: HostState, frame: bytes):
    """The first fragment of an ICMP error to a FIP: sent on alone, as a whole (truncated)
    error, translated both ways; the VM needs the quoted header, not all of the quote."""
    if len(frame) < 34:
        return None
    whole = bytearray(frame)
    whole[20] &= 0xDF  # clear More Fragments: one piece now
    port = _live_port(host, _ip(frame[30:34]))
    if port is None:
        return None
    out = icmp.translate_error(
        bytes(whole),
        port.fip.packed,
        port.fixed_ip.packed,
        True,
        host.cfg.router_mac.packed,
        port.mac.packed,
    )
    return (port.ofport, out) if out else None


def time_exceeded(host: HostState, table: int, in_port: int, frame: bytes):
    cfg = host.cfg
    if len(frame) < 34:
        return None
    if table == EGRESS:
        name = host.by_ofport.get(in_port)
        port = host.valid.get(name) if name else None
        if port is None or name in host.lost:
            return None
        out = icmp.time_exceeded(
            frame, host.net(port).gateway.packed, cfg.router_mac.packed, frame[6:12]
        )
        return (in_port, out) if out else None
    dst = netaddr.IPAddress(int.from_bytes(frame[30:34], "big"))
    snats = {cfg.snat_ip, *(e.snat for e in cfg.tagged)}
    if dst not in snats and _live_port(host, str(dst)) is None:
        return None
    out = icmp.time_exceeded(frame, dst.packed, cfg.ip_mac(dst).packed, frame[6:12])
    ext = cfg.external_for(dst)  # back into the VLAN it came in on (popped on arrival)
    return (cfg.uplink_ofport, vlan.tag(out, ext and ext.vlan)) if out else None


def _ip(raw: bytes) -> str:
    return str(netaddr.IPAddress(int.from_bytes(raw, "big")))


def icmp_error(host: HostState, in_port: int, frame: bytes) -> tuple[int, bytes] | None:
    """(output port, translated frame) for a punted ICMP error, or None to drop it."""
    if len(frame) < 34 or (frame[14] & 0x0F) * 4 < 20:
        return None
    if in_port in (host.cfg.uplink_ofport, 0):  # from outside, or hairpinned
        return _inbound(host, frame, dec_ttl=True)
    return _outbound(host, frame)


def _live_port(host: HostState, fip: str):
    name = host.fip_owner(fip)
    if name is None or host.is_pending(name):
        return None
    return host.valid[name]


def _inbound(host: HostState, frame: bytes, dec_ttl: bool) -> tuple[int, bytes] | None:
    """To a FIP VM: the quoted source is its FIP; the outer destination its fixed IP."""
    ihl = (frame[14] & 0x0F) * 4
    quoted_src = frame[14 + ihl + 8 + 12 : 14 + ihl + 8 + 16]
    port = _live_port(host, _ip(quoted_src)) if len(quoted_src) == 4 else None
    if port is None:
        return None
    out = icmp.translate_error(
        frame,
        port.fip.packed,
        port.fixed_ip.packed,
        True,
        host.cfg.router_mac.packed,
        port.mac.packed,
        outer=False,
        dec_ttl=dec_ttl,
    )
    return (port.ofport, out) if out else None


def _outbound(host: HostState, frame: bytes) -> tuple[int, bytes] | None:
    """From a FIP VM: the outer source is its FIP already; the quote still has its fixed IP.
    To another FIP of this host, the error is delivered here (hairpin), translated for both."""
    cfg = host.cfg
    port = _live_port(host, _ip(frame[26:30]))
    if port is None:
        return None
    fip_mac = cfg.ip_mac(port.fip).packed
    ext = cfg.external_for(port.fip)  # a tagged external network's FIP: its gateway, VLAN
    gateway = cfg.external_gateway_mac if ext is None else ext.gateway_mac
    out = icmp.translate_error(
        frame,
        port.fixed_ip.packed,
        port.fip.packed,
        False,
        fip_mac,
        gateway.packed if gateway else b"\xff" * 6,
        outer=False,
    )
    if out is None:
        return None
    peer = _live_port(host, _ip(frame[30:34]))
    if peer is not None:  # hairpin: to another local FIP
        inside = icmp.translate_error(
            out,
            peer.fip.packed,
            peer.fixed_ip.packed,
            True,
            cfg.router_mac.packed,
            peer.mac.packed,
            dec_ttl=False,
        )
        return (peer.ofport, inside) if inside else None
    if gateway is None:
        return None
    return cfg.uplink_ofport, vlan.tag(out, ext and ext.vlan)
