"""What a port's network and address must satisfy to be served: the rules the controller
applies to every Interface row, in one pure module that Neutron's mechanism driver applies
too, at binding, to the keys the agent would write. A port the controller would refuse is
then refused by Neutron at once (binding_failed, the reason in Neutron's log and on the
port), instead of binding, never going ACTIVE, and failing Nova's boot 300 s later with the
reason only in ovsnat's log.

Pure: values in (netaddr objects, plain strings), a reason out (None: acceptable). No
framework, oslo or Neutron import, so the controller's virtualenv and Neutron's both run it.
The callers add the label ("port 'tap...' (iface-id)") and raise or log.

What depends on the host travels as HostLimits: what a host reserves (its external network,
its transit range, its default network's untagged fabric segment, its handoff VLAN). The
controller builds them from its options (HostConfig.limits); ovsnat-neutron-agent reads the
controller's configuration file, reports them in its heartbeat's `configurations` (the way
Neutron's agents tell drivers what their host can do) and the driver rebuilds them with
`HostLimits.from_report`. What only the running controller knows (the other ports on the
host, PAT blocks, the uplink's and fabric's OpenFlow ports) is not judged at binding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import netaddr

MAX_VLAN_NETWORK_PREFIX = 12        # VM flows are named by VLAN and the fixed IP's last 20 bits
REPORT_KEY = "ovsnat_host_limits"   # the agent's `configurations` key (ovsnat.neutron)
# Why a range is reserved, appended to the refusal so that it says what to change.
HINTS = {"transit_cidr": " (addresses used inside ovsnat's datapath; set transit_cidr to a "
                         "/10 no network uses)"}


@dataclass(frozen=True)
class HostLimits:
    """What one host reserves: no tenant network may overlap `reserved` (option name ->
    range), a named untagged network cannot share the fabric's untagged segment with the
    host's default network (`default_cidr`), and no network may use `handoff_vlan`."""

    reserved: tuple[tuple[str, netaddr.IPNetwork], ...] = ()
    default_cidr: netaddr.IPNetwork | None = None
    handoff_vlan: int = 0

    def to_report(self) -> dict:
        """As JSON for the agent's heartbeat (`configurations`)."""
        return {"reserved": {name: str(cidr) for name, cidr in self.reserved},
                "default_cidr": str(self.default_cidr) if self.default_cidr else "",
                "handoff_vlan": self.handoff_vlan}

    @classmethod
    def from_report(cls, report: Mapping) -> "HostLimits":
        """Back from an agent's report; raises ValueError on anything malformed (the driver
        then judges without the host's limits, and the controller still refuses)."""
        if not isinstance(report, Mapping):
            raise ValueError(f"not a mapping: {report!r}")
        try:
            reserved = tuple((str(name), _cidr(text)) for name, text in
                             sorted(dict(report.get("reserved") or {}).items()))
            default = str(report.get("default_cidr") or "")
            vlan = int(report.get("handoff_vlan") or 0)
        except (TypeError, ValueError, netaddr.AddrFormatError) as e:
            raise ValueError(f"{report!r}: {e}") from None
        if not 0 <= vlan <= 4094:
            raise ValueError(f"handoff_vlan {vlan} is not 0-4094")
        return cls(reserved, _cidr(default) if default else None, vlan)


def _cidr(text: str) -> netaddr.IPNetwork:
    net = netaddr.IPNetwork(str(text), version=4)
    if net.ip != net.network:
        raise ValueError(f"{text} has host bits set")
    return net


def _overlap(a: netaddr.IPNetwork, b: netaddr.IPNetwork) -> bool:
    return a.first <= b.last and b.first <= a.last


def _host_address(ip: netaddr.IPAddress, cidr: netaddr.IPNetwork) -> bool:
    return cidr.first < int(ip) < cidr.last


# --- the rules ----------------------------------------------------------------------------
def gateway_problem(name: str, cidr: netaddr.IPNetwork, gateway: netaddr.IPAddress,
                    what: str = "external_ids:ovsnat-gateway") -> str | None:
    """ovsnat answers ARP for the gateway of every network it serves: it must be a host
    address of the network (Neutron accepts a gateway outside the subnet; ovsnat cannot)."""
    if not _host_address(gateway, cidr):
        return f"{what} {gateway} is not a host address of network {name} {cidr}"
    return None


def network_problem(name: str, cidr: netaddr.IPNetwork, vlan: int | None,
                    limits: HostLimits) -> str | None:
    """A named network (a Neutron network) against what the host reserves. The order is
    the controller's: the first problem found is the one reported."""
    if vlan is None and limits.default_cidr is not None:
        return (f"network {name} is untagged, but the fabric's untagged segment is this "
                f"host's default network (internal_cidr {limits.default_cidr}); give it an "
                "external_ids:ovsnat-vlan")
    if vlan is not None and vlan == limits.handoff_vlan:
        return f"network {name}'s VLAN {vlan} is this host's handoff_vlan"
    for option, reserved in limits.reserved:
        if _overlap(cidr, reserved):
            return f"network {name} {cidr} overlaps {option} {reserved}{HINTS.get(option, '')}"
    if vlan is not None and cidr.prefixlen < MAX_VLAN_NETWORK_PREFIX:
        return (f"network {name} {cidr} is larger than a /{MAX_VLAN_NETWORK_PREFIX} (its "
                "VMs' flows are named by VLAN and the fixed IP's last 20 bits)")
    return None


def address_problem(ip: netaddr.IPAddress, label: str, cidr: netaddr.IPNetwork,
                    gateway: netaddr.IPAddress) -> str | None:
    """The port's fixed IP in its network (`label`: the network's name, or "(default)")."""
    if not _host_address(ip, cidr):
        return f"fixed IP {ip} is not a host address of network {label} {cidr}"
    if ip == gateway:
        return f"fixed IP {ip} is the VMs' gateway address"
    return None


def routes_problem(routes: Iterable[tuple[str, str]], cidr: netaddr.IPNetwork,
                   what: str = "external_ids:ovsnat-routes") -> str | None:
    """Every next hop must be on the port's network (RFC 3442 routes are via a neighbour)."""
    for dest, hop in routes:
        if not _host_address(netaddr.IPAddress(hop), cidr):
            return f"{what} {dest}>{hop}: next hop is not on the port's network {cidr}"
    return None


def port_problem(fixed_ip: netaddr.IPAddress, net, routes: Iterable[tuple[str, str]],
                 limits: HostLimits) -> str | None:
    """Everything about one port that does not depend on the other ports or on the switch:
    its network against the host (named networks only: the default network is the host's
    own), its fixed IP in it, its DHCP routes. `net` has name, label, cidr, gateway, vlan
    (ovsnat.networks.Network)."""
    if net.name:
        problem = network_problem(net.name, net.cidr, net.vlan, limits)
        if problem:
            return problem
    return address_problem(fixed_ip, net.label, net.cidr, net.gateway) or \
        routes_problem(routes, net.cidr)
