"""Who claims what on this host, and who wins: the clash rule of the host state
(ovsnat.core.state).

A valid port loses when a direct competitor sorts before it by (iface-id, name). Direct
competitors are the ports that claim one of its addresses (fixed IP and MAC within a
network; ofport, FIP and, with per-VM PAT blocks, the block on the host), and the ports
that define its network differently or put another network on its VLAN. Looking only at
direct competitors gives the same answer whatever order the events came in.
"""

from __future__ import annotations

from collections.abc import Iterator

import netaddr

from ovsnat.model import HostConfig, VmPort, mac_str
from ovsnat.model.networks import Network

# An address a port claims, as one int: the kind above bit 64, the network id above bit 48
# (a MAC has 48 bits), the value below. 40,000 claims at 10,000 VMs cost an int each.
_FIXED_IP, _MAC, _OFPORT, _FIP, _BLOCK = range(5)
_KIND_NAMES = ("fixed IP", "MAC", "ofport", "FIP", "PAT block")
_KIND, _NET = 64, 48


def claim_keys(port: VmPort, net: Network, cfg: HostConfig) -> list[int]:
    per_net = net.id << _NET
    keys = [
        _FIXED_IP << _KIND | per_net | int(port.fixed_ip),
        _MAC << _KIND | per_net | int(port.mac),
        _OFPORT << _KIND | port.ofport,
    ]
    if port.fip is not None:
        keys.append(fip_key(port.fip))
    elif cfg.pat_ports_per_vm:
        keys.append(_BLOCK << _KIND | port.pat_block(cfg)[0])
    return keys


def fip_key(ip: netaddr.IPAddress) -> int:
    return _FIP << _KIND | int(ip)


def claim_text(key: int) -> tuple[str, str]:
    """(what, value) of a claim key for the operator, e.g. ("fixed IP", "10.0.0.5")."""
    kind, value = key >> _KIND, key & ((1 << _NET) - 1)
    if kind == _MAC:
        text = mac_str(netaddr.EUI(value, version=48))
    elif kind in (_OFPORT, _BLOCK):
        text = str(value)
    else:
        text = str(netaddr.IPAddress(value, version=4))
    return _KIND_NAMES[kind], text


class Claims:
    """claim key -> the port name claiming it, or a set of names only while ports clash over
    it (a set per address would be most of this dict's memory)."""

    def __init__(self):
        self._held: dict[int, str | set[str]] = {}

    def claimants(self, key: int):
        held = self._held.get(key, ())
        return (held,) if isinstance(held, str) else held

    def claim(self, key: int, name: str):
        """Add `name` to the claimants of `key`; returns the others (their clash may flip)."""
        held = self._held.setdefault(key, name)
        if isinstance(held, str):
            if held == name:
                return ()
            self._held[key] = {held, name}
            return (held,)
        others = tuple(held)
        held.add(name)
        return others

    def unclaim(self, key: int, name: str):
        """Drop `name` from the claimants of `key`; returns those left."""
        held = self._held.pop(key)
        if isinstance(held, str):
            if held == name:
                return ()
            self._held[key] = held
            return (held,)
        held.discard(name)
        if len(held) == 1:
            self._held[key] = next(iter(held))
        elif held:
            self._held[key] = held
        return held


class NetworkBook:
    """The named networks ports define: by name, the ports of each definition (two ports
    that define one network differently compete); by id (VLAN), the ports of each network
    name (two networks on one VLAN compete). Usually one definition per name and one name
    per id, so a port's rivals cost nothing to find."""

    def __init__(self):
        self.defs: dict[str, dict[Network, set[str]]] = {}
        self.ids: dict[int, dict[str, set[str]]] = {}

    def add(self, port: str, net: Network) -> set[str]:
        """Record `port` as defining `net`; returns the rivals whose standing may flip."""
        if not net.name:
            return set()
        self.defs.setdefault(net.name, {}).setdefault(net, set()).add(port)
        self.ids.setdefault(net.id, {}).setdefault(net.name, set()).add(port)
        return {p for _, members in self.rivals(net) for p in members}

    def remove(self, port: str, net: Network) -> set[str]:
        if not net.name:
            return set()
        _discard(self.defs, net.name, net, port)
        _discard(self.ids, net.id, net.name, port)
        return {p for _, members in self.rivals(net) for p in members}

    def rivals(self, net: Network) -> Iterator[tuple[str, set[str]]]:
        """(why, ports) of every group competing with `net`."""
        if not net.name:
            return
        for other, members in self.defs.get(net.name, {}).items():
            if other != net:
                yield f"network {net.name} is defined as {_define(other)}", members
        for name, members in self.ids.get(net.id, {}).items():
            if name != net.name:
                what = f"VLAN {net.vlan}" if net.vlan else "the untagged segment"
                yield f"{what} is network {name}'s", members


def _define(net: Network) -> str:
    return f"{net.cidr} gateway {net.gateway} " + (f"VLAN {net.vlan}" if net.vlan else "untagged")


def _discard(book: dict, outer, inner, port: str) -> None:
    group = book.get(outer, {})
    members = group.get(inner)
    if members is None:
        return
    members.discard(port)
    if not members:
        del group[inner]
    if not group:
        del book[outer]


def _rank(port: VmPort) -> tuple[str, str]:
    return port.iface_id, port.name


class Arbiter:
    """The clash rule over the host's valid ports: each claims its addresses and network
    (enter) and gives them back (leave), and loses to the competitor that sorts first
    before it (beaten_by). Only direct competitors are looked at, so a change costs O(1) and
    the answer does not depend on the order of events."""

    def __init__(self, cfg: HostConfig):
        self.cfg = cfg
        self.claims = Claims()
        self.book = NetworkBook()

    def enter(self, name: str, port: VmPort, net: Network) -> set[str]:
        """`port` claims what it holds; returns the other ports whose standing may flip."""
        affected: set[str] = set()
        for key in claim_keys(port, net, self.cfg):
            affected.update(self.claims.claim(key, name))
        return affected | self.book.add(name, net)

    def leave(self, name: str, port: VmPort, net: Network) -> set[str]:
        """`port` (as it was) gives back what it held; returns the ports whose standing may
        flip."""
        affected: set[str] = set()
        for key in claim_keys(port, net, self.cfg):
            affected.update(self.claims.unclaim(key, name))
        return affected | self.book.remove(name, net)

    def fip_claimants(self, fip: str):
        """The ports claiming this FIP (text from a frame: anything at all)."""
        try:
            key = fip_key(netaddr.IPAddress(fip, 4, netaddr.INET_PTON))
        except (netaddr.AddrFormatError, ValueError, TypeError):
            return ()
        return self.claims.claimants(key)

    def beaten_by(self, port: VmPort, net: Network, valid: dict[str, VmPort]) -> str | None:
        """Why `port` loses to the competitor that sorts first before it, if any."""
        best, why = None, None
        for key in claim_keys(port, net, self.cfg):
            for other in self.claims.claimants(key):
                rival = valid[other]
                if (
                    other != port.name
                    and _rank(rival) < _rank(port)
                    and (best is None or _rank(rival) < _rank(best))
                ):
                    what, value = claim_text(key)
                    best, why = rival, f"{what} {value} is already used by"
        for reason, members in self.book.rivals(net):
            for other in members:
                rival = valid[other]
                if _rank(rival) < _rank(port) and (best is None or _rank(rival) < _rank(best)):
                    best, why = rival, reason + ", says"
        if best is None:
            return None
        return f"{why} port {best.name!r} ({best.iface_id}), which wins the tie"
