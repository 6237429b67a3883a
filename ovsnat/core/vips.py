"""Who holds an allowed-address-pair address (a VIP, as keepalived moves one between VMs):
learned from ARP, the way a switch learns it. A local port's ARP from one of its
single-address pairs (a master's gratuitous ARP) makes it the holder here; the same address
in an ARP from the fabric means another host's VM holds it now. The holder gets the VIP
delivered (and the VIP's FIP, when it has one, goes live on this host); other local ports
with the pair get nothing for it while it is held anywhere, and all of them get it (the first
by name) while nobody has spoken from it yet.
"""

from __future__ import annotations

from ovsnat.compile.portsec import ELSEWHERE, HELD, UNKNOWN


class Vips:
    def __init__(self):
        self.holder: dict[tuple[str, str], str] = {}  # (network, vip) -> port, "" elsewhere
        self.ports: dict[tuple[str, str], set[str]] = {}  # (network, vip) -> local pair ports
        self.dirty: set[str] = set()  # addresses whose ports changed: their shared flows too

    def track(self, name: str, net: str, vips: tuple[str, ...]) -> set[str]:
        """Port `name` (in network `net`) has these single-address pairs now; the other
        ports whose flows change (a VIP it held and no longer has)."""
        touched = set()
        for key, names in list(self.ports.items()):
            if name in names and (key[0] != net or key[1] not in vips):
                touched |= self._drop(name, key)
        for vip in vips:
            self.ports.setdefault((net, vip), set()).add(name)
        self.dirty.update(vips)
        return touched - {name}

    def forget(self, name: str) -> set[str]:
        """A port gone: the VIPs it held are nobody's here; their other ports change."""
        touched = set()
        for key in [k for k, names in self.ports.items() if name in names]:
            touched |= self._drop(name, key)
        return touched - {name}

    def _drop(self, name: str, key) -> set[str]:
        names = self.ports[key]
        names.discard(name)
        self.dirty.add(key[1])
        if not names:
            del self.ports[key]
        if self.holder.get(key) == name:
            del self.holder[key]
            return set(names)
        return set()

    def seen(self, name: str, net: str, vip: str) -> set[str]:
        """Port `name` spoke from `vip`: the ports whose flows change (none if it held it)."""
        key = (net, vip)
        if name not in self.ports.get(key, ()) or self.holder.get(key) == name:
            return set()
        self.holder[key] = name
        self.dirty.add(vip)
        return set(self.ports[key])

    def elsewhere(self, vip: str) -> set[str]:
        """Another host's VM spoke from `vip` (its ARP came over the fabric)."""
        touched = set()
        for key, names in self.ports.items():
            if key[1] == vip and self.holder.get(key) != "":
                self.holder[key] = ""
                self.dirty.add(vip)
                touched |= names
        return touched

    def take_dirty(self) -> set[str]:
        dirty, self.dirty = self.dirty, set()
        return dirty

    def ports_of(self, vip: str) -> set[str]:
        """The local ports that have `vip` as a pair, in any network."""
        return {n for (_, v), names in self.ports.items() if v == vip for n in names}

    def state(self, name: str, net: str, vip: str) -> str:
        holder = self.holder.get((net, vip))
        if holder is None:
            return UNKNOWN
        return HELD if holder == name else ELSEWHERE

    def status(self) -> dict:
        return {
            f"{vip} ({net or 'default'})": holder or "another host"
            for (net, vip), holder in sorted(self.holder.items())
        }
