"""East-west routing's keys (docs/routers.md, item 2), parsed: which host this is, every
host's routed source MAC, the router tags, and the remote neighbours of each routed network.

- `ovsnat-host` = this host's name as Neutron knows it;
- `ovsnat-hostmac-<host>` = the routed source MAC of `<host>` (Neutron's DVR MAC);
- `ovsnat-nb-<network>` = `<ip>=<mac>@<host>,...`: the network's ports on other hosts.

Pure. A bad value fails safe: a bad neighbour entry is skipped (no route to that address),
a MAC two hosts claim is used for neither, and without its own name and MAC a host routes
east-west only between its own VMs; each kept as one problem naming the key and the value.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import netaddr

from ovsnat.model.parse import ConfigError, _show, parse_ipv4, parse_mac

HOST_KEY = "ovsnat-host"
HOSTMAC_PREFIX = "ovsnat-hostmac-"
NB_PREFIX = "ovsnat-nb-"
ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
TAG_BITS = 31  # a router's tag lives in register 3; 0 means "no router"


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A port of a routed network on another host: where routed packets for it go."""

    ip: netaddr.IPAddress
    mac: netaddr.EUI
    host: str


@dataclass(frozen=True)
class Hosts:
    """This host's name and routed MAC (None: unknown, so nothing is routed across hosts)
    and the other hosts' routed MACs (frames from them may carry routed packets)."""

    name: str | None = None
    mac: netaddr.EUI | None = None
    others: Mapping[str, netaddr.EUI] = field(default_factory=dict)  # host -> routed MAC


def parse_hosts(ids: Mapping[str, str], problems: dict[str, str]) -> Hosts:
    """`ovsnat-host` and every `ovsnat-hostmac-*`; problems added to `problems`."""
    macs: dict[str, netaddr.EUI] = {}
    for key in sorted(k for k in ids if k.startswith(HOSTMAC_PREFIX)):
        host, what = key[len(HOSTMAC_PREFIX) :], f"bridge external_ids:{key}"
        if not ID.fullmatch(host):
            problems[key] = f"{what}: {_show(host)} is not a host name; key ignored"
            continue
        try:
            macs[host] = parse_mac(ids[key], what)
        except ConfigError as e:
            problems[key] = f"{e}; host {host}'s routed frames are dropped"
    by_mac: dict[int, list[str]] = {}
    for host, mac in macs.items():
        by_mac.setdefault(int(mac), []).append(host)
    for hosts in by_mac.values():
        if len(hosts) > 1:
            for host in hosts:
                key = HOSTMAC_PREFIX + host
                problems[key] = (
                    f"bridge external_ids:{key}: {ids[key]} is also the routed MAC of "
                    f"{', '.join(h for h in hosts if h != host)}; used for neither"
                )
                del macs[host]
    name = str(ids.get(HOST_KEY, "")).strip() or None
    if name is not None and not ID.fullmatch(name):
        problems[HOST_KEY] = (
            f"bridge external_ids:{HOST_KEY}: {_show(ids[HOST_KEY])} is not a host name; "
            "east-west routing only between this host's VMs"
        )
        name = None
    elif name is not None and name not in macs and HOSTMAC_PREFIX + name not in problems:
        problems[HOST_KEY] = (
            f"bridge external_ids:{HOST_KEY}: host {name} has no {HOSTMAC_PREFIX}{name}; "
            "east-west routing only between this host's VMs"
        )
    elif name is None and macs:
        problems[HOST_KEY] = (
            f"bridge external_ids:{HOST_KEY} is not set but {len(macs)} routed MACs are; "
            "east-west routing only between this host's VMs"
        )
    own = macs.pop(name, None) if name is not None else None
    return Hosts(name, own, macs) if own is not None else Hosts(None, None, macs)


def parse_neighbours(
    ids: Mapping[str, str], cidrs: Mapping[str, netaddr.IPNetwork], problems: dict[str, str]
) -> dict[str, tuple[Neighbour, ...]]:
    """Each `ovsnat-nb-<network>` of a network routed east-west here (`cidrs`: its
    addresses); keys of other networks mean nothing here and are ignored. A bad entry is
    skipped and said (the first one, with how many), the others kept."""
    out: dict[str, tuple[Neighbour, ...]] = {}
    for key in sorted(k for k in ids if k.startswith(NB_PREFIX)):
        name = key[len(NB_PREFIX) :]
        if name not in cidrs:
            continue
        kept, bad = _entries(str(ids[key]), cidrs[name], f"bridge external_ids:{key}")
        out[name] = tuple(kept)
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            problems[key] = f"{bad[0]}{more}; skipped: no route to those addresses"
    return out


def _entries(value: str, cidr: netaddr.IPNetwork, what: str) -> tuple[list, list[str]]:
    kept: list[Neighbour] = []
    bad: list[str] = []
    seen: set[int] = set()
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        try:
            kept.append(_entry(entry, cidr, what, seen))
        except ConfigError as e:
            bad.append(str(e))
    return kept, bad


def _entry(entry: str, cidr: netaddr.IPNetwork, what: str, seen: set[int]) -> Neighbour:
    ip_text, eq, rest = entry.partition("=")
    mac_text, at, host = rest.partition("@")
    if not eq or not at:
        raise ConfigError(f"{what}: {_show(entry)} is not <ip>=<mac>@<host>")
    ip = parse_ipv4(ip_text, f"{what}: {_show(entry)}:")
    if not cidr.first < int(ip) < cidr.last:
        raise ConfigError(f"{what}: {_show(entry)}: {ip} is not a host address of {cidr}")
    if int(ip) in seen:
        raise ConfigError(f"{what}: {_show(entry)}: {ip} is listed twice")
    mac = parse_mac(mac_text, f"{what}: {_show(entry)}:")
    if not ID.fullmatch(host.strip()):
        raise ConfigError(f"{what}: {_show(entry)}: {_show(host)} is not a host name")
    seen.add(int(ip))
    return Neighbour(ip, mac, host.strip())


def router_tags(routers: Iterable[str]) -> dict[str, int]:
    """Each router's tag (register 3): 31 bits of its id's digest, the next free value on
    a collision (routers in id order), so a router keeps its tag whatever else changes,
    and two routers never share one."""
    tags: dict[str, int] = {}
    used: set[int] = set()
    for rid in sorted(routers):
        digest = hashlib.blake2b(rid.encode(), digest_size=4).digest()
        tag = int.from_bytes(digest, "big") & ((1 << TAG_BITS) - 1) or 1
        while tag in used:
            tag = tag % ((1 << TAG_BITS) - 1) + 1
        used.add(tag)
        tags[rid] = tag
    return tags
