"""A host's desired state, kept up to date one port at a time.

The controller feeds it OVSDB rows as they change; it answers with the flows to add and
delete. Cost per change is O(1) in the number of VMs: only the changed port and the ports
that share an address with it are looked at, and only their flows are recompiled.

Clash rule (also used by the batch `build_state` below, which is built on this class): a
valid port is rejected when another valid port that shares one of its addresses (fixed IP,
MAC, ofport, FIP) sorts before it by (iface-id, name). The rule looks only at a port's
direct competitors, so it gives the same answer whatever order the events came in, and two
ports never both answer for one address.
"""

from __future__ import annotations

import netaddr

from typing import Iterable

from ovsnat import ofwire
from ovsnat.compiler import fip_responder_key, host_flows, sort_flows, vm_flows
from ovsnat.delta import Delta, diff, flow_key
from ovsnat.flows import COOKIE_HOST, COOKIE_VM, Flow, owner_cookie
from ovsnat.model import DesiredState, HostConfig, PortError, Rejection, VmPort, mac_str
from ovsnat.pipeline import check_flows

HOST = "host"          # owner key of host-level flows


def _pack(flows: list[Flow]) -> bytes:
    """Packed once, when they change; held to the declared pipeline first (the controller's
    runtime path is checked as the batch compile is)."""
    check_flows(flows)
    return b"".join([ofwire.flow_add(f, 0) for f in flows])


# An address a port claims, as one int: the kind above bit 48 (a MAC has 48 bits), the value
# below. 40,000 claims at 10,000 VMs cost an int each, not a tuple of two strings.
_FIXED_IP, _MAC, _OFPORT, _FIP = range(4)
_KIND_NAMES = ("fixed IP", "MAC", "ofport", "FIP")
_KIND_SHIFT = 48


def _claim_keys(port: VmPort) -> list[int]:
    keys = [_FIXED_IP << _KIND_SHIFT | int(port.fixed_ip), _MAC << _KIND_SHIFT | int(port.mac),
            _OFPORT << _KIND_SHIFT | port.ofport]
    if port.fip is not None:
        keys.append(_FIP << _KIND_SHIFT | int(port.fip))
    return keys


def _claim_text(key: int) -> tuple[str, str]:
    """(what, value) of a claim key for the operator, e.g. ("fixed IP", "10.0.0.5")."""
    kind, value = key >> _KIND_SHIFT, key & ((1 << _KIND_SHIFT) - 1)
    if kind == _MAC:
        text = mac_str(netaddr.EUI(value, version=48))
    elif kind == _OFPORT:
        text = str(value)
    else:
        text = str(netaddr.IPAddress(value, version=4))
    return _KIND_NAMES[kind], text


def _rank(port: VmPort) -> tuple[str, str]:
    return port.iface_id, port.name


