"""Whether ovsnat can serve a Neutron port on a host: the mechanism driver's decision at
binding, made before Nova plugs anything.

Pure (no Neutron import; Neutron's dicts in, a reason out), so unit tests in ovsnat's own
virtualenv pin every refusal down. A port refused here gets `binding_failed` at once, the
reason in Neutron's log and in the binding's `vif_details` (`ovsnat_refused`), and Nova fails
the boot (or the live migration's pre-check) at once instead of waiting 300 s for a
`network-vif-plugged` that could never come.

Two layers:
- What ovsnat's contract cannot express for a port: one IPv4 address is what a port gets
  served by (its fixed IP, its FIP, its PAT), so several fixed IPs, an IPv6 one, or none are
  refused rather than half-served; its network must be one IPv4 subnet with a gateway (the
  gateway is ovsnat's own, answered on every host) on one segment this host reaches.
- What the controller would refuse: the keys the agent would write for the port, judged by
  the controller's own parser and rules (ovsnat.portcheck.keys_problem on
  ovsnat.validate), against the limits the host's agent reported (its external network,
  transit range, default network, handoff VLAN).
"""

from __future__ import annotations

import ipaddress
from typing import Mapping, Sequence

from ovsnat.neutron.keys import PortFacts, Segment, port_keys
from ovsnat.portcheck import keys_problem
from ovsnat.validate import HostLimits

REFUSED = "ovsnat_refused"          # the vif_details key of a refused binding


def tap_name(port_id: str) -> str:
    """The Interface name Nova gives the port's device (nova.network.model)."""
    return ("tap" + port_id)[:14]


def _version(address: str) -> int:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return 0


def address_refusal(port: Mapping) -> str | None:
    """One IPv4 fixed IP or nothing: ovsnat NATs, routes and answers DHCP for one address
    per port; the rest would be silently dropped."""
    ips = [ip["ip_address"] for ip in port.get("fixed_ips") or []]
    if not ips:
        return "it has no fixed IP (ovsnat serves a port by its one IPv4 address)"
    v6 = [ip for ip in ips if _version(ip) != 4]
    if v6:
        return (f"fixed IP {v6[0]} is not IPv4: ovsnat serves IPv4 only, its traffic would be "
                "dropped (use a network without an IPv6 subnet)")
    if len(ips) > 1:
        return (f"it has {len(ips)} fixed IPs ({', '.join(ips)}): ovsnat serves one IPv4 "
                "address per port (its NAT, DHCP and anti-spoofing), never part of a port")
    return None


def network_refusal(network: Mapping, subnet: Mapping, subnets: Sequence[Mapping],
                    segment: Mapping) -> str | None:
    """The port's subnet and the network's other IPv4 subnets on the bound segment."""
    if not subnet.get("gateway_ip"):
        return (f"subnet {subnet.get('id')} {subnet.get('cidr')} has no gateway (created with "
                "--gateway none): ovsnat is the gateway of every network it serves")
    here = [s for s in subnets if s.get("ip_version") == 4 and
            s.get("segment_id") in (None, segment.get("id"))]
    if len(here) > 1:
        cidrs = ", ".join(sorted(str(s.get("cidr")) for s in here))
        return (f"network {network.get('id')} has {len(here)} IPv4 subnets ({cidrs}): ovsnat "
                "serves one IPv4 subnet per network (one CIDR and gateway per VLAN)")
    return None


def segment_refusal(network: Mapping, bindable: Sequence[Mapping]) -> str | None:
    """A multi-segment network binds on the one segment of this host's physnets (its VLAN
    goes into the port's keys); with two such segments the host could not tell them apart:
    ovsnat names a network on a host by its id, with one VLAN."""
    if len(bindable) > 1:
        names = ", ".join(f"{s.get('network_type')}:{s.get('physical_network')}:"
                          f"{s.get('segmentation_id')}" for s in bindable)
        return (f"network {network.get('id')} has {len(bindable)} segments this host reaches "
                f"({names}): ovsnat serves one segment of a network per host")
    return None


def refusal(port: Mapping, network: Mapping, subnets: Sequence[Mapping], segment: Mapping,
            bindable: Sequence[Mapping], limits: HostLimits | None) -> str | None:
    """Why ovsnat cannot serve `port` bound to `segment` on a host whose agent reported
    `limits` (None: it reported none; the host's ranges are then left to its controller);
    `subnets`: every subnet of the port's network; `bindable`: the network's segments the
    host's agent can bind. None: bind it."""
    problem = segment_refusal(network, bindable) or address_refusal(port)
    if problem:
        return problem
    fixed = port["fixed_ips"][0]
    subnet = next((s for s in subnets if s.get("id") == fixed["subnet_id"]), None)
    if subnet is None:
        return f"its subnet {fixed['subnet_id']} is not on its network {network.get('id')}"
    problem = network_refusal(network, subnet, subnets, segment)
    if problem:
        return problem
    facts = PortFacts(port_id=port["id"], network_id=network["id"],
                      fixed_ips=((fixed["subnet_id"], fixed["ip_address"]),),
                      subnets={subnet["id"]: subnet},
                      segment=Segment(segment.get("network_type"),
                                      segment.get("physical_network"),
                                      segment.get("segmentation_id")),
                      mtu=network.get("mtu"))
    ids = {**port_keys(facts), "iface-id": port["id"],
           "attached-mac": port.get("mac_address") or ""}
    return keys_problem(tap_name(port["id"]), ids, limits or HostLimits())
