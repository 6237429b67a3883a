"""The part of a host's state that routers decide (docs/routers.md): each network's routing
from the bridge's keys, which shapes its own flows (gateway, PAT, east-west) and whether its
ports' FIPs are served, and the east-west plan (ovsnat.compile.eastwest): which networks
are routed to from here, with their neighbours and the hosts' routed MACs. A mixin of
ovsnat.core.state.HostState, whose stores it uses.

A routing change recompiles the flows of the networks it touches here; their ports are
then given again by the caller (the controller re-reads their rows), so a FIP held inert
comes back, or goes, with the same checks as any port change. The plan is made again when
the keys change or a network comes to this host or leaves it (its first or last port).
"""

from __future__ import annotations

import logging

from ovsnat.compile import eastwest
from ovsnat.compile.network import network_flows
from ovsnat.core.delta import Delta
from ovsnat.model import VmPort
from ovsnat.model.externals import served_ids
from ovsnat.model.networks import KEY_NETWORK, Network
from ovsnat.model.routing import HostRouting, Routing, parse_bridge, served

LOG = logging.getLogger("ovsnat")


class RoutingState:
    def route(self, net: Network) -> Routing:
        return self.routing.of(net.name)

    def net_flows(self, net: Network) -> list:
        """A network's own flows, as its routing and the east-west plan shape them."""
        return network_flows(self.cfg, net, self.route(net), self.plan.local.get(net.name, 0))

    def set_routing(self, routing: HostRouting) -> tuple[Delta, set[str]]:
        """The bridge's routing keys changed: recompile the networks whose routing did,
        and the east-west plan. Returns the flows and the names of those networks (present
        here or not), whose ports the caller gives again."""
        old, self.routing = self.routing, routing
        if routing == old:  # another bridge key changed (a security group's, say)
            return Delta(), set()
        changed = {n for n in {*old.nets, *routing.nets} if old.of(n) != routing.of(n)}
        delta = self.replan(old, skip=changed)
        for name in sorted(changed & set(self.nets)):
            delta.extend(self._store(("net", name), self.net_flows(self.nets[name])))
        return delta, changed

    def replan(self, was: HostRouting | None = None, skip=()) -> Delta:
        """Make the east-west plan again (the keys were `was`, or this host's networks
        changed): store the plan's owners whose inputs changed (a network's neighbours
        change one owner's flows, not all) and the local networks whose tag changed (but
        those in `skip`, which the caller stores)."""
        old, was = self.plan, was or self.routing
        self.plan = eastwest.plan(self.cfg, self.routing, self.nets)
        if self.plan == old and was is self.routing:
            return Delta()
        for name, problem in sorted(self.plan.problems.items()):
            if old.problems.get(name) != problem:
                LOG.error("ovsnat: %s", problem)
        delta = Delta()
        for owner in sorted({*old.owners(self.cfg), *self.plan.owners(self.cfg)}):
            before = eastwest.inputs(self.cfg, was, old, owner)
            if before != eastwest.inputs(self.cfg, self.routing, self.plan, owner):
                delta.extend(self._store(owner, self.ew_flows(owner)))
        for name in sorted(set(self.nets) - set(skip)):
            if old.local.get(name, 0) != self.plan.local.get(name, 0):
                delta.extend(self._store(("net", name), self.net_flows(self.nets[name])))
        return delta

    def ew_flows(self, owner) -> list:
        return eastwest.owner_flows(self.cfg, self.routing, self.plan, owner)

    def _served(self, name: str, port):
        """The port as its network's routing serves it (FIPs inert where no FIP is served),
        keeping which ports hold an inert FIP for `ovsnat status`."""
        self.inert.pop(name, None)
        if not isinstance(port, VmPort):
            return port
        net = port.net(self.cfg)
        if net is None:
            return port
        kept = served(port, self.routing.of(net.name))
        if kept is not port:
            fips = [port.fip] if port.fip is not None else []
            fips += [fip for _, fip in port.security.pair_fips]
            self.inert[name] = {
                "fips": [str(f) for f in fips],
                "network": net.label,
                "why": self.routing.of(net.name).describe(),
            }
        return kept

    def routing_status(self) -> dict:
        """Each network here with its routing, the FIPs held inert, and east-west: this
        host's name and routed MAC, the networks routed to from here with how many
        neighbours each has on other hosts."""
        hosts = self.routing.hosts
        return {
            "networks": {n.label: self.route(n).describe() for n in self.nets.values()},
            "inert_fips": dict(self.inert),
            # ovsnat-ext-* (ovsnat.model.externals): each with this host's SNAT address
            "externals": {e.id: e.describe() for e in self.cfg.externals},
            "problems": sorted([*self.routing.problems.values(), *self.plan.problems.values()]),
            "east_west": {
                "host": hosts.name,
                "routed_mac": str(hosts.mac).replace("-", ":").lower() if hosts.mac else None,
                "other_hosts": len(hosts.others),
                "networks": {
                    name: {
                        "router": r.router,
                        "local": name in self.plan.local,
                        "neighbours": len(self.routing.neighbours.get(name, ())),
                    }
                    for name, r in sorted(self.plan.dests.items())
                },
            },
        }


def rows_in(rows: dict, networks: set[str]) -> set[str]:
    """The rows whose port names one of these networks."""
    if not networks:
        return set()
    return {
        name
        for name, row in rows.items()
        if str(row.external_ids.get(KEY_NETWORK, "")).strip() in networks
    }


def parse_logged(bridge_ids: dict, logged: dict[str, str], cfg) -> HostRouting:
    """The bridge's routing keys, each problem logged once while it lasts (`logged`: key ->
    the error last logged, kept by the caller); routers on the external networks of `cfg`."""
    routing = parse_bridge(bridge_ids, served_ids(bridge_ids, cfg.externals))
    for key, error in sorted(routing.problems.items()):
        if logged.get(key) != error:
            LOG.error("ovsnat: %s", error)
    logged.clear()
    logged.update(routing.problems)
    return routing
