"""bgp mode: what the host state says the announcer should announce, and when
(docs/bgp.md, section 3). ovsnat.core.announce decides the writes; this feeds it.

- Wanted: the host's SNAT address, each FIP whose flows the switch serves here (its
  ARP responder confirmed, as l2 mode's GARPs wait for it), and each VIP's FIP whose VIP a
  local port holds (its ARP said so: ovsnat.core.vips; l2 mode GARPs it then). A FIP that
  leaves the host, its port or its VM, or a VIP that another port takes, is withdrawn at
  once. A FIP that arrives while another host still announces it (its echo) is MOVED.
- Nothing is written until both truths are in: the kernel's tables (OwnRoutes, from the
  runtime's dump) and the switch's flows (the dump after a connect). A restarted
  controller therefore finds its FIPs live, wants what the kernel already holds, and
  writes nothing: FRR sends no UPDATE. While the switch is away nothing is withdrawn.
- One write in flight; its answer (RoutesDone) and the retry and hold deadlines (a timer)
  bring the next.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import netaddr

from ovsnat.core.announce import Announcer, Plan
from ovsnat.core.effects import OwnRoutes, RoutesDone
from ovsnat.model import HostConfig

LOG = logging.getLogger("ovsnat")
KEY = ("announce",)  # the timer of the announcer's next deadline


class Announcing:
    def __init__(self, cfg: HostConfig):
        bgp = cfg.bgp
        self.announcer = (
            Announcer(Plan(bgp.table, bgp.max_routes, float(bgp.moved_hold))) if bgp else None
        )

    def seen(self, own: OwnRoutes) -> None:
        if self.announcer is not None:
            self.announcer.seen(set(own.routes))

    def done(self, result: RoutesDone, now: float) -> None:
        if self.announcer is not None:
            self.announcer.done(result, now)

    def update(self, host, serving: Callable[[str], bool], moved, ready: bool, timers, now):
        """The write that makes the kernel follow the host, if one is due. `serving(name)`:
        the switch serves that port's FIP; `moved(fip)`: another host still announces it
        (a migration brought it here: MOVED, so the ToRs prefer this host); `ready`: the
        switch's flows are known."""
        a = self.announcer
        if a is None or host is None or not ready or a.known is None:
            return []  # the kernel's tables first: a MOVED route found there is kept
        a.set_snat([host.cfg.snat_ip] if host.cfg.snat_ip else [])
        live = _held_vip_fips(host)
        live.update(
            {
                netaddr.IPAddress(host.valid[name].fip): name
                for name in host.accepted_fips
                if serving(name)
            }
        )
        for ip in [ip for ip in a.fips if ip not in live]:
            a.dark(ip)
        for ip, name in live.items():
            if a.fips.get(ip) != name:
                a.live(ip, name, now, moved=moved(ip))
        a.expire(now)
        out = a.next(now)
        for routes in out:
            LOG.info(
                "ovsnat: routes: %d to add, %d to withdraw (%s)",
                len(routes.add),
                len(routes.delete),
                ", ".join(
                    f"{'+' if k in routes.add else '-'}{k[0].ip}"
                    for k in (*routes.add, *routes.delete)[:4]
                ),
            )
        when = a.next_at()
        if when is not None:
            timers.at(when, KEY)
        return out

    def status(self, now: float) -> dict:
        return {"announcements": self.announcer.status(now)} if self.announcer else {}


def _held_vip_fips(host) -> dict:
    """FIP -> port, for each VIP a local port holds whose pair has a FIP."""
    out = {}
    for (_net, vip), name in host.vips.holder.items():
        port = host.accepted_port(name) if name else None
        for v, fip in port.security.pair_fips if port is not None else ():
            if str(v) == vip:
                out[netaddr.IPAddress(fip)] = name
    return out
