"""What a VM's DHCP answer carries beside its address: the host's `dhcp_*` options, and a
port's own values from its Interface row (written by ovsnat-neutron-agent from Neutron's
subnet and network, or by an operator).

Pure, like ovsnat.model.networks: values are parsed and checked here; the answer is built in
ovsnat.core.dhcp. A bad value rejects the port with one error naming the key, as any other
contract key does: a VM must not boot with half its settings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import netaddr

from ovsnat.model.parse import ConfigError, PortError, _show, parse_ipv4

KEY_DHCP = "ovsnat-dhcp"  # "off": ovsnat does not answer this port's DHCP
KEY_DNS = "ovsnat-dns"  # DNS servers, comma-separated
KEY_DOMAIN = "ovsnat-domain"  # DNS search domain
KEY_MTU = "ovsnat-mtu"  # the network's MTU (Neutron's, already right for it)
KEY_ROUTES = "ovsnat-routes"  # host routes: cidr>nexthop,cidr>nexthop
PORT_KEYS = (KEY_DHCP, KEY_DNS, KEY_DOMAIN, KEY_MTU, KEY_ROUTES)
# 26 routes, the default and the metadata route, 9 bytes at most each, fit DHCP option 121's
# 255 bytes (Neutron's max_subnet_host_routes is 20 by default)
MAX_DNS, MAX_ROUTES = 8, 26
MTU_RANGE = (576, 9216)
VLAN_TAG = 4  # bytes a VLAN tag takes from a frame on the fabric
TRUE, FALSE = ("true", "on", "yes", "1"), ("false", "off", "no", "0")


@dataclass(frozen=True, slots=True)
class PortDhcp:
    """A port's own DHCP values (None or empty: the host's option applies)."""

    enabled: bool = True
    dns: tuple[str, ...] = ()
    domain: str = ""
    mtu: int | None = None
    routes: tuple[tuple[str, str], ...] = ()  # (cidr, next hop)


@dataclass(frozen=True)
class HostDhcp:
    """The `[ovsnat] dhcp*` options."""

    enabled: bool = True
    dns: tuple[str, ...] = ()
    domain: str = ""
    lease_time: int = 43200
    mtu: int = 1500


def parse_port(label: str, external_ids: Mapping[str, str]):
    """PortDhcp, or None when the row has no such key (the host's options apply). Raises
    PortError."""
    switch = str(external_ids.get(KEY_DHCP, "")).strip().lower()
    if switch and switch not in TRUE + FALSE:
        raise PortError(f"{label}: external_ids:{KEY_DHCP} {_show(switch)} is not on or off")
    if switch in FALSE:
        return PortDhcp(enabled=False)
    if not any(k in external_ids for k in PORT_KEYS[1:]):
        return None
    return PortDhcp(
        True,
        _dns(external_ids.get(KEY_DNS), f"{label}: external_ids:{KEY_DNS}", PortError),
        _domain(external_ids.get(KEY_DOMAIN), f"{label}: external_ids:{KEY_DOMAIN}", PortError),
        _mtu(external_ids.get(KEY_MTU), f"{label}: external_ids:{KEY_MTU}", PortError),
        _routes(label, external_ids.get(KEY_ROUTES)),
    )


def parse_host(raw: Mapping[str, object]) -> HostDhcp:
    """The host options (missing ones take their defaults). Raises ConfigError."""
    default = HostDhcp()
    enabled = str(raw.get("dhcp", "true") or "true").strip().lower()
    if enabled not in TRUE + FALSE:
        raise ConfigError(f"dhcp: {_show(raw.get('dhcp'))} is not true or false")
    lease = str(raw.get("dhcp_lease_time") or default.lease_time).strip()
    if not re.fullmatch(r"[0-9]{1,10}", lease) or not 60 <= int(lease) <= 2**31:
        raise ConfigError(
            f"dhcp_lease_time: {_show(lease)} is not a number of seconds (60 or more)"
        )
    return HostDhcp(
        enabled in TRUE,
        _dns(raw.get("dhcp_dns"), "dhcp_dns", ConfigError),
        _domain(raw.get("dhcp_domain"), "dhcp_domain", ConfigError),
        int(lease),
        _mtu(raw.get("dhcp_mtu") or default.mtu, "dhcp_mtu", ConfigError),
    )


def effective_mtu(host: HostDhcp, port: PortDhcp | None, vlan_on_fabric: bool) -> int:
    """The port's MTU: its own (Neutron computed it for the network), else the host's,
    less the VLAN tag when the network's frames carry one across the fabric."""
    if port is not None and port.mtu:
        return port.mtu
    return host.mtu - (VLAN_TAG if vlan_on_fabric else 0)


def _dns(value, what: str, error) -> tuple[str, ...]:
    text = str(value or "").strip()
    if not text:
        return ()
    items = [t.strip() for t in text.split(",")]
    if len(items) > MAX_DNS:
        raise error(f"{what}: {len(items)} DNS servers, at most {MAX_DNS}")
    return tuple(str(parse_ipv4(t, what, error)) for t in items)


def _domain(value, what: str, error) -> str:
    text = str(value or "").strip().rstrip(".")
    if text and (
        len(text) > 253
        or not re.fullmatch(
            r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
            r"[A-Za-z0-9])?)*",
            text,
        )
    ):
        raise error(f"{what}: {_show(value)} is not a DNS domain name")
    return text


def _mtu(value, what: str, error) -> int | None:
    text = str(value if value is not None else "").strip()
    if not text:
        return None
    lo, hi = MTU_RANGE
    if not re.fullmatch(r"[0-9]{1,5}", text) or not lo <= int(text) <= hi:
        raise error(f"{what}: {_show(value)} is not an MTU ({lo}-{hi})")
    return int(text)


def _routes(label: str, value) -> tuple[tuple[str, str], ...]:
    text = str(value or "").strip()
    if not text:
        return ()
    what = f"{label}: external_ids:{KEY_ROUTES}"
    items = [t.strip() for t in text.split(",")]
    if len(items) > MAX_ROUTES:
        raise PortError(f"{what}: {len(items)} routes, at most {MAX_ROUTES}")
    out = []
    for item in items:
        cidr, sep, hop = item.partition(">")
        if not sep:
            raise PortError(f"{what}: {_show(item)} is not cidr>nexthop")
        net = _route_cidr(cidr.strip())
        if net is None:
            raise PortError(
                f"{what}: {_show(item)}: {_show(cidr)} is not an IPv4 CIDR without host bits"
            )
        out.append((str(net.cidr), str(parse_ipv4(hop, what, PortError))))
    return tuple(out)


def _route_cidr(text: str) -> netaddr.IPNetwork | None:
    addr, _, plen = text.partition("/")
    try:
        ip = parse_ipv4(addr, "route", PortError)
    except PortError:
        return None
    if not re.fullmatch(r"[0-9]{1,2}", plen) or int(plen) > 32:
        return None
    net = netaddr.IPNetwork(f"{ip}/{plen}")
    return net if net.ip == net.network else None
