"""Which ICMP errors the controller sends on, and where (their rewriting is ovsnat.icmp's).

The switch hands the controller ICMP errors to or from a FIP VM (metered): a stateless FIP
leaves their quoted header untranslated. Inbound errors (to the FIP) go to the VM's port,
outbound ones (from the fixed IP) to the gateway; anything else is dropped.
"""

from __future__ import annotations

import netaddr

from ovsnat import icmp
from ovsnat.state import HostState


def icmp_error(host: HostState, in_port: int, frame: bytes) -> tuple[int, bytes] | None:
    """(output port, translated frame) for an ICMP error frame, or None to drop it."""
    cfg = host.cfg
    if len(frame) < 34 or (frame[14] & 0x0F) * 4 < 20:
        return None
    dst, src = frame[30:34], frame[26:30]
    name = host.fip_owner(str(netaddr.IPAddress(int.from_bytes(dst, "big"))))
    inbound = name is not None and not host.is_pending(name)
    if not inbound:
        name = host.by_ofport.get(in_port)
    port = host.valid.get(name) if name else None
    if port is None or port.fip is None or host.is_pending(name):
        return None
    fip, fixed = port.fip.packed, port.fixed_ip.packed
    if inbound:
        out = icmp.translate_error(frame, fip, fixed, True, cfg.router_mac.packed,
                                   port.mac.packed)
        return (port.ofport, out) if out else None
    if src == fixed and cfg.external_gateway_mac is not None:
        out = icmp.translate_error(frame, fixed, fip, False, cfg.ip_mac(port.fip).packed,
                                   cfg.external_gateway_mac.packed)
        return (cfg.uplink_ofport, out) if out else None
    return None
