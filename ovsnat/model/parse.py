"""Values read from a config file or an OVSDB row, checked one by one.

Each helper returns a clean value or raises one error that names the item and the reason,
so an operator can fix it from the log line alone. Pure; shared by the host config, the
VM ports and the networks.
"""

from __future__ import annotations

import re

import netaddr


class ConfigError(ValueError):
    """A host option is invalid; the message starts with the option name."""


class PortError(ValueError):
    """A VM port cannot be programmed; the message names the port and the reason."""


# --- parsing helpers: each returns a clean value or raises with the item's name ----------------
def parse_ipv4(value, what: str, error=ConfigError) -> netaddr.IPAddress:
    text = str(value).strip()
    try:
        ip = netaddr.IPAddress(text, version=4, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise error(f"{what}: {_show(value)} is not an IPv4 address") from None
    return ip


def parse_cidr(value, what: str) -> netaddr.IPNetwork:
    text = str(value).strip()
    addr, slash, plen = text.partition("/")
    if not slash:
        raise ConfigError(f"{what}: {_show(value)} needs a prefix length (e.g. 10.0.0.0/24)")
    ip = parse_ipv4(addr, what)
    if not re.fullmatch(r"[0-9]{1,2}", plen) or int(plen) > 32:
        raise ConfigError(f"{what}: {_show(value)} is not an IPv4 CIDR")
    net = netaddr.IPNetwork(f"{ip}/{int(plen)}")
    if net.ip != net.network:
        raise ConfigError(f"{what}: {text} has host bits set (did you mean {net.cidr}?)")
    if net.prefixlen > 30:
        raise ConfigError(f"{what}: {text} is too small (at most /30)")
    return net


def parse_int(value, what: str, lo: int, hi: int) -> int:
    """A whole number within lo-hi, from an option's text or number."""
    text = str(value).strip()
    if not re.fullmatch(r"-?[0-9]{1,10}", text):
        raise ConfigError(f"{what}: {_show(value)} is not an integer")
    number = int(text)
    if not lo <= number <= hi:
        raise ConfigError(f"{what}: {number} is outside {lo}-{hi}")
    return number


def parse_mac(value, what: str, error=ConfigError) -> netaddr.EUI:
    text = str(value).strip()
    try:
        if len(text) != 17:
            raise ValueError
        mac = netaddr.EUI(text, version=48)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise error(
            f"{what}: {_show(value)} is not a MAC address (expected six colon-separated hex bytes)"
        ) from None
    if int(mac) >> 40 & 1:
        raise error(f"{what}: {text} is a multicast MAC")
    if int(mac) == 0:
        raise error(f"{what}: {text} is the zero MAC")
    return mac


def parse_fields(value, names: tuple[str, ...], what: str, optional=()) -> dict[str, str]:
    """`name=value;...`, each of `names` exactly once, `optional` at most once, and
    nothing else."""
    text = str(value).strip()
    out: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, val = part.strip().partition("=")
        if not eq or name not in (*names, *optional) or name in out or not val.strip():
            raise ValueError(f"{what}: {_show(value)} is not {';'.join(n + '=...' for n in names)}")
        out[name] = val.strip()
    missing = [n for n in names if n not in out]
    if missing:
        raise ValueError(f"{what}: {_show(value)} has no {missing[0]}=")
    return out


def mac_str(mac: netaddr.EUI) -> str:
    """aa:bb:cc:dd:ee:ff (netaddr's str() is slow and dashed). As fast as a cache lookup, so
    not cached: a cache would keep every VM's MAC alive a second time."""
    return int(mac).to_bytes(6, "big").hex(":")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "...'"


def _in(ip: netaddr.IPAddress, net: netaddr.IPNetwork) -> bool:
    return net.first <= int(ip) <= net.last


def _usable(ip: netaddr.IPAddress, net: netaddr.IPNetwork) -> bool:
    return net.first < int(ip) < net.last


def _require_host(ip, net, what: str, net_name: str, error=ConfigError) -> None:
    """ip must be a host address of net (not its network or broadcast address)."""
    if not _usable(ip, net):
        raise error(f"{what} {ip} is not a host address of {net_name} {net}")
