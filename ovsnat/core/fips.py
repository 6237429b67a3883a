"""FIPs on this host: when each one goes live, what the uplink's ARP says about it, and the
frames that announce or probe it. The decisions are ovsnat.core.presence's; this module applies
them to the host state and turns them into flows and frames.

- A FIP that appears on a device not proven here waits dark; in `probe` mode probes ask the
  uplink who answers for it (presence.py says what the answers mean).
- Going live after the VM's first frame: one gratuitous ARP at once (the host that held the
  FIP yields), the flows SETTLE later. Going live after unanswered probes: the flows at once.
- Once a FIP's ARP responder is confirmed on the switch, three GARPs announce it (0, 0.5,
  1.5 s) so the external switches learn where it lives; each only while it is still live.
- A VIP's FIP (an allowed pair's, ovsnat.core.vips) is announced the same way when a local
  port takes the VIP, each GARP only while the port still holds it.
- Another ovsnat host announcing one of our live FIPs (a GARP with the FIP's own MAC) means
  the VM moved there: yield. Anyone else claiming it is a conflict: logged, counted, kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import netaddr

from ovsnat.compile.portsec import HELD
from ovsnat.compile.vm import fip_responder_key
from ovsnat.core.delta import Delta
from ovsnat.core.presence import (
    CONFLICT,
    SETTLE,
    SETTLING,
    Conflict,
    GoLive,
    Presence,
    SendProbe,
)
from ovsnat.core.state import HostState
from ovsnat.core.status import Stats
from ovsnat.core.timers import Timers
from ovsnat.model import mac_str
from ovsnat.openflow.session import SwitchSession
from ovsnat.packets import arp, vlan

LOG = logging.getLogger("ovsnat")
GARP_DELAYS = (0.0, 0.5, 1.5)
REPORT_EVERY = 60.0  # seconds between conflict lines for one port (a new MAC each)


class Fips:
    def __init__(
        self,
        mode: str,
        timers: Timers,
        stats: Stats,
        session: SwitchSession,
        send: Callable[[Delta], list],
    ):
        self.presence = Presence(mode, "")
        self.timers, self.stats, self.session, self.send = timers, stats, session, send
        self.host: HostState | None = None
        self.uplink = 0
        self.seen_ofport: dict[str, int | None] = {}  # each row's device at the last look
        self.seen_fip: dict[str, str | None] = {}  # each port's FIP at the last look
        self.plugged_at: dict[str, float] = {}  # when each row's device was first seen
        self.yielded_at: dict[str, float] = {}  # when each port last yielded its FIP
        # When this host's DHCP last answered the port (None: never): set by the controller
        self.leased_at: Callable[[str], float | None] = lambda name: None
        self.to_announce: set[str] = set()  # live, GARPs once confirmed
        self.reported: dict[str, tuple[str, float]] = {}  # port -> (MAC, when) logged

    def set_host(self, host: HostState) -> None:
        self.host, self.uplink = host, host.cfg.uplink_ofport
        self.presence.host_mac = mac_str(host.cfg.snat_mac)

    # --- ports changed ---------------------------------------------------------------------
    def changed(self, names, rows: dict, now: float, resident: bool = False) -> Delta:
        """After the host state took these rows. At the controller's first view
        (`resident`) the VMs already plugged were live before a restart. In `first-packet`
        mode a FIP given to a device that was already here (`ovsnat bind` on a running VM)
        needs no proof either. A FIP given to a VM that spoke DHCP with this host since its
        device was plugged here (spoke_here) is announced at once and lit SETTLE later, as
        after the VM's first frame. Every other dark FIP waits for presence.py."""
        delta = Delta()
        for name in sorted(names):
            row = rows.get(name)
            ofport = row.ofport if row is not None and row.link_state != "down" else None
            port = self.host.valid.get(name)
            fip = str(port.fip) if port is not None and port.fip is not None else None
            was_here = bool(ofport and ofport > 0 and self.seen_ofport.get(name) == ofport)
            new_fip = self.seen_fip.get(name) != fip
            # echo mode: a VM here at a restart may be a migration's, still HELD (a FIP
            # really live here is adopted from the switch's flows once they are dumped)
            given = (resident and self.presence.mode != "echo") or (
                self.presence.mode == "first-packet" and new_fip
            )
            spoke = was_here and new_fip and not resident and self.spoke_here(name)
            if row is None:
                self.seen_ofport.pop(name, None)
                self.seen_fip.pop(name, None)
                self.reported.pop(name, None)
                self.plugged_at.pop(name, None)
                self.yielded_at.pop(name, None)
            else:
                if self.seen_ofport.get(name) != ofport:
                    self.plugged_at[name] = now
                self.seen_ofport[name], self.seen_fip[name] = ofport, fip
            pending = was_here and self.host.is_pending(name)
            if pending and given and not spoke and name not in self.host.standing.yielded:
                LOG.info("ovsnat: port %s was already here; activating its FIP", name)
                delta.extend(self._activate(name))
            elif new_fip and self._active(name):  # a FIP live at once: announce it too
                self.to_announce.add(name)
            self.track(name, now)
            if self.presence.mode == "echo" and self.host.is_pending(name):
                delta.extend(self._echo_decide(name, now))
            if pending and spoke and self.presence.first_frame(name) is not None:
                self.timers.at(now, ("spoke", name))  # no probe: announced by due()
        return delta

    def spoke_here(self, name: str) -> bool:
        """This host's DHCP answered the port since its device was plugged here, and since
        the port last yielded its FIP: its VM runs here. A live migration's destination hears
        nothing from the VM before it runs there, and a source hears nothing after (its row
        can outlive the move: it yielded then). So a FIP given to such a VM (moved from
        another port, perhaps on another host) needs no probe: it is announced, a host that
        still answered for it yields, and it lights SETTLE later."""
        at, plugged = self.leased_at(name), self.plugged_at.get(name)
        if at is None or plugged is None:
            return False
        return at >= plugged and at > self.yielded_at.get(name, float("-inf"))

    def track(self, name: str, now: float) -> None:
        """Keep presence.py's view of `name` in step with the host state."""
        if self.host.is_pending(name):
            when = self.presence.wait(name, str(self.host.valid[name].fip), now)
            if when is not None:
                self.timers.at(when, ("presence", name))
        else:
            self.presence.forget(name)
            self.timers.cancel(("presence", name))
            self.timers.cancel(("settle", name))

    def _activate(self, name: str) -> Delta:
        self.presence.forget(name)
        self.timers.cancel(("presence", name))
        self.to_announce.add(name)
        self.stats.inc("activations")
        return self.host.activate(name)

    # --- what the uplink says ----------------------------------------------------------------
    def uplink_arp(self, a: arp.Arp, now: float) -> list:
        host = self.host
        if a.is_probe:
            name = host.fip_owner(a.tpa)
            if name is not None and host.is_pending(name):
                self.presence.probed_by_other(name, a.sha)
            return []
        name = host.fip_owner(a.spa)
        if name is None:
            return []
        fip_mac = mac_str(host.cfg.ip_mac(netaddr.IPAddress(a.spa)))
        if host.is_pending(name):
            conflict = self.presence.answered(name, a.sha, fip_mac)
            if conflict is not None:
                self._report(conflict, now)
            return []
        self.stats.conflict(a.spa, a.sha, name, now)
        if a.sha != fip_mac:
            # Keep answering: no device on the external network can take a FIP offline with
            # one GARP. An ovsnat host that wants it probes first, and sees us answer.
            if self._first_report(name, a.sha, now):
                LOG.warning(
                    "ovsnat: FIP %s of port %s is claimed on the uplink by %s; "
                    "address conflict, keeping it",
                    a.spa,
                    name,
                    a.sha,
                )
            return []
        # Another ovsnat host announces the FIP with the FIP's own MAC: the VM moved there
        # (or the FIP is configured on two hosts). Yield, so two hosts never answer for it.
        LOG.warning("ovsnat: FIP %s of port %s is announced by another host; yielding", a.spa, name)
        self.stats.inc("yields")
        self.yielded_at[name] = now
        self.to_announce.discard(name)
        out = self.send(host.yield_fip(name))
        self.track(name, now)
        return out

    def _report(self, c: Conflict, now: float) -> None:
        self.stats.conflict(c.fip, c.mac, c.name, now)
        if self._first_report(c.name, c.mac, now):
            LOG.warning(
                "ovsnat: FIP %s of port %s is answered on the uplink by %s, which is "
                "no ovsnat host; address conflict: keeping it dark and probing every "
                "second until that stops",
                c.fip,
                c.name,
                c.mac,
            )

    def _first_report(self, name: str, mac: str, now: float) -> bool:
        """Log a claim of this port's FIP? Once per claiming MAC, and at most once a minute
        whatever the MACs (a flood of claims from the uplink must not flood the log); every
        claim is counted regardless (fip_conflicts)."""
        last, at = self.reported.get(name, ("", -REPORT_EVERY))
        if last == mac or now - at < REPORT_EVERY:
            return False
        self.reported[name] = (mac, now)
        return True

    # --- what the VM says --------------------------------------------------------------------
    def vm_frame(self, name: str, frame: bytes, now: float) -> list:
        """A frame from a port whose FIP is dark: the VM runs here. While a foreign device
        claims the FIP the frame changes nothing, so its copies stop until that ends."""
        if self.timers.pending(("settle", name)):
            return []
        if name in self.host.standing.yielded:
            a = arp.parse(frame)
            if a is None or not a.is_announcement:
                return []  # a yielded FIP comes back on the VM's RARP/GARP only
        go = self.presence.first_frame(name)
        if go is None and self.presence.state(name) == CONFLICT:
            return self.send(self.host.hear(name, True))
        return self._go_live(go, now) if go else []

    def _go_live(self, go: GoLive, now: float) -> list:
        if not go.settle:
            LOG.info("ovsnat: port %s: %s; activating its FIP", go.name, go.why)
            return self.send(self._activate(go.name))
        # Announce at once, so the host that answered until now yields, and light the FIP
        # once it had time to (SETTLE).
        self.timers.at(now + SETTLE, ("settle", go.name))
        return self._garp(self.host.valid[go.name].fip)

    # --- deadlines ---------------------------------------------------------------------------
    def due(self, key: tuple, now: float) -> list:
        kind, name = key[0], key[1]
        if kind == "presence":
            actions, when = self.presence.due(name, now)
            if when is not None:
                self.timers.at(when, key)
            out = []
            if name in self.host.standing.heard and self.presence.state(name) != CONFLICT:
                out += self.send(self.host.hear(name, False))  # its frames count again
            for action in actions:
                out += self._act(action, now)
            for started in self.presence.start_queued(now):
                self.timers.at(now, ("presence", started))
            return out
        if kind == "spoke" and self.presence.state(name) == SETTLING:
            LOG.info("ovsnat: port %s: its VM spoke DHCP here; announcing its FIP", name)
            settle = self.presence.mode != "echo"  # bgp mode: no host to yield to
            return self._go_live(GoLive(name, "its VM spoke DHCP here", settle=settle), now)
        if kind == "settle" and self.host.is_pending(name):
            LOG.info("ovsnat: port %s is here (announced); activating its FIP", name)
            return self.send(self._activate(name))
        if kind == "garp" and self._live(name):
            return self._garp(self.host.valid[name].fip)
        if kind == "vip-garp" and self._holds(name, key[2]):
            return self._garp(key[3])
        return []

    def _act(self, action, now: float) -> list:
        if isinstance(action, SendProbe):
            self.stats.inc("probes")
            frame = arp.probe(self.presence.host_mac, action.fip)
            return self._to_uplink(action.fip, frame, f"probe for {action.fip}")
        return self._go_live(action, now)

    def forget_announced(self) -> None:
        """FIPs whose responder the switch held before we sent anything were live before a
        restart: they need no announcement."""
        self.to_announce = {n for n in self.to_announce if not self._live(n)}

    def announce_confirmed(self, now: float) -> None:
        """GARPs for the FIPs whose ARP responder the switch has now confirmed."""
        for name in sorted(self.to_announce):
            if not self._active(name):
                self.to_announce.discard(name)
            elif self._live(name) and self.host.cfg.bgp is not None:
                self.to_announce.discard(name)  # bgp mode: a route tells, not GARPs
                LOG.info("ovsnat: FIP %s is live here", self.host.valid[name].fip)
            elif self._live(name):
                self.to_announce.discard(name)
                LOG.info(
                    "ovsnat: FIP %s is live here; announcing it (%d GARPs)",
                    self.host.valid[name].fip,
                    len(GARP_DELAYS),
                )
                for i, delay in enumerate(GARP_DELAYS):
                    self.timers.at(now + delay, ("garp", name, i))

    def _active(self, name: str) -> bool:
        port = self.host.valid.get(name) if self.host else None
        return (
            port is not None
            and port.fip is not None
            and name not in self.host.lost
            and not self.host.is_pending(name)
        )

    def echoes_seen(self, echoes: frozenset[str], now: float) -> list:
        """bgp mode: the other hosts' /32s changed. A FIP waiting for the first set is
        decided now; a HELD one whose echo went (the other host withdrew) goes live."""
        delta = Delta()
        for name in self.presence.echoes_seen(echoes):
            delta.extend(self._echo_decide(name, now))
        return self.send(delta)

    def _echo_decide(self, name: str, now: float) -> Delta:
        """bgp mode: live now unless another host announces the FIP (presence.py)."""
        actions, when = self.presence.due(name, now)
        if when is not None:
            self.timers.at(when, ("presence", name))
        if not actions:
            return Delta()
        LOG.info("ovsnat: port %s: %s; activating its FIP", name, actions[0].why)
        return self._activate(name)

    def moved(self, fip) -> bool:
        """bgp mode: another host still announces this FIP (it came here with its VM)."""
        echoes = self.presence.echoes
        return echoes is not None and str(fip) in echoes

    def serving(self, name: str) -> bool:
        """The switch serves this port's FIP here (bgp mode announces it then)."""
        return self._live(name)

    def _live(self, name: str) -> bool:
        """Active here and its ARP responder confirmed on the switch."""
        if not self._active(name) or not self.session.installed:  # nothing confirmed yet:
            return False  # a cold program skips 10,000 key builds
        port = self.host.valid[name]
        return fip_responder_key(self.host.cfg, port, self.host.net(port)) in self.session.installed

    def _garp(self, fip) -> list[bytes]:
        mac = mac_str(self.host.cfg.ip_mac(netaddr.IPAddress(fip)))
        return self._to_uplink(fip, arp.garp(mac, str(fip)), f"GARP for {fip}")

    def _to_uplink(self, fip, frame: bytes, what: str) -> list[bytes]:
        """Out of the uplink in the FIP's own external network (its VLAN, if tagged). None
        in bgp mode: no segment to tell, routes announce instead (docs/bgp.md)."""
        if self.host.cfg.bgp is not None:
            return []
        ext = self.host.cfg.external_for(netaddr.IPAddress(fip))
        return [self.session.packet_out(self.uplink, vlan.tag(frame, ext and ext.vlan), what)]

    # --- a VIP's FIP (ovsnat.core.vips) --------------------------------------------------------
    def announce_vip(self, name: str, vip, fip, now: float) -> None:
        """Port `name` took VIP `vip` here, and with it its FIP: announced as a FIP is, while
        the port still holds the VIP."""
        LOG.info("ovsnat: VIP %s held by port %s here; its FIP %s goes live", vip, name, fip)
        for i, delay in enumerate(GARP_DELAYS):
            self.timers.at(now + delay, ("vip-garp", name, str(vip), str(fip), i))

    def _holds(self, name: str, vip: str) -> bool:
        host = self.host
        port = host.accepted_port(name)
        return port is not None and host.vips.state(name, host.net(port).name, vip) == HELD

    def waiting(self) -> dict:
        return {
            name: {"fip": w.fip, "state": w.state, "since": w.since}
            for name, w in sorted(self.presence.waiting.items())
        }
