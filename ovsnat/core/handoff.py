"""PAT sessions that outlive a live migration, with no state copied between hosts.

A PAT VM's sessions live in the conntrack of the host it was on when they began. When the
VM moves, for `handoff_grace` seconds:

- the host it left (A) keeps translating them: the VM's packets, broadcast by the host it
  went to on the fabric's handoff VLAN, go through A's NAT as if the VM were still there,
  and only connections A's conntrack already holds pass (nothing is committed for a handed
  packet); the replies go to the handoff VLAN, to the VM's MAC;
- the host it went to (B) sends there what its own conntrack does not know and cannot start
  a connection (TCP without SYN), and delivers the replies that come back.

Neither host learns anything from the other: A acts on its own conntrack, B on its own
view of which ports arrived. A ends its part as soon as its conntrack holds no live TCP
session of the VM (read for it every few seconds while a departure lasts:
ovsnat.core.vswitchd), B at the end of the grace period. A read that fails says nothing: the
departure then runs its whole grace period, never ends early. Which host did what is decided
here, in plain Python; the flows are in ovsnat.compile.handoff_flows and docs/handoff.md has
the design and its limits.
"""

from __future__ import annotations

import logging
from collections import Counter

from ovsnat.compile.handoff_flows import enabled
from ovsnat.core.conntrack import tally
from ovsnat.core.delta import Delta
from ovsnat.model import VmPort, networks

LOG = logging.getLogger("ovsnat")
CHECK_EVERY = 2.0  # seconds between conntrack reads while a departure lasts


def live_tcp_sessions(conntrack: str) -> Counter:
    """(zone, original source) -> TCP connections not yet closing down, from
    `ovs-appctl dpctl/dump-conntrack` (every zone)."""
    return tally(conntrack).sessions


class Handoffs:
    def __init__(self, timers, stats):
        self.timers, self.stats = timers, stats
        self.sessions: dict[str, int] = {}  # departed port -> its live TCP sessions
        self.next_check = 0.0

    def changed(self, host, name: str, was: VmPort | None, gone: bool, now: float) -> Delta:
        """Port `name` changed; `was` is the port as it was accepted before (None: it was
        not), `gone` whether its row or device is gone now."""
        if host is None or not enabled(host.cfg):
            return Delta()
        delta = Delta()
        port = host.valid.get(name) if name not in host.lost else None
        if was is not None and was.fip is None and port is None and gone:
            delta.extend(self._depart(host, name, was, now))
        if port is not None and port.fip is None and (was is None or was.ofport != port.ofport):
            delta.extend(self._arrive(host, name, now))
        return delta

    def _depart(self, host, name: str, port: VmPort, now: float) -> Delta:
        LOG.info(
            "ovsnat: port %s (%s) left; its PAT sessions are handed to it for up to %d s",
            name,
            port.fixed_ip,
            host.cfg.handoff_grace,
        )
        self.stats.inc("handoff_departures")
        self.sessions[name] = -1  # not read yet
        self.timers.at(now + host.cfg.handoff_grace, ("handoff", "left", name))
        self.next_check = min(self.next_check or now, now)
        return host.depart(name, port)

    def _arrive(self, host, name: str, now: float) -> Delta:
        delta = Delta()
        if name in host.standing.departed:  # back within the grace: local again
            delta.extend(self._end_departure(host, name, "came back"))
        self.stats.inc("handoff_arrivals")
        self.timers.at(now + host.cfg.handoff_grace, ("handoff", "arrived", name))
        delta.extend(host.set_arrived(name, True))
        return delta

    def due(self, host, key: tuple, now: float) -> Delta:
        _, role, name = key
        if host is None:
            return Delta()
        if role == "left" and name in host.standing.departed:
            return self._end_departure(host, name, "grace period over")
        if role == "arrived" and name in host.standing.arrived:
            return host.set_arrived(name, False)
        return Delta()

    def _end_departure(self, host, name: str, why: str) -> Delta:
        LOG.info("ovsnat: handoff of %s ended: %s", name, why)
        self.sessions.pop(name, None)
        self.timers.cancel(("handoff", "left", name))
        return host.end_departure(name)

    # --- the conntrack of the host a VM left ---------------------------------------------
    def wants_conntrack(self, host, now: float) -> bool:
        return host is not None and bool(host.standing.departed) and now >= self.next_check

    def asked(self, now: float) -> None:
        """A read was asked for: the next one is due CHECK_EVERY from now, whether this one
        answers, fails or times out."""
        self.next_check = now + CHECK_EVERY

    def conntrack(self, host, counts: Counter | None, now: float) -> Delta:
        """A read of conntrack came back: (zone, source) -> live TCP sessions, or None when
        it failed. End the departures whose sessions are all over; a failed read ends
        none (their sessions are unknown: shown as -1)."""
        if host is None:
            return Delta()
        if counts is None:
            self.sessions.update(dict.fromkeys(host.standing.departed, -1))
            return Delta()
        delta = Delta()
        for name, port in sorted(host.standing.departed.items()):
            net = host.net(port)
            zone = (
                host.cfg.ct_zone
                if net.vlan is None
                else networks.zone(host.cfg.network_ct_zone_base, net)
            )
            self.sessions[name] = counts.get((zone, str(port.fixed_ip)), 0)
            if not self.sessions[name]:
                delta.extend(self._end_departure(host, name, "no session left"))
        return delta

    def status(self, host, now: float) -> dict:
        """Per port: which side of a handoff this host is on, and for how long still."""
        if host is None:
            return {}
        out = {
            name: {
                "role": "left",
                "fixed_ip": str(port.fixed_ip),
                "sessions": self.sessions.get(name, -1),
                "remaining": self._remaining(("handoff", "left", name), now),
            }
            for name, port in host.standing.departed.items()
        }
        out.update(
            {
                name: {
                    "role": "arrived",
                    "fixed_ip": str(host.valid[name].fixed_ip),
                    "remaining": self._remaining(("handoff", "arrived", name), now),
                }
                for name in host.standing.arrived
                if name in host.valid
            }
        )
        return dict(sorted(out.items()))

    def _remaining(self, key: tuple, now: float) -> int:
        at = self.timers.when(key)
        return max(0, int(at - now)) if at is not None else 0
