"""Every frame the switch sends up, from where it came to what it does. A VM (or anyone on
the uplink) controls every byte of it, so nothing here may raise or make the controller
resync: each frame is checked before anything acts on it, and one that cannot be handled is
dropped and counted by reason (status `packet_in_drops`, metric
`ovsnat_packet_in_drops_total{reason}`). VM ports are metered per port and kind
(ovsnat.core.punts); the uplink has meters of its own at the switch.

Where a frame goes, by its in_port and the table that sent it:
- a VM port: DHCP (ovsnat.core.dhcp), RARP relayed to the fabric, a dark FIP's copies (presence:
  ovsnat.core.fips), TTL expired and ICMP errors through its FIP (ovsnat.core.relay);
- the uplink (or in_port 0: hairpinned): ARP (claims, probes, the gateway's MAC), TTL
  expired at this hop and ICMP errors to FIP VMs (ovsnat.core.relay).
"""

from __future__ import annotations

import logging

import netaddr

from ovsnat.compile import portsec
from ovsnat.compile.pipeline import CLASSIFY, FABRIC_IN, UPLINK_ARP
from ovsnat.compile.punt_flows import quarantine_flows
from ovsnat.core import punts, relay
from ovsnat.core.gateways import Gateways
from ovsnat.packets import arp, vlan

LOG = logging.getLogger("ovsnat")
LOG_EVERY_S = 60.0
RARP = b"\x80\x35"


