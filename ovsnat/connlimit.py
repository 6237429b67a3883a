"""Per-VM connection limits (`conn_limit`): one VM cannot fill the host's conntrack table
and stop every other VM's new PAT sessions.

The PAT zones stay as they are; a VM with a limit first goes through a counting zone of its
own (conn_limit_zone_base + its OpenFlow port). A new connection is committed there with
ct_mark 1; once the zone holds conn_limit connections (`ovs-appctl dpctl/ct-set-limits`,
applied by the shim from the controller's `ZoneLimits`) the commit fails, the mark stays 0,
and the VM's own flow drops the packet and counts it. Established traffic pays one more
conntrack lookup. The zone counts what conntrack still tracks (TIME_WAIT included), as the
kernel's and OVS's zone limits do. FIP VMs are stateless and have no limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from ovsnat import ofwire
from ovsnat.flows import Ct, Flow, Goto, Load, Match, make_flow
from ovsnat.model import HostConfig, VmPort
from ovsnat.pipeline import ARRIVED, CONN_COUNT, CONN_VERDICT, EGRESS, LIMITED, VM_ROUTE, flag

MAX_ZONE = 65535


def zone(cfg: HostConfig, vm: VmPort) -> int | None:
    """The VM's counting zone, or None: no limit (off, a FIP VM, or the zone would meet
    another user's: the PAT and fragment zones, the networks' zones)."""
    if not cfg.conn_limit or vm.fip is not None:
        return None
    z = cfg.conn_limit_zone_base + vm.ofport
    networks = range(cfg.network_ct_zone_base + 1, cfg.network_ct_zone_base + 4095)
    if z > MAX_ZONE or z in (cfg.ct_zone, cfg.fip_frag_ct_zone) or z in networks:
        return None
    return z


def classify_marks(cfg: HostConfig, vm: VmPort) -> list:
    """Actions of the VM's classify flow: its zone and the limited flag."""
    z = zone(cfg, vm)
    return [] if z is None else [Load("reg4", z), Load("reg5", 1, LIMITED)]


def host_flows(cfg: HostConfig, c: int, router_mac: str) -> list[Flow]:
    if not cfg.conn_limit:
        return []
    began_elsewhere = [make_flow(c, CONN_COUNT, 110, Match.of(
        ct_state="+new+trk", proto="tcp", reg5=flag(ARRIVED), tcp_flags="-syn"),
        [Goto(EGRESS)])] if cfg.handoff_vlan and cfg.fabric_ofport else []
    return began_elsewhere + [
        make_flow(c, VM_ROUTE, 110, Match.of(proto="ip", reg5=flag(LIMITED), dl_dst=router_mac),
                  [Ct(zone="reg4", table=CONN_COUNT)]),
        make_flow(c, CONN_COUNT, 100, Match.of(ct_state="+new+trk", proto="ip"),
                  [Ct(zone="reg4", table=CONN_VERDICT, commit=True, mark=1)]),
        make_flow(c, CONN_COUNT, 0, Match(), [Goto(EGRESS)]),
        make_flow(c, CONN_VERDICT, 100, Match.of(ct_mark="0x1/0x1"), [Goto(EGRESS)]),
        make_flow(c, CONN_VERDICT, 0, Match(), []),
    ]


def vm_flows(cfg: HostConfig, vm: VmPort, c: int) -> list[Flow]:
    """The VM's refusal counter: what its zone refused is dropped here."""
    z = zone(cfg, vm)
    return [] if z is None else [make_flow(c, CONN_VERDICT, 10, Match.of(reg4=f"{z:#x}"), [])]


@dataclass(frozen=True)
class ZoneLimits:
    """Zone limits for the shim to apply (`dpctl/ct-set-limits`, `ct-del-limits`), in order."""

    set: tuple[tuple[int, int], ...] = ()        # (zone, limit)
    delete: tuple[int, ...] = ()


@dataclass(frozen=True)
class ZoneLimitsDone:
    """What the shim could not apply of one ZoneLimits, and why (all empty: all of it)."""

    limits: ZoneLimits
    failed: tuple[int, ...] = ()                 # zones whose set or delete failed
    error: str = ""


