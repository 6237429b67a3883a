"""A host's desired state, kept up to date one port at a time.

The controller feeds it OVSDB rows as they change; it answers with the flows to add and
delete. Cost per change is O(1) in the number of VMs: only the changed port and the ports
that compete with it are looked at, and only their flows (and, when a network gains its
first port or loses its last, that network's flows) are recompiled.

Clash rule (ovsnat.core.claims; also used by the batch `build_state` below, built on this
class): a valid port is rejected when a direct competitor sorts before it by (iface-id,
name), so two ports never both answer for one address, and a network is always defined one
way. The desired flows are kept packed per owner (ovsnat.core.flowbook); whether each VM
has shown up here is its standing (ovsnat.core.standing), which a new host config keeps.
"""

from __future__ import annotations

from collections.abc import Iterable

from ovsnat.compile import eastwest, flowident
from ovsnat.compile.compiler import port_profile, sort_flows
from ovsnat.compile.flows import Flow
from ovsnat.compile.handoff_flows import gone_flows
from ovsnat.compile.host import host_flows
from ovsnat.compile.portsec import vip_addresses
from ovsnat.compile.sg_owners import SecurityOwners
from ovsnat.compile.vm import fip_responder_key, vm_flows
from ovsnat.core.claims import Arbiter
from ovsnat.core.delta import Delta, diff, flow_key
from ovsnat.core.flowbook import FlowBook
from ovsnat.core.routing_state import RoutingState
from ovsnat.core.security_state import SecurityState
from ovsnat.core.standing import Standing
from ovsnat.core.vips import Vips
from ovsnat.model import DesiredState, HostConfig, Rejection, VmPort
from ovsnat.model.networks import Network
from ovsnat.model.portcheck import check_alone
from ovsnat.model.routing import NO_KEYS, HostRouting
from ovsnat.model.secgroups import NO_GROUPS

HOST = flowident.HOST  # owner key of host-level flows; a network's is ("net", its name)


def net_owner(net: Network) -> tuple[str, str]:
    return ("net", net.name)