class PacketIn:
    """Bound to the host controller: reads its current host, FIPs and DHCP service at each
    call (a recovery replaces them)."""

    def __init__(self, ctl):
        self.ctl = ctl
        self.budget = punts.PortBudget()
        self.logged: dict[tuple[str, str], float] = {}  # (what, about) -> when

    def handle(self, in_port: int, table: int, data: bytes, now: float) -> list:
        try:
            return self._handle(in_port, table, data, now)
        except Exception:  # a defect of ours, not the sender's: never a resync
            self.ctl.stats.drop("error")
            if self._due("error", f"{table}", now):
                LOG.exception(
                    "ovsnat: fault handling a packet-in from port %s (table %d, "
                    "%d bytes: %s); dropped, state kept (logged once a minute)",
                    in_port,
                    table,
                    len(data),
                    data[:64].hex(),
                )
            return []

    def _handle(self, in_port: int, table: int, data: bytes, now: float) -> list:
        ctl, host = self.ctl, self.ctl.host
        if host is None:
            return self._drop("not_ready")
        if in_port in (host.cfg.uplink_ofport, 0):
            return self._from_outside(table, in_port, data, now)
        if in_port == host.cfg.fabric_ofport:
            return self._from_fabric(table, data)
        name = host.by_ofport.get(in_port)
        known = name is not None and name not in host.lost
        kind = punts.vm_kind(table, data, known and host.is_pending(name))
        admitted = self.budget.admit(in_port, kind, now)
        if admitted != "yes":
            return self._over_share(
                name or f"OpenFlow port {in_port}", in_port, kind, admitted == "quarantine"
            )
        if kind == "dhcp":
            out = ctl.dhcp.packet_in(host, in_port, data, now)
            return out + (self._presence(name, data, now) if known else [])
        if not known:
            return self._drop("unknown_port")
        if kind in ("ttl", "icmp"):
            return self._relay(table, in_port, data)
        if table != CLASSIFY:
            return self._drop("unexpected_table")
        return (
            self._relay_rarp(name, data)
            + self._presence(name, data, now)
            + self._vip(name, data, now)
        )

    # --- from VMs --------------------------------------------------------------------------
    def _presence(self, name: str, frame: bytes, now: float) -> list:
        host = self.ctl.host
        return self.ctl.fips.vm_frame(name, frame, now) if host.is_pending(name) else []

    def _vip(self, name: str, frame: bytes, now: float) -> list:
        """A port's ARP from one of its allowed-pair addresses: it holds that VIP now
        (ovsnat.core.vips); a VIP's FIP that goes live here is announced on the uplink as a
        FIP's is (ovsnat.core.fips)."""
        host = self.ctl.host
        a, port = arp.parse(frame), host.valid[name]
        if a is None or not any(
            p.cidr.prefixlen == 32 and str(p.cidr.ip) == a.spa for p in port.security.pairs
        ):
            return []
        out = self.ctl.sw.send(host.vip_seen(name, a.spa))
        if not out:
            return []
        for vip, fip in port.security.pair_fips:
            if str(vip) == a.spa:
                self.ctl.fips.announce_vip(name, vip, fip, now)
        return out + self._tell_neighbours(host.net(port), frame, name)

    def _from_fabric(self, table: int, frame: bytes) -> list:
        """Another host's VM's ARP from an address a local port has as a pair: it holds
        that VIP now."""
        a = arp.parse(frame) if table == FABRIC_IN else None
        if a is None:
            return self._drop("from_fabric")
        host = self.ctl.host
        nets = {host.net(host.valid[n]) for n in host.vips.ports_of(a.spa) if n in host.valid}
        out = self.ctl.sw.send(host.vip_elsewhere(a.spa))
        for net in nets if out else ():
            out += self._tell_neighbours(net, frame, None)
        return out

    def _tell_neighbours(self, net, frame: bytes, holder: str | None) -> list:
        """A VIP moved: its ARP, as a switch floods a gratuitous ARP, to every local VM of its
        network, so their neighbour caches follow it (ovsnat delivers ARP by target
        address, which a gratuitous ARP's is the VIP's own)."""
        host, session = self.ctl.host, self.ctl.sw.session
        return [
            session.packet_out(p.ofport, frame, f"VIP announcement to {p.name}")
            for p in host.accepted
            if p.name != holder and host.net(p) == net and not p.security.admin_down
        ]

    def _relay_rarp(self, name: str, frame: bytes) -> list:
        """A VM's RARP (QEMU sends them when a migrated VM resumes) goes on to the fabric in
        the VM's VLAN: the fabric's switches learn at once where the VM's MAC is now."""
        host = self.ctl.host
        cfg = host.cfg
        if not cfg.fabric_ofport or frame[12:14] != RARP:
            return []
        port = host.valid[name]
        if frame[6:12] != port.mac.packed:
            return self._drop("rarp_spoofed")
        net = host.net(port)
        if net.vlan:
            frame = frame[:12] + b"\x81\x00" + (net.vlan).to_bytes(2, "big") + frame[12:]
        return [self.ctl.sw.session.packet_out(cfg.fabric_ofport, frame, f"RARP of {name}")]

    def _over_share(self, name: str, ofport: int, kind: str, starts: bool) -> list:
        """A port over its share of one kind: from now on, that kind is dropped at the
        switch for a while (the flows go once; later frames already in flight are only
        counted)."""
        self._drop("over_share")
        if not starts:
            return []
        stats = self.ctl.stats
        stats.inc("packet_in_quarantines")
        if kind == "dhcp":
            stats.inc("dhcp_quarantines")
        LOG.warning(
            "ovsnat: port %s floods the controller (%s packet-ins over its share); "
            "dropping them at the switch for %d s",
            name,
            kind,
            punts.QUARANTINE_S,
        )
        session = self.ctl.sw.session
        return [
            session.temporary_flow(f, punts.QUARANTINE_S, f"{kind} quarantine of {name}")
            for f in quarantine_flows(kind, ofport)
        ]

    # --- from outside ----------------------------------------------------------------------
    def _from_outside(self, table: int, in_port: int, data: bytes, now: float) -> list:
        if table in relay.TABLES:
            return self._relay(table, in_port, data)
        if table not in (CLASSIFY, UPLINK_ARP) or in_port == 0:
            return self._drop("unexpected_table")
        vid, frame = vlan.untag(data)
        a = arp.parse(frame)
        if a is None:
            return self._drop("not_arp")
        if vid is None:
            return self._uplink_arp(a, None, now)
        ext = Gateways.of_vlan(self.ctl.host.cfg, vid)
        return self._uplink_arp(a, ext, now) if ext is not None else self._drop("unknown_vlan")

    def _uplink_arp(self, a: arp.Arp, ext, now: float) -> list:
        """An ARP from the uplink, in the untagged network (`ext` None) or a tagged one."""
        ctl = self.ctl
        cfg = ctl.host.cfg
        gw, snat = (
            (cfg.external_gateway_ip, cfg.snat_ip) if ext is None else (ext.gateway, ext.snat)
        )
        if (cfg.learn_gateway_mac or ext is not None) and a.spa == str(gw):
            if not arp.is_unicast(a.sha):
                return self._drop("bad_gateway_mac")
            return ctl.learn_gateway(ext, netaddr.EUI(a.sha), a.spa, now)
        if a.spa == str(snat):
            ctl.stats.conflict(a.spa, a.sha, "SNAT IP", now)
            if self._due("snat-claim", a.sha, now):
                LOG.warning(
                    "ovsnat: this host's SNAT IP %s is claimed on the uplink by %s; "
                    "address conflict",
                    a.spa,
                    a.sha,
                )
            return []
        return ctl.fips.uplink_arp(a, now)

    def _relay(self, table: int, in_port: int, data: bytes) -> list:
        answer = relay.answer(self.ctl.host, table, in_port, data)
        if answer is None:
            return self._drop("not_relayed")
        port, frame, counter = answer
        self.ctl.stats.inc(counter)
        name = self.ctl.host.by_ofport.get(port)
        vm = self.ctl.host.accepted_port(name) if name is not None else None
        actions = portsec.reinjected(vm) if vm is not None else []
        what = counter.replace("_", " ")
        return [self.ctl.sw.session.packet_out(port, frame, what, actions)]

    # --- bookkeeping -----------------------------------------------------------------------
    def _drop(self, reason: str) -> list:
        self.ctl.stats.drop(reason)
        return []

    def _due(self, what: str, about: str, now: float) -> bool:
        """At most one log line a minute per (what, about); the map stays bounded."""
        key = (what, about)
        if now - self.logged.get(key, -LOG_EVERY_S) < LOG_EVERY_S:
            return False
        if len(self.logged) >= 1024:
            self.logged = {k: t for k, t in self.logged.items() if now - t < LOG_EVERY_S}
            if len(self.logged) >= 1024:
                return False  # a thousand distinct lines this minute: enough
        self.logged[key] = now
        return True
