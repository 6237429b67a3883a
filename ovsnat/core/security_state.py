"""The part of a host's state that security decides: the bridge's security groups (their
flows are owned by ovsnat.compile.sg_owners) and who holds each allowed-pair address
(ovsnat.core.vips). A mixin of ovsnat.core.state.HostState, whose stores and refreshes it
uses."""

from __future__ import annotations

from ovsnat.core.delta import Delta
from ovsnat.model import VmPort
from ovsnat.model.secgroups import HostSecurity


class SecurityState:
    def set_security(self, security: HostSecurity) -> Delta:
        """The bridge's security groups changed: recompile the owners they touch."""
        self.security = security
        return self._store_sg(self.sg.set_security(security))

    def _store_sg(self, owners) -> Delta:
        delta = Delta()
        for owner in owners:
            delta.extend(self._store(owner, self.sg.flows(owner)))
        return delta

    def _vips(self, name: str, port: VmPort) -> tuple:
        """(vip, held/elsewhere/unknown, its FIP or None) of the port's single pairs."""
        fips = dict(port.security.pair_fips)
        net = self.net(port).name
        return tuple(
            (p.cidr.ip, self.vips.state(name, net, str(p.cidr.ip)), fips.get(p.cidr.ip))
            for p in port.security.pairs
            if p.cidr.prefixlen == 32
        )

    def vip_seen(self, name: str, vip: str) -> Delta:
        """Port `name` spoke from one of its pair addresses: it holds it now."""
        port = self.accepted_port(name)
        if port is None:
            return Delta()
        return self._refresh_all(self.vips.seen(name, self.net(port).name, vip))

    def vip_elsewhere(self, vip: str) -> Delta:
        """A VM on another host spoke from `vip` (its ARP came over the fabric)."""
        return self._refresh_all(self.vips.elsewhere(vip))

    def _refresh_all(self, names) -> Delta:
        delta = Delta()
        for n in sorted(names):
            delta.extend(self._refresh(n))
        return delta
