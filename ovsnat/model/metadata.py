"""The metadata path's addresses (docs/metadata.md), shared by the flows and the proxy.

A VM asks 169.254.169.254:80. Its host's flows send the request to the host's one proxy
with the VM's OpenFlow port written into the source address (169.254.0.0 + ofport) and the
proxy's own address as destination; the proxy's reply goes back to that address, and the
flows turn it back into 169.254.169.254 -> the VM's fixed IP. So the proxy knows the port
a request came from without any state: two VMs with one fixed IP in two networks are two
ports, two addresses. OpenFlow ports run 1..0xfeff, so the encoded addresses stay below
169.254.255.0; the proxy's own address lies above them and is never a VM's.
"""

from __future__ import annotations

import ipaddress

METADATA_IP = ipaddress.IPv4Address("169.254.169.254")  # what the VM asks
METADATA_PORT = 80
PROXY_IP = ipaddress.IPv4Address("169.254.255.254")  # the proxy's, inside its namespace
ENCODED = ipaddress.IPv4Network("169.254.0.0/16")  # the VMs' ports, as sources
META_MAC = "0e:00:00:a9:fe:fe"  # the proxy's interface, locally administered
MAX_OFPORT = 0xFEFF


def encode(ofport: int) -> ipaddress.IPv4Address:
    """The source address a request from OpenFlow port `ofport` reaches the proxy with."""
    if not 1 <= ofport <= MAX_OFPORT:
        raise ValueError(f"ofport {ofport} is outside 1-{MAX_OFPORT:#x}")
    return ENCODED.network_address + ofport


def decode(address) -> int | None:
    """The OpenFlow port an encoded source address names; None for any other address."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return None
    if ip not in ENCODED:
        return None
    ofport = int(ip) - int(ENCODED.network_address)
    return ofport if 1 <= ofport <= MAX_OFPORT else None
