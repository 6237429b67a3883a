"""The part of a host's state that security decides: the bridge's security groups (their
flows are owned by ovsnat.compile.sg_owners) and who holds each allowed-pair address
(ovsnat.core.vips). A mixin of ovsnat.core.state.HostState, whose stores and refreshes it
uses."""

from __future__ import annotations

import netaddr

from ovsnat.compile.flows import Flow
from ovsnat.compile.portsec import vip_addresses, vip_owner_flows
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
            (ip, self.vips.state(name, net, str(ip)), fips.get(ip)) for ip in vip_addresses(port)
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
        """Recompile these ports, and the shared flows of the VIPs whose ports or holder
        changed on the way."""
        delta = Delta()
        for n in sorted(names):
            delta.extend(self._refresh(n))
        delta.extend(self._store_vips(self.vips.take_dirty()))
        return delta

    def _store_vips(self, addresses) -> Delta:
        """The shared flows of VIPs whose local ports changed (ovsnat.compile.portsec)."""
        delta = Delta()
        for vip in sorted(addresses):
            owner = ("vip", int(netaddr.IPAddress(vip)))
            delta.extend(self._store(owner, self._vip_flows(owner[1])))
        return delta

    def _vip_flows(self, address: int) -> list[Flow]:
        vip = netaddr.IPAddress(address)
        ports = [
            (self.valid[n], self.net(self.valid[n]))
            for (_, v), names in self.vips.ports.items()
            if v == str(vip)
            for n in names
            if n in self.valid and n not in self.lost
        ]
        held = {net for net, v in self.vips.holder if v == str(vip)}
        ports.sort(key=lambda pn: pn[0].name)
        return vip_owner_flows(self.cfg, vip, ports, held)