class HostState:
    def __init__(self, cfg: HostConfig):
        self.cfg = cfg
        self.valid: dict[str, VmPort] = {}          # name -> port valid on its own
        self.invalid: dict[str, str] = {}           # name -> reason (bad alone)
        self.transient: set[str] = set()            # names whose rejection is a passing state
        self.lost: dict[str, str] = {}              # name -> reason (lost a clash)
        # claim key (_claim_keys) -> the port name claiming it, or a set of names only while
        # ports clash over it (a set per address would be most of this dict's memory).
        self.claims: dict[int, str | set[str]] = {}
        # owner (HOST or port name) -> its flow_mods, packed (xid 0) and concatenated in
        # compile order. The flows are packed once, when they change, not at every sync: a
        # controller that (re)connects only slices bytes (about 150 bytes a flow; no Flow
        # objects kept). Keys are read back from the bytes (ofwire.flow_mod_keys).
        self.wire: dict[str, bytes] = {HOST: _pack(host_flows(cfg))}
        self.owner_names: dict[int, str] = {}    # cookie owner bits -> port name
        self.active: set[str] = set()     # FIP ports whose VM has shown up on this host
        self.yielded: set[str] = set()    # FIP ports that gave their FIP to another host
        self.by_ofport: dict[int, str] = {}
        # Kept by _refresh (every change of a port's standing passes through it), so the
        # status the controller publishes after each change costs O(1), not a scan of 10,000.
        self.accepted_fips: set[str] = set()    # accepted ports with a FIP
        self.pending: set[str] = set()          # of those, the ones whose FIP is still dark

    # --- queries --------------------------------------------------------------------------
    @property
    def accepted(self) -> list[VmPort]:
        return sorted((p for n, p in self.valid.items() if n not in self.lost),
                      key=lambda p: p.name)

    @property
    def rejected(self) -> list[Rejection]:
        reasons = {**self.invalid, **self.lost}
        return [Rejection(n, reasons[n], n in self.transient) for n in sorted(reasons)]

    def counts(self) -> tuple[int, int, list[str]]:
        """(accepted VMs, accepted FIP VMs, pending FIP port names) without a scan."""
        return len(self.valid) - len(self.lost), len(self.accepted_fips), sorted(self.pending)

    def is_pending(self, name: str) -> bool:
        """A FIP port whose FIP is still dark, waiting for the VM to show up."""
        port = self.valid.get(name)
        return port is not None and port.fip is not None and name not in self.lost and \
            not self._active(name)

    def fip_owner(self, fip: str) -> str | None:
        """The accepted port holding this FIP here, if any."""
        try:
            key = _FIP << _KIND_SHIFT | int(netaddr.IPAddress(fip, 4, netaddr.INET_PTON))
        except (netaddr.AddrFormatError, ValueError, TypeError):
            return None
        for name in self._claimants(key):
            if name not in self.lost:
                return name
        return None

    def _claimants(self, key: int):
        held = self.claims.get(key, ())
        return (held,) if isinstance(held, str) else held

    def _active(self, name: str) -> bool:
        return name in self.active or (self.cfg.fip_activation == "immediate" and
                                       name not in self.yielded)

    def owner_keys(self, owner: str) -> list[tuple[int, int]]:
        """The (table, cookie) keys of one owner's desired flows (HOST or a port name)."""
        return ofwire.flow_mod_keys(self.wire.get(owner, b""))

    def all_keys(self) -> set[tuple[int, int]]:
        keys: set = set()
        for packed in self.wire.values():
            keys.update(ofwire.flow_mod_keys(packed))
        return keys

    def owner_flows(self, owner: str) -> list[Flow]:
        """Recompile one owner's flows (HOST or a port name)."""
        if owner == HOST:
            return host_flows(self.cfg)
        port = self.valid.get(owner)
        if port is None or owner in self.lost:
            return []
        return vm_flows(self.cfg, port, active=self._active(owner))

    def flows_for(self, keys: set[tuple[int, int]]) -> list[Flow]:
        """The flows with these keys (recompiling only their owners)."""
        return list(self.iter_flows_for(keys))

    def iter_flows_for(self, keys: set[tuple[int, int]]):
        """Like flows_for, one owner at a time (a full sync never holds all flows)."""
        for owner in self._owners_of(keys):
            for f in self.owner_flows(owner):
                if flow_key(f) in keys:
                    yield f

    def all_flows(self) -> list[Flow]:
        return sort_flows(f for owner in self.wire for f in self.owner_flows(owner))

    def iter_wire_for(self, keys: set[tuple[int, int]]):
        """(key, packed flow_mod) for these keys, straight from the packed cache."""
        for owner in self._owners_of(keys):
            for key, packed in ofwire.iter_flow_mods(self.wire.get(owner, b"")):
                if key in keys:
                    yield key, packed

    def _owners_of(self, keys: set[tuple[int, int]]) -> list[str]:
        """The known owners of these keys, sorted. Goes through the distinct owner bits
        (cookie >> 24) first: a full sync asks for 115,000 keys of 10,000 owners."""
        prefixes = {c >> 24 for _, c in keys}
        owners = {HOST if p >> 32 == COOKIE_HOST else self.owner_names.get(p)
                  for p in prefixes}
        return sorted(o for o in owners if o)

    # --- changes --------------------------------------------------------------------------
    def set_config(self, cfg: HostConfig) -> Delta:
        """A new host config (a learned gateway MAC, the SNAT IP, the uplink's ofport):
        recompile everything, keeping which FIPs are live or yielded here."""
        old = sorted(self.all_keys())
        ports, invalid, transient = dict(self.valid), dict(self.invalid), set(self.transient)
        active, yielded = set(self.active), set(self.yielded)
        self.__init__(cfg)
        for name, port in ports.items():
            self.update(name, port)      # a port new to this state is not live yet...
        self.active, self.yielded = active & set(self.valid), yielded & set(self.valid)
        for name in sorted(self.active | self.yielded):
            self._refresh(name)          # ...so restore what was, and recompile those
        self.invalid.update(invalid)
        self.transient = transient & set(self.invalid)
        return diff(old, self.all_flows(), {HOST, *ports})

    def update(self, name: str, port: VmPort | Rejection | None) -> Delta:
        """Port `name` is now `port` (parsed row), a Rejection (unparseable row) or None
        (gone). Returns the flows to delete and add."""
        if isinstance(port, VmPort) and self.valid.get(name) == port:
            return Delta()                   # nothing this port's flows depend on changed
        affected = {name}
        old = self.valid.pop(name, None)
        if old is not None and self.by_ofport.get(old.ofport) == name:
            del self.by_ofport[old.ofport]
        if port is None or isinstance(port, Rejection) or old is None or \
                old.ofport != port.ofport:
            # Gone, or a new device: the VM must show up (again) before its FIP answers.
            self.active.discard(name)
            self.yielded.discard(name)
        if old is not None:
            for key in _claim_keys(old):
                affected.update(self._unclaim(key, name))
        self.invalid.pop(name, None)
        self.transient.discard(name)
        if isinstance(port, Rejection):
            self.invalid[name] = port.reason
            if port.transient:
                self.transient.add(name)
        elif port is not None:
            reason = self._check_alone(port)
            if reason:
                self.invalid[name] = reason
            else:
                self.valid[name] = port
                self.by_ofport[port.ofport] = name
                for key in _claim_keys(port):
                    affected.update(self._claim(key, name))
        delta = Delta()
        for n in sorted(affected):
            delta.extend(self._refresh(n))
        return delta

    def activate(self, name: str) -> Delta:
        """The VM showed up here: light its FIP."""
        self.yielded.discard(name)
        self.active.add(name)
        return self._refresh(name)

    def yield_fip(self, name: str) -> Delta:
        """Another host announced this port's FIP: go dark until the VM announces itself
        here again (RARP/GARP)."""
        self.active.discard(name)
        self.yielded.add(name)
        return self._refresh(name)

    def adopt_installed(self, installed: set) -> list[str]:
        """After a controller restart: FIPs whose ARP responder is still on the switch were
        active before, so they stay active (no flap, no new activation needed)."""
        adopted = []
        for name, port in self.valid.items():
            if port.fip is not None and self.is_pending(name) and \
                    fip_responder_key(self.cfg, port) in installed:
                self.active.add(name)
                self._refresh(name)
                adopted.append(name)
        return adopted

    def _claim(self, key: int, name: str):
        """Add `name` to the claimants of `key`; returns the others (their clash may flip)."""
        held = self.claims.setdefault(key, name)
        if isinstance(held, str):
            if held == name:
                return ()
            self.claims[key] = {held, name}
            return (held,)
        others = tuple(held)
        held.add(name)
        return others

    def _unclaim(self, key: int, name: str):
        """Drop `name` from the claimants of `key`; returns those left (a lone one is stored
        as a plain name again)."""
        held = self.claims.pop(key)
        if isinstance(held, str):
            if held == name:
                return ()
            self.claims[key] = held
            return (held,)
        held.discard(name)
        if len(held) == 1:
            self.claims[key] = next(iter(held))
        elif held:
            self.claims[key] = held
        return held

    def _check_alone(self, port: VmPort) -> str | None:
        try:
            port.check(self.cfg)
            if port.fip is None and self.cfg.pat_ports_per_vm:
                lo, hi = port.pat_block(self.cfg)
                if hi > self.cfg.snat_port_max:
                    raise PortError(
                        f"port {port.name!r} ({port.iface_id}): PAT block {lo}-{hi} for "
                        f"{port.fixed_ip} does not fit snat_port_max {self.cfg.snat_port_max}; "
                        "lower pat_ports_per_vm or widen the range")
        except PortError as e:
            return str(e)
        return None

    def _refresh(self, name: str) -> Delta:
        """Re-decide whether `name` wins its clashes and recompile its flows."""
        self.lost.pop(name, None)
        port = self.valid.get(name)
        new: list[Flow] = []
        if port is not None:
            beaten = self._beaten_by(port)
            if beaten:
                key, winner = beaten
                what, value = _claim_text(key)
                self.lost[name] = (f"port {port.name!r} ({port.iface_id}): {what} {value} is "
                                   f"already used by port {winner.name!r} ({winner.iface_id}), "
                                   "which wins the tie")
            else:
                new = vm_flows(self.cfg, port, active=self._active(name))
        self._count(name, port)
        old = ofwire.flow_mod_keys(self.wire.pop(name, b""))
        if new:
            self.wire[name] = _pack(new)
            self.owner_names[new[0].cookie >> 24] = name
        elif old and self.owner_names.get(old[0][1] >> 24) == name:
            del self.owner_names[old[0][1] >> 24]
        return diff(old, new, {name})

    def _count(self, name: str, port: VmPort | None) -> None:
        has_fip = port is not None and port.fip is not None and name not in self.lost
        for members, now in ((self.accepted_fips, has_fip),
                             (self.pending, has_fip and not self._active(name))):
            if now:
                members.add(name)
            else:
                members.discard(name)

    def _beaten_by(self, port: VmPort):
        """The first (key, competitor) that sorts before `port`, if any."""
        best = None
        for key in _claim_keys(port):
            for other in self._claimants(key):
                if other == port.name:
                    continue
                rival = self.valid[other]
                if _rank(rival) < _rank(port) and (best is None or _rank(rival) < _rank(best[1])):
                    best = (key, rival)
        return best


def vm_owner_cookie(port: VmPort) -> int:
    return owner_cookie(COOKIE_VM, int(port.fixed_ip))


def build_state(cfg: HostConfig, ports: Iterable[VmPort | Rejection]) -> DesiredState:
    """Accept every port that is valid on its own and wins its clashes. The same code path
    as the controller's incremental updates, so the offline compile and a live host agree."""
    host = HostState(cfg)
    for i, port in enumerate(ports):
        host.update(port.name if port.name else f"#{i}", port)
    return DesiredState(cfg, tuple(host.accepted), tuple(host.rejected))
