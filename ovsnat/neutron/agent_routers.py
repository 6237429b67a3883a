"""The agent's routers (docs/routers.md): each local port's network's router attachment
(`ovsnat-net-<network>`) and what that router reaches (`ovsnat-router-<id>`), on the Bridge
row, fetched from the driver's endpoint (ovsnat.neutron.server_routers) and re-fetched when
the server casts that a network's routing changed. For east-west routing, also the other
networks of those routers with their neighbours (`ovsnat-nb-<network>`), this host's name
(`ovsnat-host`) and every host's routed MAC (`ovsnat-hostmac-<host>`): a cast about one of
those networks, or about the hosts, fetches the local networks it concerns again.

Order of writes, as for security groups (agent_sg), so the controller never sees a Neutron
port without its network's key (a network without one is routed as before routers): the
keys a pass needs are written before the ports' keys, a port whose network's routing is not
known yet keeps its old keys until it is (covers()), and keys no local port needs any more
are removed after the ports' keys, only after a pass in which Neutron answered for every
local port.
"""

from __future__ import annotations

import threading

import oslo_messaging
from oslo_log import log

from ovsnat.model.externals import EXT_PREFIX
from ovsnat.neutron import routers as rt
from ovsnat.neutron.agent_rpc import CALL_TIMEOUT, NamespacedApi
from ovsnat.neutron.keys import KeyDiff, unwritten

LOG = log.getLogger(__name__)
GET = "get_routing"
NETWORK = "ovsnat-network"  # the port key naming its network (the Neutron network id)
FIP_LIVE = "ovsnat-fip-live"  # the controller's marker: the port's FIP live here


class RouterApi(NamespacedApi):
    """Client of server_routers.RouterRpc (ovsnat's server topic, its own namespace)."""

    def __init__(self) -> None:
        super().__init__(rt.RPC_NAMESPACE, rt.RPC_VERSION)

    def get_routing(
        self, context, host: str, network_ids: list[str], timeout: float = CALL_TIMEOUT
    ) -> dict:
        return self._call(context, GET, timeout, host=host, network_ids=network_ids)

    def fip_status(self, context, host: str, ports: dict, timeout: float = CALL_TIMEOUT) -> None:
        self._call(context, "fip_status", timeout, host=host, ports=ports)


class RouterPushEndpoint:
    """Receives the server's casts on ovsnat's agent topic (namespace ovsnat-routers)."""

    target = oslo_messaging.Target(namespace=rt.RPC_NAMESPACE, version=rt.RPC_VERSION)

    def __init__(self, mark) -> None:
        self._mark = mark

    def routing_changed(self, context, networks=()) -> None:
        self._mark(list(networks))

    def hosts_changed(self, context) -> None:
        self._mark([], hosts=True)


def port_network(keys: dict | None) -> str | None:
    return (keys or {}).get(NETWORK) or None


