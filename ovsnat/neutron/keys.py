"""The contract's external_ids for one Neutron port, computed from Neutron's own records.

Pure (no Neutron import), so it runs in ovsnat's main virtualenv too and unit tests pin the
mapping down: the server side (ovsnat.neutron.server_rpc) feeds it Neutron's dicts and ships
the result to the agent, and the agent only applies key differences to OVSDB. Keeping the
mapping in one place means the agent never needs to know Neutron's data model.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ovsnat.neutron import secgroups

# Keys the agent owns on an Interface row. Everything else there (iface-id, attached-mac,
# vm-uuid, iface-status: os-vif/Nova; ovsnat-installed, ovsnat-ready: the controller) is never
# touched.
FIXED_IP = "ovsnat-fixed-ip"
FIP = "ovsnat-fip"
NETWORK = "ovsnat-network"
CIDR = "ovsnat-cidr"
GATEWAY = "ovsnat-gateway"
VLAN = "ovsnat-vlan"
DNS = "ovsnat-dns"
MTU = "ovsnat-mtu"
ROUTES = "ovsnat-routes"
DHCP = "ovsnat-dhcp"  # "off" when the subnet has DHCP disabled
# For the host's metadata proxy, which knows a VM by its port and signs for its instance
# (docs/metadata.md); the controller reads neither (ovsnat.model.ports.PROXY_KEYS).
DEVICE_ID = "ovsnat-device-id"  # the port's device_id: for Nova's ports, the instance uuid
PROJECT = "ovsnat-project"  # the port's project (project_id, or tenant_id)
# Security groups and port security (ovsnat.neutron.secgroups): ovsnat-sg,
# ovsnat-port-security, ovsnat-allowed-pairs, ovsnat-admin.
MANAGED_KEYS = (
    FIXED_IP,
    FIP,
    NETWORK,
    CIDR,
    GATEWAY,
    VLAN,
    DNS,
    MTU,
    ROUTES,
    DHCP,
    DEVICE_ID,
    PROJECT,
    *secgroups.PORT_KEYS,
)

INSTALLED = "ovsnat-installed"  # written by the controller once the port's flows are in
READY = "ovsnat-ready"  # ... once it accepts the port's keys, device or not
SNAT_IP = "ovsnat-snat-ip"  # Bridge:external_ids, this host's PAT address

# A port whose iface-id Neutron does not know (deleted) gets none of the managed keys.
NO_KEYS: dict[str, str] = {}


@dataclass(frozen=True)
class Segment:
    """Where the port's network meets the fabric: untagged (flat) or one VLAN."""

    network_type: str
    physical_network: str | None = None
    segmentation_id: int | None = None


@dataclass(frozen=True)
class PortFacts:
    """What Neutron knows about a port, reduced to what ovsnat's contract needs."""

    port_id: str
    network_id: str
    fixed_ips: tuple[tuple[str, str], ...]  # (subnet_id, ip_address)
    subnets: dict = field(default_factory=dict)  # subnet_id -> Neutron subnet dict
    segment: Segment | None = None
    mtu: int | None = None
    floating_ips: tuple[tuple[str, str], ...] = ()  # (fixed_ip_address, floating_ip_address)
    device_id: str = ""  # who uses the port (Nova: the instance uuid; empty: nobody)
    project: str = ""


def owner(port: dict) -> dict[str, str]:
    """A Neutron port dict's device_id and project, as PortFacts takes them: project_id,
    else tenant_id (Neutron's older name for it); empty when Neutron has none."""
    return {
        "device_id": port.get("device_id") or "",
        "project": port.get("project_id") or port.get("tenant_id") or "",
    }


def _ipv4(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).version == 4
    except ValueError:
        return False


def served_address(facts: PortFacts) -> tuple[str, str] | None:
    """The port's one fixed IP and its subnet id, when ovsnat can serve the port: exactly
    one fixed IP, IPv4, on a subnet Neutron told us about. Anything else (several fixed IPs,
    an IPv6 one, none) gets no keys at all rather than NAT for part of its addresses: the
    mechanism driver refuses such ports at binding (ovsnat.neutron.binding says why), so
    this only meets a port whose fixed IPs changed under a binding made before that rule."""
    if len(facts.fixed_ips) != 1:
        return None
    subnet_id, address = facts.fixed_ips[0]
    if not _ipv4(address) or subnet_id not in facts.subnets:
        return None
    return subnet_id, address


def format_routes(host_routes: list[dict], cidr: str | None = None) -> str:
    """Neutron host routes as "cidr>nexthop,cidr>nexthop" (IPv4 only, Neutron's order).
    With the subnet's cidr, only routes via a neighbour on it (Neutron does not insist; a
    DHCP client could not use another)."""
    net = ipaddress.ip_network(cidr) if cidr else None
    return ",".join(
        f"{r['destination']}>{r['nexthop']}"
        for r in host_routes
        if _ipv4(r["nexthop"]) and (net is None or ipaddress.ip_address(r["nexthop"]) in net)
    )


def port_keys(facts: PortFacts) -> dict[str, str]:
    """The managed keys this port's Interface row should carry; absent keys must go."""
    chosen = served_address(facts)
    if chosen is None:
        return dict(NO_KEYS)
    subnet_id, address = chosen
    subnet = facts.subnets[subnet_id]
    keys = {FIXED_IP: address, NETWORK: facts.network_id, CIDR: subnet["cidr"]}
    if subnet.get("gateway_ip"):
        keys[GATEWAY] = subnet["gateway_ip"]
    fip = next((f for fixed, f in facts.floating_ips if fixed == address), None)
    if fip:
        keys[FIP] = fip
    seg = facts.segment
    if seg is not None and seg.network_type == "vlan" and seg.segmentation_id:
        keys[VLAN] = str(seg.segmentation_id)
    dns = [d for d in subnet.get("dns_nameservers") or [] if _ipv4(d)]
    if dns:
        keys[DNS] = ",".join(dns)
    if facts.mtu:
        keys[MTU] = str(facts.mtu)
    routes = format_routes(subnet.get("host_routes") or [], subnet["cidr"])
    if routes:
        keys[ROUTES] = routes
    if subnet.get("enable_dhcp") is False:
        keys[DHCP] = "off"
    if facts.device_id:
        keys[DEVICE_ID] = facts.device_id
    if facts.project:
        keys[PROJECT] = facts.project
    return keys


@dataclass(frozen=True)
class KeyDiff:
    """Single-key OVSDB mutations that turn a row's managed keys into the desired ones."""

    set: dict[str, str]
    remove: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.set or self.remove)


def diff_keys(current: dict[str, str], desired: dict[str, str]) -> KeyDiff:
    """Compare only the managed keys of a row's external_ids with the desired ones."""
    to_set = {k: v for k, v in desired.items() if current.get(k) != v}
    to_remove = tuple(k for k in MANAGED_KEYS if k in current and k not in desired)
    return KeyDiff(to_set, to_remove)


def apply_diff(current: dict[str, str], diff: KeyDiff) -> None:
    """`current` as it is once `diff` is written."""
    current.update(diff.set)
    for key in diff.remove:
        current.pop(key, None)


def unwritten(bridge_ids: dict[str, str], wanted: dict[str, str]) -> dict[str, str]:
    """The keys of `wanted` not on the Bridge with their value (empty: it is in step)."""
    return {k: v for k, v in wanted.items() if bridge_ids.get(k) != v}
