"""What the datapath dropped, per VM, as its own flows counted it: connections refused by a
VM's conn_limit (its refusal flow in conn_verdict) and packets its security groups refused
(its drop flows in sg_out and sg_in), plus what the security-group tables dropped for
every port (invalid packets, packets of dead connections). No packet-in: a flood is counted
at line rate. Asked for every POLL seconds by one flow-stats request per table; a count
starts again when the VM's flows are re-created (a new plug), so the metrics publish them
as counters, which may reset.
"""

from __future__ import annotations

from ovsnat.compile.pipeline import CONN_VERDICT, SG_IN, SG_OUT
from ovsnat.openflow import messages

SG_DIRECTIONS = {SG_OUT: "egress", SG_IN: "ingress"}
HOST_DROPS = {"+inv+trk": "invalid", "+trk": "dead"}  # host flows of the sg tables, by state


class DropCounts:
    POLL = 5.0
    KEY = ("drop-counts",)

    def __init__(self):
        self.by_port: dict[str, int] = {}  # conn_limit refusals per port
        self.sg_by_port: dict[str, dict[str, int]] = {}  # port -> direction -> packets
        self.sg_host: dict[str, int] = {}  # "invalid"/"dead" -> packets, both directions
        self.xids: dict[int, int] = {}  # request in flight -> its table
        self.asked_at = 0.0
        self.counts: dict = {}

    def due(self, host, session, timers, now: float) -> list:
        """Ask again; requests unanswered for three periods (refused by the switch, say)
        are given up, so polling never stops for good."""
        timers.at(now + self.POLL, self.KEY)
        if host is None or not session.ready:
            return []
        tables = ([CONN_VERDICT] if host.cfg.conn_limit else []) + (
            [SG_OUT, SG_IN] if host.sg.used else []
        )
        if not tables:
            self.by_port, self.sg_by_port, self.sg_host = {}, {}, {}
            return []
        if self.xids:
            if now - self.asked_at < 3 * self.POLL:
                return []
            self.reset(session)
        self.asked_at, self.counts = now, {"refused": {}, "sg": {}, "host": {}}
        out = []
        for table in tables:
            xid = session.xids.take()
            self.xids[xid] = table
            out.append(messages.flow_stats_request(xid, 0, 0, table=table))
        return out

    def owns(self, xid: int) -> bool:
        return xid in self.xids

    def flow_stats(self, host, session, entries, more: bool, xid: int | None = None) -> list:
        """(table, cookie, digest, packets) entries of one of the polled tables."""
        for table, cookie, _, packets in entries:
            if host is not None:
                self._count(host, table, cookie, packets)
        if not more and xid in self.xids:
            session.xids.release(xid)
            del self.xids[xid]
            if not self.xids:
                self.by_port = self.counts["refused"]
                self.sg_by_port, self.sg_host = self.counts["sg"], self.counts["host"]
        return []

    def _count(self, host, table: int, cookie: int, packets: int) -> None:
        owner = host.owner_names.get(cookie >> 24)
        if isinstance(owner, str) and host.accepted_port(owner) is not None:
            if table == CONN_VERDICT:
                refused = self.counts["refused"]
                refused[owner] = refused.get(owner, 0) + packets
            elif table in SG_DIRECTIONS:
                per = self.counts["sg"].setdefault(owner, {})
                per[SG_DIRECTIONS[table]] = per.get(SG_DIRECTIONS[table], 0) + packets
            return
        if table in SG_DIRECTIONS and packets:
            for flow in host.flows_for({(table, cookie)}):
                what = HOST_DROPS.get(flow.match.get("ct_state")) if not flow.actions else None
                if what:
                    self.counts["host"][what] = self.counts["host"].get(what, 0) + packets

    def reset(self, session) -> None:
        """A disconnect or a fault: requests in flight will not be answered."""
        for xid in self.xids:
            session.xids.release(xid)
        self.xids = {}
