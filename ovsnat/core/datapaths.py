"""Which switch is ours: the controller programs one bridge, the one its config names, and
knows it by the datapath id OVSDB gives for that bridge (Bridge.datapath_id).

Any bridge can be pointed at the controller's address, by mistake or not. Its switch is
refused (the shim closes the connection, one log line per datapath, counted) and nothing
it says reaches the session: its flow dumps, barriers and errors would otherwise be
mixed with our switch's. A switch that connects before OVSDB has named our datapath waits,
connected but unprogrammed, until it has. Pure: the shim does what `AdoptSwitch` and
`RefuseSwitch` say (ovsnat.core.effects).
"""

from __future__ import annotations

import logging

LOG = logging.getLogger("ovsnat")


def parse_dpid(text: str | None) -> int | None:
    """OVSDB's datapath_id ("0000ae5bc7b4e24a"); None when absent or not hex."""
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


class Identity:
    def __init__(self, bridge: str, stats):
        self.bridge, self.stats = bridge, stats
        self.wanted: int | None = None  # our bridge's datapath id (OVSDB)
        self.current: int | None = None  # the switch we program
        self.waiting: set[int] = set()  # connected before OVSDB named ours
        self.refused: set[int] = set()  # logged once each

    def arrived(self, dpid: int) -> str:
        """A switch connected: "adopt", "wait" (ours is not known yet) or "refuse"."""
        if self.wanted is None:
            LOG.info(
                "ovsnat: datapath %016x connected; waiting for OVSDB to name bridge "
                "%s's datapath before programming it",
                dpid,
                self.bridge,
            )
            self.waiting.add(dpid)
            return "wait"
        if dpid != self.wanted or self.current not in (None, dpid):
            self._refuse(dpid)
            return "refuse"
        self.current = dpid
        return "adopt"

    def gone(self, dpid: int) -> bool:
        """A switch disconnected; True when it was ours."""
        self.waiting.discard(dpid)
        if dpid == self.current:
            self.current = None
            return True
        return False

    def named(self, text: str) -> tuple[list, int | None, bool]:
        """OVSDB gave our bridge's datapath id: (switches to refuse, the waiting one to adopt,
        whether the one we program is no longer ours)."""
        dpid = parse_dpid(text)
        if dpid is None or dpid == self.wanted:
            return [], None, False
        LOG.info("ovsnat: bridge %s is datapath %016x", self.bridge, dpid)
        self.wanted = dpid
        drop = self.current is not None and self.current != dpid
        if drop:
            self._refuse(self.current)
            self.current = None
        refuse = sorted(d for d in self.waiting if d != dpid)
        for d in refuse:
            self._refuse(d)
        adopt = dpid if dpid in self.waiting and self.current is None else None
        self.waiting.clear()
        if adopt is not None:
            self.current = adopt
        return refuse, adopt, drop

    def _refuse(self, dpid: int) -> None:
        self.stats.inc("datapaths_refused")
        if dpid not in self.refused:
            self.refused.add(dpid)
            LOG.error(
                "ovsnat: refusing datapath %016x: this controller programs bridge %s "
                "(datapath %s) only; another bridge points at it (ovs-vsctl "
                "set-controller); its connection is closed, nothing it sends is used",
                dpid,
                self.bridge,
                f"{self.wanted:016x}" if self.wanted else "unknown",
            )

    def status(self) -> dict:
        return {
            "expected": f"{self.wanted:016x}" if self.wanted is not None else None,
            "refused": [f"{d:016x}" for d in sorted(self.refused)],
        }