class RouterSync:
    """The routers part of the agent's loop (called from its loop thread only, but for
    mark(), which RPC threads call). `api`: RouterApi, given by tests."""

    def __init__(self, agent, api=None) -> None:
        self.agent = agent
        self.api = api or RouterApi()
        self.endpoint = RouterPushEndpoint(self.mark)
        self.lock = threading.Lock()
        self.dirty: set[str] = set()
        self.hosts_dirty = False
        # network id -> its value: the networks local ports name, and the other networks of
        # their routers (peers)
        self.nets: dict[str, str] = {}
        self.routers: dict[str, str] = {}  # router id -> its value (the routers they name)
        self.neighbours: dict[str, str] = {}  # routed network id -> its ovsnat-nb- value
        self.hostmacs: dict[str, str] = {}  # host -> its routed MAC
        self.externals: dict[str, str] = {}  # external network id -> its value
        self.physnets: dict[str, str | None] = {}  # external network id -> its physnet
        self.warned: set[str] = set()  # external networks said to be on another physnet
        self.wanted: dict[str, str] = {}  # the Bridge keys of the last pass
        self.fips_told: dict[str, str] = {}  # port id -> the live FIP Neutron was told

    def mark(self, networks: list[str], hosts: bool = False) -> None:
        with self.lock:
            self.dirty.update(networks)
            self.hosts_dirty |= hosts
        self.agent.wake.set()

    def own(self, local: set[str]) -> set[str]:
        """The networks the keys Neutron gave for the ports on the bridge name."""
        return {n for pid in local for n in [port_network(self.agent.desired.get(pid))] if n}

    def covers(self, keys: dict | None) -> bool:
        """The port's network's routing is known (so it is on the Bridge by the time the
        port's keys are written); a port without a network needs none."""
        net = port_network(keys)
        return net is None or (net in self.nets and self._held(self.nets[net]))

    def on_bridge(self, snap) -> bool:
        """Every routing key known here is on the Bridge as known (covers() reads memory,
        which before_ports writes in the same pass; a port written before that needs this)."""
        return not unwritten(snap.bridge_ids, self.wanted)

    # --- a pass ----------------------------------------------------------------------------
    def before_ports(self, snap, full: bool) -> bool:
        """Fetch the networks that are new, changed, on the router of a changed peer or (at
        a full sync, or when the hosts changed) all, then write the keys that are new or
        changed (removals wait for after_ports)."""
        own = self.own(set(snap.rows))
        with self.lock:
            dirty, self.dirty = self.dirty, set()
            hosts, self.hosts_dirty = self.hosts_dirty, False
        full |= hosts
        fetch = own if full else (own - set(self.nets)) | (own & self._concerned(dirty))
        ok = self._fetch(sorted(fetch), dirty, hosts, full)
        self._prune(own)
        if not own:  # nothing routed here: no host keys either (fetched with a network)
            self.hostmacs = {}
        named = {r for r in map(rt.named_router, self.nets.values()) if r}
        complete = own <= set(self.nets) and named <= set(self.routers)
        nets = self.nets if complete else {n: v for n, v in self.nets.items() if self._held(v)}
        exts, own = self._externals()
        self.wanted = rt.bridge_keys(
            nets, self.routers, self.neighbours, self.agent.host, self.hostmacs, exts, own
        )
        changed = unwritten(snap.bridge_ids, self.wanted)
        return self._write(KeyDiff(changed, ())) and ok and complete

    def _externals(self) -> tuple[dict[str, str], tuple[str, str] | None]:
        """The external networks to write: those on the uplink's wire (the physnet of the
        host's own network, which goes as the controller's untagged one), none until that
        is known (after_ports then keeps the ones on the Bridge)."""
        own = self.agent.own_external
        if own is None:
            return {}, None
        exts = {}
        for e, v in sorted(self.externals.items()):
            if e == own[0]:
                continue
            if self.physnets.get(e) == own[2]:
                exts[e] = v
            elif e not in self.warned:
                self.warned.add(e)
                LOG.warning(
                    "external network %s is on physnet %s, not the uplink's (%s): "
                    "its routers get no PAT and no FIP here",
                    e,
                    self.physnets.get(e),
                    own[2],
                )
        return exts, (own[0], own[1])

    def _concerned(self, dirty: set[str]) -> set[str]:
        """The networks a cast about `dirty` concerns: those, and every network on the
        router of one of them (its peers' keys come with a local network's answer)."""
        routers = {rt.named_router(self.nets[n]) for n in dirty if n in self.nets} - {None}
        return dirty | {n for n, v in self.nets.items() if rt.named_router(v) in routers}

    def _prune(self, own: set[str]) -> None:
        """Keep the local networks, the routers they name and those routers' networks."""
        named = {r for n in own if n in self.nets for r in [rt.named_router(self.nets[n])] if r}
        self.nets = {n: v for n, v in self.nets.items() if n in own or rt.named_router(v) in named}
        self.routers = {r: v for r, v in self.routers.items() if r in named}
        exts = {rt.router_external(v) for v in self.routers.values()}
        self.externals = {e: v for e, v in self.externals.items() if e in exts}
        self.neighbours = {
            n: v for n, v in self.neighbours.items() if rt.named_router(self.nets.get(n)) in named
        }

    def _held(self, value: str) -> bool:
        """A network's value may be written: it names no router, or one whose value is
        known (a router's key goes with or before its networks')."""
        rid = rt.named_router(value)
        return rid is None or rid in self.routers

    def after_ports(self, snap) -> bool:
        """Remove the routing keys no local port needs any more (only after a pass in which
        Neutron answered for every row)."""
        if any(pid not in self.agent.desired for pid in snap.rows):
            return False
        held = self.agent.own_external is None  # external networks not known yet: kept
        gone = tuple(
            k
            for k in snap.bridge_ids
            if rt.is_routing_key(k)
            and k not in self.wanted
            and not (held and k.startswith(EXT_PREFIX))
        )
        return self._write(KeyDiff({}, gone))

    def report_fips(self, snap, full: bool) -> bool:
        """Tell Neutron which FIPs the controller has live here (`ovsnat-fip-live`), when
        that changed since it was last told (everything at a full sync): it sets them
        ACTIVE, or DOWN (ovsnat.neutron.server_routers.fip_status)."""
        live = {pid: row.external_ids.get(FIP_LIVE, "") for pid, row in snap.rows.items()}
        told = {} if full else {p: v for p, v in self.fips_told.items() if p in live}
        changed = {p: v for p, v in live.items() if told.get(p, None if full else "") != v}
        if not changed:
            self.fips_told = told
            return True
        agent = self.agent
        if not agent.health.neutron_ok or agent._held("fip_status"):
            return False
        try:
            self.api.fip_status(agent.context, agent.host, changed, agent.health.call_timeout())
        except Exception as e:
            agent._failed("fip_status", e)
            return False
        agent._answered("fip_status")
        self.fips_told = {**told, **changed}
        return True

    def _fetch(self, network_ids: list[str], dirty: set[str], hosts: bool, full: bool) -> bool:
        if not network_ids:
            return True
        agent = self.agent
        if not agent.health.neutron_ok or agent._held(GET):
            self._requeue(dirty, hosts)
            return False
        try:
            answer = self.api.get_routing(
                agent.context, agent.host, network_ids, agent.health.call_timeout()
            )
        except Exception as e:
            agent._failed(GET, e)
            self._requeue(dirty, hosts)
            return False
        agent._answered(GET)
        self._take(set(network_ids), answer, full)
        return True

    def _take(self, asked: set[str], answer: dict, full: bool) -> None:
        """An answer is whole for the networks asked and the routers holding them: their
        peers not in it are no longer theirs (a peer detached, or now on another router)."""
        routers = set(answer.get("routers", {}))
        if full:
            self.nets, self.neighbours = {}, {}
        stale = {n for n, v in self.nets.items() if n in asked or rt.named_router(v) in routers}
        self.nets = {n: v for n, v in self.nets.items() if n not in stale}
        self.neighbours = {n: v for n, v in self.neighbours.items() if n not in stale}
        self.nets.update(answer.get("networks", {}))
        self.routers.update(answer.get("routers", {}))
        self.neighbours.update(answer.get("neighbours", {}))
        for ext in {rt.router_external(v) for v in answer.get("routers", {}).values()} - {None}:
            self.externals.pop(ext, None)  # the answer is whole for its routers' gateways
        self.externals.update(answer.get("externals", {}))
        self.physnets.update(answer.get("external_physnets", {}))
        if answer.get("hostmacs") or full:
            self.hostmacs = dict(answer.get("hostmacs") or {})

    def _requeue(self, networks, hosts: bool = False) -> None:
        """Ask again on the next pass, without waking the loop."""
        with self.lock:
            self.dirty.update(networks)
            self.hosts_dirty |= hosts

    def _write(self, diff: KeyDiff) -> bool:
        ok = self.agent.ovsdb.write_bridge(diff, "routing")
        self.agent.fast_retry |= not ok
        return ok
