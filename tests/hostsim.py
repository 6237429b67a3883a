"""One simulated hypervisor for the host controller's unit tests: the controller, a model
switch (tests/switchmodel.py) and OVSDB rows, with a clock the test moves by hand. Every
output of the controller is delivered, and every answer fed back, until all is quiet."""

from __future__ import annotations

from ovsnat.cli import golden
from ovsnat.compile.compiler import compile_state
from ovsnat.core.controller import HostController
from ovsnat.core.effects import (
    AdoptSwitch,
    FlushConntrack,
    IfaceKeys,
    Probe,
    ReadConntrack,
    Reconfigure,
    RefuseSwitch,
    ReleaseMemory,
    Routes,
    RoutesDone,
    ZoneLimits,
    ZoneLimitsDone,
)
from ovsnat.core.state import build_state
from ovsnat.model import HostConfig, mac_str, routing
from ovsnat.model.externals import served_ids
from ovsnat.model.rows import Changes, IfaceRow, Snapshot
from ovsnat.packets import arp
from tests.switchmodel import ModelSwitch

UPLINK = 1
UPLINK_ROW = IfaceRow("uplink", UPLINK, {}, "up")
DPID = 0x1  # the bridge's datapath id (OVSDB and the switch)


def vm_row(n: int, fip: str | None = None, ofport: int | None = None, **extra) -> IfaceRow:
    ids = {
        "iface-id": f"vm{n}",
        "attached-mac": f"02:00:0a:00:00:{n:02x}",
        "ovsnat-fixed-ip": f"10.0.0.{n}",
        **({"ovsnat-fip": fip} if fip else {}),
        **extra,
    }
    return IfaceRow(f"tapvm{n}", n if ofport is None else ofport, ids, "up")


