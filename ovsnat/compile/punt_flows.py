"""The flows and meters of the controller's packet-in paths that do not belong to one
feature: the meters every punt goes through, the VMs' DHCP requests, and the quarantine of a
port that floods (ovsnat.core.punts decides when)."""

from __future__ import annotations

from ovsnat.compile.actions import Controller, Meter
from ovsnat.compile.flows import (
    COOKIE_QUARANTINE,
    METER_CONTROLLER,
    NO_VLAN,
    Flow,
    Match,
    MeterSpec,
    make_flow,
    owner_cookie,
)
from ovsnat.compile.pipeline import CLASSIFY, EGRESS, EGRESS_OUT
from ovsnat.compile.routed_flows import outside_ports
from ovsnat.model import HostConfig
from ovsnat.packets.icmp import ERROR_TYPES

DHCP_REQUEST = {"tp_src": 68, "tp_dst": 67}

PACKET_IN_METER = 1  # packet-ins from VMs: TTL expired, ICMP errors, RARP
CLAIM_METER = 2  # ARP on the uplink claiming one of this host's addresses
WHOLE = 0xFFFF  # packet-in of the whole frame (the controller sends it on)
ICMP_MAX_LEN = WHOLE  # the whole ICMP error
DHCP_METER = 3  # VMs' DHCP requests (ovsnat.core.dhcp answers them)
UPLINK_METER = 4  # packet-ins from outside: TTL expired, ICMP errors to FIP VMs
PRESENCE_METER = 5  # copies of the frames of VMs whose FIP waits for them
PACKET_IN_RATE_PPS = 100
CLAIM_RATE_PPS = 500  # answers to up to 64 probe rounds at once fit (presence.py)
DHCP_RATE_PPS = 200  # the whole host's; each port also has its share (ovsnat.core.punts)
# Installed before any flow. Every packet-in path has a meter of its own, so no source can
# crowd out another at the switch: meter 1 on punts from VMs, meter 2 on claims seen on the
# uplink (answers to FIP probes), meter 3 on DHCP requests (a VM's boot must not wait behind
# the others), meter 4 on punts from outside (nobody outside can starve the VMs' ICMP
# errors, or the other way round), meter 5 on presence copies (metering only the copy: the
# frame itself goes on); within each, every VM port has its own share (ovsnat.core.punts). The
# switch-wide controller meter is a backstop for packet-ins ovsnat did not ask for.
METERS = (
    MeterSpec(PACKET_IN_METER, PACKET_IN_RATE_PPS),
    MeterSpec(CLAIM_METER, CLAIM_RATE_PPS),
    MeterSpec(DHCP_METER, DHCP_RATE_PPS),
    MeterSpec(UPLINK_METER, PACKET_IN_RATE_PPS),
    MeterSpec(PRESENCE_METER, PACKET_IN_RATE_PPS),
    MeterSpec(METER_CONTROLLER, 2 * PACKET_IN_RATE_PPS),
)


def dhcp_punts(cfg: HostConfig, c: int) -> list[Flow]:
    """VMs' DHCP requests go to the controller, which answers them from the port's own
    record (ovsnat.core.dhcp); requests from the uplink(s) or the fabric are dropped, so no host
    answers another's VMs and nothing of it crosses the fabric."""
    outside = [p for p in (*outside_ports(cfg), cfg.fabric_ofport) if p]
    return [
        make_flow(c, CLASSIFY, 420, Match.of(proto="udp", in_port=p, **DHCP_REQUEST), [])
        for p in outside
    ] + [
        make_flow(
            c,
            CLASSIFY,
            410,
            Match.of(proto="udp", vlan_tci=NO_VLAN, **DHCP_REQUEST),
            [Meter(DHCP_METER), Controller(WHOLE)],
        )
    ]


def quarantine_flows(kind: str, port: int) -> list[Flow]:
    """A VM port over its share of packet-ins of one kind (ovsnat.core.punts): that kind is
    dropped at the switch for a while by flows with a hard timeout, outside the desired
    state, so its flood cannot use up the meter every VM shares. Only the punted traffic
    is dropped (a quarantined presence flood also loses its ARP and odd frames meanwhile)."""
    c = owner_cookie(COOKIE_QUARANTINE, port)
    if kind == "dhcp":
        matches = [(CLASSIFY, 430, Match.of(proto="udp", in_port=port, **DHCP_REQUEST))]
    elif kind == "rarp":
        matches = [(CLASSIFY, 430, Match.of(proto="rarp", in_port=port))]
    elif kind == "ttl":
        matches = [(EGRESS, 310, Match.of(proto="ip", in_port=port, nw_ttl=1))]
    elif kind == "icmp":
        matches = [
            (EGRESS_OUT, 110, Match.of(proto="icmp", in_port=port, icmp_type=t))
            for t in ERROR_TYPES
        ]
    else:  # presence: above the VM's own ARP flow and catch-all
        matches = [
            (CLASSIFY, 101, Match.of(proto="arp", in_port=port)),
            (CLASSIFY, 91, Match.of(in_port=port)),
        ]
    return [make_flow(c, table, prio, match, []) for table, prio, match in matches]