class HostState(SecurityState, RoutingState):
    def __init__(self, cfg: HostConfig):
        self.standing = Standing()
        self.security = NO_GROUPS  # the bridge's security groups (kept by set_config)
        self.vips = Vips()  # who holds each allowed-pair address (kept by set_config)
        self.routing = NO_KEYS  # the bridge's routers (kept by set_config)
        self.inert: dict[str, dict] = {}  # port -> its FIPs its network does not serve
        self._reset(cfg)

    def _reset(self, cfg: HostConfig) -> None:
        """Everything compiled from a host config, with no port yet: at start, and before a
        new config's recompile (set_config). The ports' standing is not part of it."""
        self.cfg = cfg
        self.plan = eastwest.NO_PLAN  # east-west (kept by RoutingState.replan)
        self.valid: dict[str, VmPort] = {}  # name -> port valid on its own
        self.invalid: dict[str, str] = {}  # name -> reason (bad alone)
        self.transient: set[str] = set()  # names whose rejection is a passing state
        self.lost: dict[str, str] = {}  # name -> reason (lost a clash)
        self.arbiter = Arbiter(cfg)
        # Owner (HOST, ("net", name), ("gone", name) or a port name) -> its packed flows,
        # cookie owner bits -> owner, and who holds each (table, priority, match).
        self.desired = FlowBook()
        self.wire, self.owner_names = self.desired.wire, self.desired.owner_names
        self.idents = self.desired.idents
        self.members: dict[str, set[str]] = {}  # network name -> accepted ports in it
        self.in_net: dict[str, str] = {}  # accepted port -> its network's name
        self.nets: dict[str, Network] = {}  # network name -> its definition here
        self.by_ofport: dict[int, str] = {}
        # Kept by _refresh (every change of a port's standing passes through it), so the
        # status the controller publishes after each change costs O(1), not a scan of 10,000.
        self.accepted_fips: set[str] = set()  # accepted ports with a FIP
        self.pending: set[str] = set()  # of those, the ones whose FIP is still dark
        self.sg = SecurityOwners(self.security)  # profiles, remote groups, their members
        self._store(HOST, host_flows(cfg))
        if cfg.default_network is not None:  # always there, ports or not
            self.nets[""] = cfg.default_network
            default = cfg.default_network
            self._store(net_owner(default), self.net_flows(default))

    # --- queries --------------------------------------------------------------------------
    @property
    def accepted(self) -> list[VmPort]:
        return sorted(
            (p for n, p in self.valid.items() if n not in self.lost), key=lambda p: p.name
        )

    @property
    def rejected(self) -> list[Rejection]:
        reasons = {**self.invalid, **self.lost}
        return [Rejection(n, reasons[n], n in self.transient) for n in sorted(reasons)]

    def counts(self) -> tuple[int, int, list[str]]:
        """(accepted VMs, accepted FIP VMs, pending FIP port names) without a scan."""
        return len(self.valid) - len(self.lost), len(self.accepted_fips), sorted(self.pending)

    def net(self, port: VmPort) -> Network | None:
        return port.net(self.cfg)

    def accepted_port(self, name: str) -> VmPort | None:
        port = self.valid.get(name)
        return port if port is not None and name not in self.lost else None

    def live_fip(self, name: str) -> str | None:
        """The port's FIP, when this host answers and translates it (its flows compiled
        live: accepted, not dark, not held inert by its network's routing)."""
        port = self.valid.get(name)
        if port is None or port.fip is None or name in self.lost or not self._active(name):
            return None
        return str(port.fip)

    def is_pending(self, name: str) -> bool:
        """A FIP port whose FIP is still dark, waiting for the VM to show up."""
        port = self.valid.get(name)
        return (
            port is not None
            and port.fip is not None
            and name not in self.lost
            and not self._active(name)
        )

    def fip_owner(self, fip: str) -> str | None:
        """The accepted port holding this FIP here, if any."""
        for name in self.arbiter.fip_claimants(fip):
            if name not in self.lost:
                return name
        return None

    def _active(self, name: str) -> bool:
        return name in self.standing.active or (
            self.cfg.fip_activation == "immediate" and name not in self.standing.yielded
        )

    def owner_keys(self, owner) -> list[tuple[int, int]]:
        """The (table, cookie) keys of one owner's desired flows."""
        return self.desired.keys(owner)

    def all_keys(self) -> set[tuple[int, int]]:
        return self.desired.all_keys()

    def owner_flows(self, owner) -> list[Flow]:
        """Recompile one owner's desired flows (those it holds: flowident). Settled again
        only when a cookie was salted: each desired key is then not one compiled flow's."""
        keys, flows = set(self.owner_keys(owner)), self._compile(owner)
        plain = [f for f in flows if (f.table, f.cookie) in keys]
        if len(plain) == len(keys) == len({(f.table, f.cookie) for f in plain}):
            return plain
        return [f for f, _, _ in flowident.settle(flows).kept if (f.table, f.cookie) in keys]

    def _compile(self, owner) -> list[Flow]:
        if owner is HOST:
            return host_flows(self.cfg)
        if isinstance(owner, tuple) and owner[0] in ("sgp", "sgg", "sgm"):
            return self.sg.flows(owner)
        if isinstance(owner, tuple) and owner[0] == "vip":
            return self._vip_flows(owner[1])
        if isinstance(owner, tuple) and owner[0] in ("ew", "hostmacs"):
            return self.ew_flows(owner)
        if isinstance(owner, tuple) and owner[0] == "gone":
            port = self.standing.departed.get(owner[1])
            return gone_flows(self.cfg, port, self.net(port)) if port is not None else []
        if isinstance(owner, tuple):
            net = self.nets.get(owner[1])
            return self.net_flows(net) if net is not None else []
        port = self.valid.get(owner)
        if port is None or owner in self.lost:
            return []
        return self._vm_flows(owner, port)

    def _vm_flows(self, name: str, port: VmPort) -> list[Flow]:
        return vm_flows(
            self.cfg,
            port,
            self.net(port),
            active=self._active(name),
            arrived=name in self.standing.arrived,
            copies=self.standing.copies(name),
            vips=self._vips(name, port),
        )

    def flows_for(self, keys: set[tuple[int, int]]) -> list[Flow]:
        """The flows with these keys (recompiling only their owners)."""
        return list(self.iter_flows_for(keys))

    def iter_flows_for(self, keys: set[tuple[int, int]]):
        """Like flows_for, one owner at a time (a full sync never holds all flows)."""
        for owner in self.desired.owners_of(keys):
            for f in self.owner_flows(owner):
                if flow_key(f) in keys:
                    yield f

    def all_flows(self) -> list[Flow]:
        return sort_flows(f for owner in self.wire for f in self.owner_flows(owner))

    def iter_wire_for(self, keys: set[tuple[int, int]]):
        """(key, packed flow_mod) for these keys, straight from the packed cache."""
        return self.desired.iter_wire_for(keys)

    # --- changes --------------------------------------------------------------------------
    def set_config(self, cfg: HostConfig) -> Delta:
        """A new host config (a learned gateway MAC, the SNAT IP, the uplink's or fabric's
        ofport): recompile everything, keeping which FIPs are live or yielded here."""
        old = sorted(self.all_keys())
        ports, invalid, transient = dict(self.valid), dict(self.invalid), set(self.transient)
        inert = dict(self.inert)  # the ports below are given as served: their FIPs gone
        kept, self.standing = self.standing, Standing()
        self._reset(cfg)
        for name, port in ports.items():
            self.update(name, port)  # a port new to this state is not live yet...
        self.standing = kept.of(set(self.valid))
        for name in sorted(self.standing.marked()):
            self._refresh(name)  # ...so restore what was, and recompile those
        for name, port in kept.departed.items():
            self.depart(name, port)
        self.invalid.update(invalid)
        self.transient = transient & set(self.invalid)
        self.inert = inert
        return diff(old, self.all_flows(), {HOST, *ports})

    def update(self, name: str, port: VmPort | Rejection | None) -> Delta:
        """Port `name` is now `port` (parsed row), a Rejection (unparseable row) or None
        (gone). Returns the flows to delete and add."""
        port = self._served(name, port)
        if isinstance(port, VmPort) and self.valid.get(name) == port:
            return Delta()  # nothing this port's flows depend on changed
        affected = {name}
        old = self.valid.pop(name, None)
        if old is not None and self.by_ofport.get(old.ofport) == name:
            del self.by_ofport[old.ofport]
        if port is None or isinstance(port, Rejection) or old is None or old.ofport != port.ofport:
            self.standing.forget(name)  # gone, or a new device: the VM must show up (again)
        if old is not None:
            affected |= self.arbiter.leave(name, old, self.net(old))
        if not isinstance(port, VmPort):
            affected |= self.vips.forget(name)
        self.invalid.pop(name, None)
        self.transient.discard(name)
        if isinstance(port, Rejection):
            self.invalid[name] = port.reason
            if port.transient:
                self.transient.add(name)
        elif port is not None:
            self._add(name, port, affected)
        return self._refresh_all(affected)

    def _add(self, name: str, port: VmPort, affected: set[str]) -> None:
        reason = check_alone(self.cfg, port)
        if reason:
            self.invalid[name] = reason
            return
        self.valid[name] = port
        self.by_ofport[port.ofport] = name
        singles = tuple(str(ip) for ip in vip_addresses(port))
        affected |= self.vips.track(name, self.net(port).name, singles)
        affected |= self.arbiter.enter(name, port, self.net(port))

    def activate(self, name: str) -> Delta:
        """The VM showed up here: light its FIP."""
        self.standing.yielded.discard(name)
        self.standing.heard.discard(name)
        self.standing.active.add(name)
        return self._refresh(name)

    def yield_fip(self, name: str) -> Delta:
        """Another host announced this port's FIP: go dark until the VM announces itself
        here again (RARP/GARP), or nobody answers for it any more."""
        self.standing.active.discard(name)
        self.standing.heard.discard(name)
        self.standing.yielded.add(name)
        return self._refresh(name)

    def hear(self, name: str, heard: bool) -> Delta:
        """Stop (or resume) copying a dark FIP's frames up: what they could prove is known."""
        if (name in self.standing.heard) == heard:
            return Delta()
        (self.standing.heard.add if heard else self.standing.heard.discard)(name)
        return self._refresh(name)

    def set_arrived(self, name: str, arrived: bool) -> Delta:
        """A PAT VM's arrival grace begins or ends (ovsnat.core.handoff)."""
        (self.standing.arrived.add if arrived else self.standing.arrived.discard)(name)
        return self._refresh(name)

    def depart(self, name: str, port: VmPort) -> Delta:
        """A PAT VM left: its handoff flows, until end_departure. Its network's flows stay
        meanwhile (its sessions go through the network's zone)."""
        self.standing.departed[name] = port
        delta = self._store(("gone", name), gone_flows(self.cfg, port, self.net(port)))
        delta.extend(self._membership(("gone", name), self.net(port)))
        return delta

    def end_departure(self, name: str) -> Delta:
        self.standing.departed.pop(name, None)
        delta = self._store(("gone", name), [])
        delta.extend(self._membership(("gone", name), None))
        return delta

    def adopt_installed(self, installed: set) -> list[str]:
        """After a controller restart: FIPs whose ARP responder is still on the switch were
        active before, so they stay active (no flap, no new activation needed)."""
        adopted = []
        for name, port in self.valid.items():
            if (
                port.fip is not None
                and self.is_pending(name)
                and fip_responder_key(self.cfg, port, self.net(port)) in installed
            ):
                self.standing.active.add(name)
                self._refresh(name)
                adopted.append(name)
        return adopted

    def _refresh(self, name: str) -> Delta:
        """Re-decide whether `name` wins its clashes and recompile its flows (and its
        network's, when it is the network's first or last port here)."""
        self.lost.pop(name, None)
        port = self.valid.get(name)
        new: list[Flow] = []
        if port is not None:
            beaten = self.beaten_by(port)
            if beaten:
                self.lost[name] = f"port {port.name!r} ({port.iface_id}): {beaten}"
            else:
                new = self._vm_flows(name, port)
        self._count(name, port)
        delta = self._store(name, new)
        profile = port_profile(port) if new else None
        zone = (port.sg_zone, str(port.fixed_ip)) if profile is not None else (0, "")
        delta.extend(self._store_sg(self.sg.use(name, profile, *zone)))
        delta.extend(self._membership(name, self.net(port) if new else None))
        return delta

    def _store(self, owner, new: list[Flow]) -> Delta:
        """`owner`'s flows are now `new`; owners that lose a flow to it or regain one from
        it (ovsnat.compile.flowident) are recompiled and stored too."""
        delta, restore = self.desired.store(owner, new)
        for other in restore:
            delta.extend(self._store(other, self._compile(other)))
        return delta

    def _membership(self, name: str, net: Network | None) -> Delta:
        """A named network's flows exist while it has an accepted port here."""
        delta = Delta()
        was = self.in_net.pop(name, None)
        if was is not None and (net is None or was != net.name):
            members = self.members[was]
            members.discard(name)
            if not members:
                del self.members[was]
                del self.nets[was]
                delta.extend(self._store(("net", was), []))
                delta.extend(self.replan())
        if net is not None and net.name:
            members = self.members.setdefault(net.name, set())
            if not members:
                self.nets[net.name] = net
                delta.extend(self.replan(skip={net.name}))
                delta.extend(self._store(net_owner(net), self.net_flows(net)))
            members.add(name)
            self.in_net[name] = net.name
        return delta

    def _count(self, name: str, port: VmPort | None) -> None:
        has_fip = port is not None and port.fip is not None and name not in self.lost
        for members, now in (
            (self.accepted_fips, has_fip),
            (self.pending, has_fip and not self._active(name)),
        ):
            if now:
                members.add(name)
            else:
                members.discard(name)

    def beaten_by(self, port: VmPort) -> str | None:
        """Why `port` loses to the competitor that sorts first before it, if any."""
        return self.arbiter.beaten_by(port, self.net(port), self.valid)


def build_state(
    cfg: HostConfig, ports: Iterable[VmPort | Rejection], routing: HostRouting = NO_KEYS
) -> DesiredState:
    """Accept every port that is valid on its own and wins its clashes. The same code path
    as the controller's incremental updates, so the offline compile and a live host agree."""
    host = HostState(cfg)
    host.set_routing(routing)
    for i, port in enumerate(ports):
        host.update(port.name if port.name else f"#{i}", port)
    return DesiredState(cfg, tuple(host.accepted), tuple(host.rejected), routing=routing)
