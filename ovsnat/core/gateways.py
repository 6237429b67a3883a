"""The external gateways' MACs, learned from their own ARP (`learn_gateway_mac`), and asked
for until known (then every 30 s, to follow a change) from this host's SNAT address on each
network: the untagged network's gateway (the options') and each tagged external network's
in its VLAN (ovsnat.model.externals; theirs are always learned).

A tagged network's MAC is kept by (VLAN, gateway address), so a key that moves the gateway
forgets it. The MACs reach the flows through the host config (ovsnat.model.hostconfig),
whose change recompiles the host.
"""

from __future__ import annotations

import logging

import netaddr

from ovsnat.model import HostConfig, mac_str
from ovsnat.model.externals import External
from ovsnat.packets import arp, vlan

LOG = logging.getLogger("ovsnat")
INTERVAL = (1, 30)  # seconds: until resolved, then to follow changes
KEY = "gateway-arp"  # timer keys: (KEY, None) the untagged gateway, (KEY, vlan) a tagged one


class Gateways:
    def __init__(self, configured: netaddr.EUI | None):
        self.mac = configured  # the untagged gateway's, configured or learned
        self.macs: dict[tuple[int, str], netaddr.EUI] = {}  # the tagged ones', learned

    def arm(self, cfg: HostConfig, timers, now: float) -> None:
        """Ask for each gateway that is learned now, unless a request is already due."""
        current = {(e.vlan, str(e.gateway)) for e in cfg.tagged}
        self.macs = {k: m for k, m in self.macs.items() if k in current}  # a key gone: forgot
        keys = [(KEY, None)] if cfg.learn_gateway_mac else []
        for key in keys + [(KEY, ext.vlan) for ext in cfg.tagged]:
            if not timers.pending(key):
                timers.at(now, key)

    def due(self, cfg: HostConfig, key, timers, session, now: float) -> list:
        """The ARP request for one gateway, and the next one's deadline; nothing when its
        network is gone."""
        ext = self.of_vlan(cfg, key[1]) if key[1] is not None else None
        if key[1] is not None and ext is None:
            return []
        known = ext.gateway_mac if ext is not None else self.mac
        timers.at(now + INTERVAL[known is not None], key)
        if not session.ready:
            return []
        snat, gw = (
            (ext.snat, ext.gateway) if ext is not None else (cfg.snat_ip, cfg.external_gateway_ip)
        )
        frame = arp.build(arp.REQUEST, mac_str(cfg.ip_mac(snat)), str(snat), str(gw))
        what = f"ARP for {ext.id}'s gateway" if ext is not None else "ARP for the gateway"
        return [session.packet_out(cfg.uplink_ofport, vlan.tag(frame, key[1]), what)]

    def learn(self, ext: External | None, mac: netaddr.EUI, ip: str) -> bool:
        """A gateway's ARP (`ext` None: the untagged one's): True when its MAC is new."""
        if ext is None:
            if self.mac == mac:
                return False
            LOG.info("ovsnat: external gateway %s is at %s", ip, mac_str(mac))
            self.mac = mac
            return True
        key = (ext.vlan, str(ext.gateway))
        if self.macs.get(key) == mac:
            return False
        LOG.info(
            "ovsnat: gateway %s of external network %s (VLAN %d) is at %s",
            ip,
            ext.id,
            ext.vlan,
            mac_str(mac),
        )
        self.macs[key] = mac
        return True

    @staticmethod
    def of_vlan(cfg: HostConfig, vid: int | None) -> External | None:
        return next((e for e in cfg.tagged if e.vlan == vid), None)
