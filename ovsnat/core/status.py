"""The controller's counters: one store, read by the status file and by the metrics.

The host controller counts into `Stats`; `ovsnat status` reads the JSON file the shim writes
from `HostController.status()`, and Prometheus scrapes the same numbers through
ovsnat.runtime.metrics, so the two can never disagree.
"""

from __future__ import annotations

import time
from collections import deque

# name -> help; each is a monotonically increasing count (Prometheus: ovsnat_<name>_total)
COUNTERS = {
    "flow_mods": "flow_mods sent to the switch",
    "bundles": "OpenFlow bundles sent",
    "of_errors": "OpenFlow error replies",
    "syncs": "full reconciliations with the switch",
    "ovsdb_reconnects": "OVSDB (re)connections",
    "fip_conflicts": "ARP claims of one of this host's FIPs seen on the uplink",
    "activations": "FIPs that went live on this host",
    "yields": "FIPs given up because another ovsnat host announced them",
    "probes": "ARP probes sent for FIPs waiting on this host",
    "icmp_errors": "ICMP errors translated for FIP VMs",
    "ttl_expired": "time exceeded answered where a TTL ran out at this hop",
    "faults": "exceptions inside the controller, each followed by a full resync",
    "handoff_departures": "PAT VMs that left this host with their sessions handed to them",
    "handoff_arrivals": "PAT VMs that arrived on this host (their handoff grace began)",
    "dhcp_offers": "DHCP offers sent to VMs",
    "dhcp_acks": "DHCP acks sent to VMs (new leases, renewals, informs)",
    "dhcp_naks": "DHCP naks (a VM asked for an address that is not its own)",
    "dhcp_releases": "DHCP releases and declines from VMs",
    "dhcp_refused": "DHCP requests not answered (a port ovsnat does not serve, another MAC)",
    "dhcp_quarantines": "VM ports quarantined for flooding DHCP requests",
    "packet_in_quarantines": "VM ports quarantined for flooding the controller (any kind)",
    "audits": "periodic audits of ovsnat's flows on the switch",
    "flow_repairs": "flows the audit repaired (missing, stale or changed behind ovsnat's back)",
    "status_write_failures": "writes of the status file that failed (retried every second)",
    "switch_send_failures": "messages the switch connection refused (it was closing)",
    "ovsdb_write_failures": "writes to OVSDB that could not be sent (made again on reconnect)",
    "vswitchd_call_failures": "calls on ovs-vswitchd's control socket (as ovs-appctl makes "
    "them) that failed: conntrack reads, zone limits, probes",
    "datapaths_refused": "connections of switches that are not the configured bridge, refused",
    "metrics_failures": "attempts to listen on metrics_port that failed (tried every 10 s)",
}


# Why a packet-in was dropped (status `packet_in_drops`, metric ovsnat_packet_in_drops_total
# {reason}): a fixed vocabulary, so a sender cannot grow the map.
DROP_REASONS = {
    "not_ready": "the host is not programmed yet",
    "unknown_port": "from a port ovsnat does not serve",
    "from_fabric": "from the fabric port (nothing there is for the controller)",
    "unexpected_table": "sent up by a table that punts nothing from that port",
    "over_share": "the port is over its share of packet-ins (quarantined)",
    "not_arp": "not a well-formed ARP from the uplink",
    "unknown_vlan": "an ARP from the uplink in a VLAN that is no external network here",
    "bad_gateway_mac": "the external gateway's ARP with a multicast or zero MAC",
    "rarp_spoofed": "a RARP whose source MAC is not the port's",
    "not_relayed": "TTL expired or ICMP error that is not for this host to answer",
    "error": "a fault of the controller's while handling it (logged)",
    **{
        f"dhcp_{r}": f"malformed DHCP request: {r.replace('_', ' ')}"
        for r in (
            "short_frame",
            "not_ipv4",
            "bad_ip_header",
            "not_udp",
            "fragment",
            "truncated_udp",
            "not_dhcp_request",
            "bad_udp_length",
            "truncated_bootp",
            "not_ethernet_request",
            "no_magic_cookie",
            "bad_message_type",
            "bad_address_option",
            "truncated_option",
        )
    },
}


class Stats:
    def __init__(self):
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.drops: dict[str, int] = {}
        self.conflicts: deque = deque(maxlen=20)
        self.reconcile_seconds: float | None = None
        self.pat: dict | None = None  # PAT usage from conntrack (see the shim)
        self.version = 0  # bumped on every change: the file is stale

    def inc(self, name: str, amount: int = 1) -> None:
        self.counts[name] += amount
        self.version += 1

    def drop(self, reason: str) -> None:
        """A packet-in dropped for `reason` (one of DROP_REASONS)."""
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}")
        self.drops[reason] = self.drops.get(reason, 0) + 1
        self.version += 1

    def conflict(self, address: str, mac: str, port: str, now: float) -> None:
        self.inc("fip_conflicts")
        self.conflicts.append(
            {
                "fip": address,
                "mac": mac,
                "port": port,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)),
            }
        )

    def touch(self) -> None:
        self.version += 1


def status_of(ctl, now: float) -> dict:
    """What `ovsnat status` and the metrics show of a host controller (ovsnat.core.controller)."""
    host = ctl.host
    vms, fips, pending = host.counts() if host else (0, 0, [])
    return {
        "time": now,
        "datapath": f"{ctl.sw.dpid:016x}" if ctl.sw.dpid else None,
        "in_sync": ctl.sw.session.ready and not ctl.sw.session.bundles,
        "snat_ip": str(host.cfg.snat_ip) if host else None,
        "transit_cidr": str(ctl.base_cfg.transit_cidr),
        "vms": vms,
        "fips": fips,
        "pending_fips": pending,
        "waiting": ctl.fips.waiting(),
        "rejected": [{"name": r.name, "reason": r.reason} for r in (host.rejected if host else [])],
        "failed_owners": {f"{k:#x}": v for k, v in ctl.sw.failed_owners.items()},
        "refused_groups": {str(g): why for g, (_, why) in ctl.sw.session.refused_groups.items()},
        "duplicate_flows": host.idents.status() if host else [],
        "conflicts": list(ctl.stats.conflicts),
        "stats": dict(ctl.stats.counts),
        "reconcile_seconds": ctl.stats.reconcile_seconds,
        "pat": ctl.stats.pat,
        "dhcp_leases": ctl.dhcp.status(host, now),
        "handoffs": ctl.handoffs.status(host, now),
        "conn_refused": dict(ctl.refusals.by_port),
        "security_groups": {
            **(host.sg.status() if host else {}),
            "dropped": dict(ctl.refusals.sg_host),
            "dropped_by_port": dict(ctl.refusals.sg_by_port),
            "vips": host.vips.status() if host else {},
        },
        "routing": host.routing_status() if host else {},
        "conn_limit": ctl.zones.status(),
        "vswitchd": ctl.vswitchd.status(),
        "failures": ctl.failures.status(),
        "datapaths": ctl.identity.status(),
        "packet_in_drops": dict(sorted(ctl.stats.drops.items())),
        **ctl.announcing.status(now),
    }