class Zones:
    """Which counting zones the datapath should limit, kept up to date port by port (O(1)
    per change); the shim applies each ZoneLimits it is given and says what failed. A
    zone whose limit (or its removal) failed is applied again, from what is wanted then,
    every RETRY seconds until it takes: a limit that never took is never counted as set."""

    RETRY = 10.0

    def __init__(self):
        self.wanted: dict[str, int] = {}        # port name -> its counting zone
        self.failed: dict[int, str] = {}        # zone -> why its last change failed
        self.retry_at: float | None = None
        self.limit = 0

    def update(self, host, names) -> list:
        if host is None or not host.cfg.conn_limit:
            return []
        self.limit = host.cfg.conn_limit
        add, drop = [], []
        for name in names:
            port = host.accepted_port(name)
            want = zone(host.cfg, port) if port is not None else None
            have = self.wanted.get(name)
            if want == have:
                continue
            if have is not None:
                drop.append(have)
                del self.wanted[name]
            if want is not None:
                add.append((want, host.cfg.conn_limit))
                self.wanted[name] = want
        return [ZoneLimits(tuple(add), tuple(drop))] if add or drop else []

    def reapply(self, host) -> list:
        """Everything again (a switch that reconnects may be a restarted ovs-vswitchd, which
        forgot its limits)."""
        self.wanted.clear()
        return self.update(host, list(host.valid)) if host is not None else []

    def done(self, result: ZoneLimitsDone, now: float) -> None:
        """The shim applied one ZoneLimits: forget the failures it fixed, keep the new ones."""
        for z in (*(z for z, _ in result.limits.set), *result.limits.delete):
            self.failed.pop(z, None)
        for z in result.failed:
            self.failed[z] = result.error
        if self.failed and self.retry_at is None:
            self.retry_at = now + self.RETRY

    def due(self, now: float) -> list:
        """The failed zones again, as they are wanted now (set, or deleted and flushed)."""
        if self.retry_at is None or now < self.retry_at:
            return []
        self.retry_at = None
        if not self.failed:
            return []
        wanted = set(self.wanted.values())
        return [ZoneLimits(tuple((z, self.limit) for z in sorted(self.failed) if z in wanted),
                           tuple(z for z in sorted(self.failed) if z not in wanted))]

    def status(self) -> dict:
        return {"zones": len(self.wanted), "not_applied": len(self.failed),
                "error": next(iter(self.failed.values()), "")}


class Refusals:
    """Connections refused per VM, as the datapath counted them: the packet counts of the
    VMs' refusal flows (table conn_verdict), asked for every POLL seconds. No packet-in:
    a flood is counted at line rate. A count starts again when the VM's flows are
    re-created (a new plug); the metrics publish it as a counter, which may reset."""

    POLL = 5.0
    KEY = ("conn-refusals",)

    def __init__(self):
        self.by_port: dict[str, int] = {}
        self.xid: int | None = None
        self.asked_at = 0.0
        self.counts: dict[str, int] = {}

    def due(self, host, session, timers, now: float) -> list:
        """Ask again; a request unanswered for three periods (refused by the switch, say)
        is given up, so polling never stops for good."""
        timers.at(now + self.POLL, self.KEY)
        if host is None or not host.cfg.conn_limit or not session.ready:
            return []
        if self.xid is not None:
            if now - self.asked_at < 3 * self.POLL:
                return []
            self.reset(session)
        self.xid, self.asked_at, self.counts = session.xids.take(), now, {}
        return [ofwire.flow_stats_request(self.xid, 0, 0, table=CONN_VERDICT)]

    def owns(self, xid: int) -> bool:
        return xid is not None and xid == self.xid

    def flow_stats(self, host, session, entries, more: bool) -> list:
        """(table, cookie, digest, packets) entries: the VM flows of conn_verdict."""
        for table, cookie, _, packets in entries:
            owner = host.owner_names.get(cookie >> 24) if host is not None else None
            if table == CONN_VERDICT and isinstance(owner, str) and \
                    host.accepted_port(owner) is not None:
                self.counts[owner] = self.counts.get(owner, 0) + packets
        if not more:
            session.xids.release(self.xid)
            self.xid, self.by_port = None, self.counts
        return []

    def reset(self, session) -> None:
        """A disconnect or a fault: a request in flight will not be answered."""
        if self.xid is not None:
            session.xids.release(self.xid)
        self.xid = None
