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

from ovsnat.compile.actions import Ct, Goto, Load
from ovsnat.compile.flows import Flow, Match, make_flow
from ovsnat.compile.pipeline import (
    ARRIVED,
    CONN_COUNT,
    CONN_VERDICT,
    EGRESS,
    EW_ROUTE,
    LIMITED,
    VM_ROUTE,
    flag,
)
from ovsnat.model import HostConfig, VmPort

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
    began_elsewhere = (
        [
            make_flow(
                c,
                CONN_COUNT,
                110,
                Match.of(ct_state="+new+trk", proto="tcp", reg5=flag(ARRIVED), tcp_flags="-syn"),
                [Goto(EGRESS)],
            )
        ]
        if cfg.handoff_vlan and cfg.fabric_ofport
        else []
    )
    return began_elsewhere + [
        make_flow(
            c,
            VM_ROUTE,
            110,
            Match.of(proto="ip", reg5=flag(LIMITED), dl_dst=router_mac),
            [Ct(zone="reg4", table=CONN_COUNT)],
        ),
        # A network routed east-west comes through ew_route: what it does not route on
        # is counted as from vm_route.
        make_flow(
            c,
            EW_ROUTE,
            10,
            Match.of(proto="ip", reg5=flag(LIMITED)),
            [Ct(zone="reg4", table=CONN_COUNT)],
        ),
        make_flow(
            c,
            CONN_COUNT,
            100,
            Match.of(ct_state="+new+trk", proto="ip"),
            [Ct(zone="reg4", table=CONN_VERDICT, commit=True, mark=1)],
        ),
        make_flow(c, CONN_COUNT, 0, Match(), [Goto(EGRESS)]),
        make_flow(c, CONN_VERDICT, 100, Match.of(ct_mark="0x1/0x1"), [Goto(EGRESS)]),
        make_flow(c, CONN_VERDICT, 0, Match(), []),
    ]


def vm_flows(cfg: HostConfig, vm: VmPort, c: int) -> list[Flow]:
    """The VM's refusal counter: what its zone refused is dropped here."""
    z = zone(cfg, vm)
    return [] if z is None else [make_flow(c, CONN_VERDICT, 10, Match.of(reg4=f"{z:#x}"), [])]
