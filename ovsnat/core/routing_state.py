"""The part of a host's state that routers decide (docs/routers.md): each network's routing
from the bridge's keys, which shapes its own flows (gateway, PAT) and whether its ports'
FIPs are served. A mixin of ovsnat.core.state.HostState, whose stores it uses.

A routing change recompiles the flows of the networks it touches here; their ports are
then given again by the caller (the controller re-reads their rows), so a FIP held inert
comes back, or goes, with the same checks as any port change.
"""

from __future__ import annotations

import logging

from ovsnat.compile.network import network_flows
from ovsnat.core.delta import Delta
from ovsnat.model import VmPort
from ovsnat.model.networks import KEY_NETWORK, Network
from ovsnat.model.routing import HostRouting, Routing, parse_bridge, served

LOG = logging.getLogger("ovsnat")


class RoutingState:
    def route(self, net: Network) -> Routing:
        return self.routing.of(net.name)

    def set_routing(self, routing: HostRouting) -> tuple[Delta, set[str]]:
        """The bridge's routing keys changed: recompile the networks whose routing did.
        Returns the flows and the names of those networks (present here or not), whose
        ports the caller gives again."""
        old, self.routing = self.routing, routing
        changed = {n for n in {*old.nets, *routing.nets} if old.of(n) != routing.of(n)}
        delta = Delta()
        for name in sorted(changed & set(self.nets)):
            net = self.nets[name]
            delta.extend(self._store(("net", name), network_flows(self.cfg, net, routing.of(name))))
        return delta, changed

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
        """Each network here with its routing, and the FIPs held inert."""
        return {
            "networks": {n.label: self.route(n).describe() for n in self.nets.values()},
            "inert_fips": dict(self.inert),
            "problems": sorted(self.routing.problems.values()),
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


def parse_logged(bridge_ids: dict, logged: dict[str, str]) -> HostRouting:
    """The bridge's routing keys, each problem logged once while it lasts (`logged`: key ->
    the error last logged, kept by the caller)."""
    routing = parse_bridge(bridge_ids)
    for key, error in sorted(routing.problems.items()):
        if logged.get(key) != error:
            LOG.error("ovsnat: %s", error)
    logged.clear()
    logged.update(routing.problems)
    return routing