class SimHost:
    def __init__(self, switch: ModelSwitch | None = None, **options):
        self.cfg = HostConfig.parse({**golden.BASE, **options})
        self.now = 1000.0
        self.ctl = HostController(self.cfg, clock=lambda: self.now)
        self.switch = switch if switch is not None else ModelSwitch()
        self.rows: dict[str, IfaceRow] = {"uplink": UPLINK_ROW}
        self.bridge_ids: dict = {}
        self.key_writes: list[IfaceKeys] = []
        self.zone_limits: list = []  # ZoneLimits the shim would apply
        self.flushes: list = []  # (zone, ct-tuple) conntrack flushes asked for
        self.zone_limit_error = ""  # set: the shim's ct-set-limits calls fail with it
        self.calls: list = []  # ReadConntrack and Probe asked for (tests answer)
        self.switch_verdicts: list = []  # AdoptSwitch and RefuseSwitch, in order
        self.datapath_id = f"{DPID:016x}"
        self.echo_writes = True  # apply key writes to the rows, as OVSDB would
        self.reconfigures = 0  # ovs-vswitchd reconfigurations asked for
        self.memory_releases = 0  # bursts over (the shim gives memory back)
        self.routes: list = []  # Routes written (bgp mode), each answered as done
        self.kernel_tables: set = set()  # what those writes left in the kernel

    # --- feeding events ----------------------------------------------------------------
    def deliver(self, out) -> None:
        queue = list(out)
        while queue:
            item = queue.pop(0)
            if isinstance(item, Reconfigure):
                self.reconfigures += 1
                continue
            if isinstance(item, ReleaseMemory):
                self.memory_releases += 1
                continue
            if isinstance(item, Routes):
                self.routes.append(item)
                self.kernel_tables = (self.kernel_tables | set(item.add)) - set(item.delete)
                queue += self.ctl.result(RoutesDone(item), self.now)
                continue
            if isinstance(item, IfaceKeys):
                self.key_writes.append(item)
                if self.echo_writes:
                    queue += self._echo(item)
                continue
            if isinstance(item, ZoneLimits):
                self.zone_limits.append(item)
                failed = (
                    tuple(z for z, _ in item.set) + item.delete if self.zone_limit_error else ()
                )
                queue += self.ctl.result(
                    ZoneLimitsDone(item, failed, self.zone_limit_error), self.now
                )
                continue
            if isinstance(item, FlushConntrack):
                self.flushes += list(item.flushes)
                continue
            if isinstance(item, (ReadConntrack, Probe)):
                self.calls.append(item)
                continue
            if isinstance(item, (AdoptSwitch, RefuseSwitch)):
                self.switch_verdicts.append(item)
                continue
            data = item if isinstance(item, bytes) else b"".join(item)
            for r in self.switch.receive(data):
                queue += self._reply(r)

    def _reply(self, r) -> list:
        if r.kind == "barrier":
            return self.ctl.barrier(r.xid, self.now)
        if r.kind == "error":
            return self.ctl.error(r.xid, *r.args, self.now)
        if r.kind == "flow_stats":
            return self.ctl.flow_stats(r.xid, *r.args, self.now)
        if r.kind == "group_stats":
            return self.ctl.group_stats(r.xid, *r.args, self.now)
        return self.ctl.meter_stats(r.xid, *r.args, self.now)

    def _echo(self, keys: IfaceKeys) -> list:
        row = self.rows.get(keys.name)
        if row is None:
            return []
        ids = {k: v for k, v in row.external_ids.items() if k not in keys.remove}
        ids.update(dict(keys.set))
        self.rows[keys.name] = IfaceRow(row.name, row.ofport, ids, row.link_state)
        return self.ctl.ovsdb(Changes({keys.name: self.rows[keys.name]}), self.now)

    def start(self, connect: bool = True) -> SimHost:
        """The controller's first OVSDB view, then (optionally) its switch connects."""
        self.deliver(
            self.ctl.ovsdb(
                Snapshot(dict(self.rows), dict(self.bridge_ids), self.datapath_id), self.now
            )
        )
        if connect:
            self.connect()
        return self

    def connect(self) -> None:
        self.deliver(self.ctl.switch_up(DPID, self.now))

    def plug(self, *rows: IfaceRow) -> None:
        for row in rows:
            self.rows[row.name] = row
        self.deliver(self.ctl.ovsdb(Changes({r.name: r for r in rows}), self.now))

    def unplug(self, name: str) -> None:
        self.rows.pop(name)
        self.deliver(self.ctl.ovsdb(Changes(removed={name}), self.now))

    def set_bridge_ids(self, **ids) -> None:
        self.bridge_ids = ids
        self.deliver(self.ctl.ovsdb(Changes(bridge_ids=dict(ids)), self.now))

    def chores(self) -> list:
        """The shim's once-a-second chores; returns the calls on ovs-vswitchd asked for."""
        before = len(self.calls)
        self.deliver(self.ctl.chores(self.now))
        return self.calls[before:]

    def answer(self, result) -> None:
        """A call on ovs-vswitchd answered (a Reading, Probed or ZoneLimitsDone)."""
        self.deliver(self.ctl.result(result, self.now))

    def advance(self, seconds: float) -> None:
        """Move the clock, firing every deadline on the way, in order."""
        end = self.now + seconds
        while True:
            wake = self.ctl.next_wakeup()
            if wake is None or wake > end:
                break
            self.now = max(self.now, wake)
            self.deliver(self.ctl.tick(self.now))
        self.now = end

    def from_uplink(self, frame: bytes, table: int = 15) -> None:
        self.deliver(self.ctl.packet_in(UPLINK, table, frame, self.now))

    def from_vm(self, ofport: int, frame: bytes, table: int = 0) -> None:
        self.deliver(self.ctl.packet_in(ofport, table, frame, self.now))

    # --- reading results ---------------------------------------------------------------
    def desired_keys(self) -> set:
        from ovsnat.model import port_from_row

        ports = [
            p
            for name, r in sorted(self.rows.items())
            if name != "uplink"
            for p in [port_from_row(name, r.ofport, r.external_ids, r.link_state)]
            if p is not None
        ]
        cfg = self.ctl.host.cfg
        keys = routing.parse_bridge(self.bridge_ids, served_ids(self.bridge_ids, cfg.externals))
        return {(f.table, f.cookie) for f in compile_state(build_state(cfg, ports, keys))}

    def arps_out(self) -> list[arp.Arp]:
        """Every ARP the controller sent out of the uplink, in order."""
        return [
            a
            for port, frame in self.switch.packet_outs
            if port == UPLINK
            for a in [arp.parse(frame)]
            if a is not None
        ]

    def fip_live(self, fip: str) -> bool:
        """The switch answers ARP for the FIP (its responder flow is installed)."""
        name = self.ctl.host.fip_owner(fip)
        if name is None:
            return False
        from ovsnat.compile.vm import fip_responder_key

        port = self.ctl.host.valid[name]
        return (
            fip_responder_key(self.ctl.host.cfg, port, self.ctl.host.net(port))
            in self.switch.flow_keys()
        )

    def fip_mac(self, fip: str) -> str:
        import netaddr

        return mac_str(self.cfg.ip_mac(netaddr.IPAddress(fip)))

    @property
    def host_mac(self) -> str:
        return mac_str(self.cfg.snat_mac)
