"""The `[ovsnat]` options: names (part of the user contract: never rename one), defaults and
help. One table serves the controller (registered with oslo.config in ovsnat.runtime.config) and the
offline tools (`ovsnat flows --config`), so both read a config file the same way."""

from __future__ import annotations

import configparser
from dataclasses import dataclass

SECTION = "ovsnat"


@dataclass(frozen=True)
class Option:
    name: str
    default: str | int | None
    help: str
    kind: str = "str"  # str | int | port


OPTIONS: tuple[Option, ...] = (
    Option("bridge", "br-int", "Bridge whose VM ports ovsnat programs."),
    Option("uplink_port", "uplink", "OVS port name toward the external network."),
    Option(
        "internal_cidr",
        "10.0.0.0/24",
        "The host's default network: the VMs' network for ports that name no "
        "external_ids:ovsnat-network (untagged on the fabric). Empty: no default network; "
        "every port names its network.",
    ),
    Option(
        "internal_gateway_ip",
        "10.0.0.1",
        "The default network's gateway; ovsnat answers ARP for it with router_mac "
        "(empty when internal_cidr is).",
    ),
    Option("router_mac", "02:00:00:00:00:01", "MAC the VMs see for their gateway."),
    Option(
        "external_cidr", "203.0.113.0/24", "The external network; FIPs and the SNAT IP live in it."
    ),
    Option("external_gateway_ip", "203.0.113.1", "The upstream router."),
    Option(
        "external_gateway_mac",
        "",
        "The upstream router's MAC; empty: learn it by ARP on the uplink and follow changes.",
    ),
    Option(
        "snat_ip",
        "",
        "This host's PAT address (one per host). Empty: taken from the bridge's "
        "external_ids:ovsnat-snat-ip (set by ovsnat-neutron-agent); until then PAT and "
        "FIPs wait.",
    ),
    Option("snat_port_min", 20000, "First source port of this host's PAT range.", "port"),
    Option("snat_port_max", 29999, "Last source port of this host's PAT range.", "port"),
    Option(
        "pat_ports_per_vm",
        0,
        "Ports per VM inside the PAT range (0: all VMs share the range). With K > 0, the VM "
        "at host offset N of internal_cidr owns ports snat_port_min + N*K ... + K-1.",
        "int",
    ),
    Option(
        "ct_zone",
        65000,
        "Conntrack zone for PAT. Keep it outside 1-4094 (Neutron's OVS firewall zones).",
        "int",
    ),
    Option(
        "fip_frag_ct_zone",
        65001,
        "Conntrack zone for fragmented FIP traffic (whole packets stay stateless).",
        "int",
    ),
    Option(
        "mac_prefix",
        "02:5a",
        "First two bytes of the MAC of each FIP and the SNAT IP (the other four are the "
        "address); must be locally administered unicast.",
    ),
    Option(
        "fip_activation",
        "probe",
        "When a FIP starts answering on this host. 'probe' (default): as soon as ARP probes "
        "on the uplink find no other host answering for it (within 0.5 s of the plug), or "
        "at the VM's first frame here while the host it left still answers, so two hosts "
        "never answer for one FIP and a silent VM still gets its FIP. 'first-packet': only "
        "once the VM has sent a frame here (boot traffic, QEMU's RARP). 'immediate': as "
        "soon as the port is plugged. Ignored with external_mode = bgp: there a FIP goes "
        "live at plug unless another host announces it (its route, as the ToRs pass it "
        "back), and then at the VM's first frame here (docs/bgp.md, section 2).",
    ),
    Option(
        "fabric_port",
        "",
        "OVS port on the bridge toward the tenant networks' L2 fabric (a trunk: the "
        "untagged network untagged, each VLAN network in its VLAN). Empty: no traffic "
        "between hosts except through FIPs.",
    ),
    Option(
        "metadata_port",
        "",
        "OVS port on the bridge toward this host's metadata proxy (ovsnat-metadata-proxy, "
        "docs/metadata.md): a VM's requests to 169.254.169.254:80 from its own MAC and "
        "fixed IP go there, the rest to 169.254.169.254 is dropped and counted. Empty: no "
        "metadata (all of it dropped and counted).",
    ),
    Option(
        "transit_cidr",
        "auto",
        "Addresses that exist only inside this host's datapath, between a VLAN network's own "
        "conntrack zone and the shared PAT zone (one per network: transit + VLAN << 10). "
        "'auto' (the default): the first /10 of the reserved 240.0.0.0/4 that overlaps "
        "neither external_cidr nor internal_cidr, chosen at start and shown by `ovsnat "
        "status`. Otherwise a /10 that overlaps neither the external network nor any tenant "
        "network (a port inside it is refused). Until 0.2 the default was 100.64.0.0/10: "
        "set that to keep VLAN networks' PAT sessions across the upgrade (CHANGELOG.md).",
    ),
    Option(
        "network_ct_zone_base",
        60000,
        "A VLAN network's own conntrack zone is this + its VLAN (PAT step one, FIP "
        "fragments); keep the range clear of ct_zone, fip_frag_ct_zone and other users' "
        "zones (Neutron's OVS firewall uses 1-4094).",
        "int",
    ),
    Option(
        "conn_limit",
        0,
        "Connections one PAT VM may have in conntrack at once (0: no limit). Counted in a "
        "zone of its own, conn_limit_zone_base + its OpenFlow port, limited with "
        "`ovs-appctl dpctl/ct-set-limits`; a new connection beyond it is dropped and "
        "counted for the VM (ovsnat status). FIP VMs are stateless: no limit.",
        "int",
    ),
    Option(
        "conn_limit_zone_base",
        20000,
        "The counting zones are this + each VM's ofport; keep the range clear of ct_zone, "
        "fip_frag_ct_zone, the networks' zones and other users' zones (a VM whose zone "
        "would meet one of them gets no limit, logged).",
        "int",
    ),
    Option(
        "handoff_vlan",
        0,
        "A VLAN of the fabric reserved for PAT session handoff (docs/handoff.md): for "
        "handoff_grace seconds after a PAT VM moves to another host, its sessions that "
        "began here keep going through this host's NAT, the packets crossing the fabric "
        "in this VLAN. 0: off (a moved VM's old PAT sessions end). Needs fabric_port; no "
        "tenant network may use this VLAN.",
        "int",
    ),
    Option(
        "handoff_grace",
        300,
        "How long, in seconds, a moved VM's old PAT sessions are carried over (the host it "
        "left ends it sooner once its conntrack holds none of them).",
        "int",
    ),
    Option(
        "dhcp",
        "true",
        "Answer the DHCP requests of this host's VMs (true/false): each VM gets its fixed "
        "IP, its network's gateway and the dhcp_* values below (a port's own "
        "external_ids:ovsnat-dns/-domain/-mtu/-routes win). No DHCP frame leaves the host "
        "either way; false: VMs are configured by other means (and their DHCP is dropped).",
    ),
    Option("dhcp_dns", "", "DNS servers handed to VMs, comma-separated (empty: none)."),
    Option("dhcp_domain", "", "DNS search domain handed to VMs (empty: none)."),
    Option(
        "dhcp_lease_time",
        43200,
        "Lease time in seconds. Leases are the fixed IPs, so a short one costs only "
        "renewals; a VM keeps its address through a controller restart either way.",
        "int",
    ),
    Option(
        "dhcp_mtu",
        1500,
        "The MTU handed to VMs of the untagged network; VMs of VLAN networks get 4 bytes "
        "less when a fabric_port carries their tag (a port's ovsnat-mtu wins).",
        "int",
    ),
    Option(
        "audit_interval",
        60,
        "Seconds between audits of ovsnat's flows on the switch: flows missing, stale or "
        "changed in place behind the controller's back (ovs-ofctl del-flows, mod-flows) "
        "are repaired in one bundle, each logged and counted (flow_repairs); other "
        "cookies are never touched. 0: no audit (the switch is still reconciled on every "
        "reconnect).",
        "int",
    ),
    Option(
        "external_mode",
        "l2",
        "How this host reaches the external network. 'l2' (the default): uplink_port is on "
        "a shared external segment; ovsnat answers ARP for the FIPs and SNAT address it "
        "holds. 'bgp': routed links to the ToRs (bgp_* below, docs/bgp.md); FRR announces "
        "the /32s this host holds. Only `ovsnat bgp render` serves bgp mode so far: the "
        "controller refuses it.",
    ),
    Option("bgp_asn", "", "bgp mode: this host's own ASN (one per host; RFC 6996 private)."),
    Option("bgp_router_id", "", "bgp mode: BGP router ID; empty: the first link's address."),
    Option(
        "bgp_uplinks",
        "",
        "bgp mode: the OVS ports to the ToRs, comma-separated, one per ToR (1-4).",
    ),
    Option(
        "bgp_kernel_ports",
        "",
        "bgp mode: one OVS internal port per uplink, in the same order, holding this host's "
        "address on that link (FRR and BFD speak through it).",
    ),
    Option(
        "bgp_links",
        "",
        "bgp mode: this host's address on each link as address/31, one per uplink in the "
        "same order (RFC 3021: the other address of the /31 is the ToR's).",
    ),
    Option(
        "bgp_announce",
        "",
        "bgp mode: CIDRs whose /32s this host may announce (its FIPs and SNAT address); "
        "empty: external_cidr. Nothing else is ever exported.",
    ),
    Option(
        "bgp_accept",
        "",
        "bgp mode: the routes from the ToRs used for forwarding, CIDRs (empty: only the "
        "default route 0.0.0.0/0).",
    ),
    Option(
        "bgp_protect",
        "",
        "bgp mode: CIDRs no VM may reach besides the links themselves (the ToRs' loopbacks).",
    ),
    Option(
        "bgp_table",
        100,
        "bgp mode: the kernel table ovsnat writes live /32s to (a migrated FIP's go to this "
        "+ 1 for bgp_moved_hold); FRR imports both. 1-251.",
        "int",
    ),
    Option(
        "bgp_community_asn",
        64999,
        "bgp mode: the communities' first half: <this>:100 live, <this>:200 just moved here "
        "(the ToRs map it to a higher local preference).",
        "int",
    ),
    Option(
        "bgp_max_routes",
        1000,
        "bgp mode: at most this many /32s announced (the rest stay dark, shown by `ovsnat "
        "status`); the ToRs' maximum-prefix must be above it.",
        "int",
    ),
    Option(
        "bgp_moved_hold",
        60,
        "bgp mode: seconds a migrated FIP is announced as just moved before it turns live.",
        "int",
    ),
    Option("bgp_bfd_interval", 200, "bgp mode: BFD transmit and receive interval, ms.", "int"),
    Option("bgp_bfd_multiplier", 3, "bgp mode: BFD detect multiplier.", "int"),
    Option("ovsdb_connection", "unix:/var/run/openvswitch/db.sock", "The local OVSDB."),
    Option(
        "vswitchd_ctl",
        "",
        "ovs-vswitchd's control socket, which ovsnat calls as ovs-appctl does (conntrack "
        "reads for handoff_vlan and the PAT usage metrics, zone limits for conn_limit): the "
        "socket itself, ovs-vswitchd's pidfile (x.pid: the socket beside it, found again "
        "after a restart) or its rundir. Empty: as ovs-appctl finds it, from $OVS_RUNDIR "
        "or /var/run/openvswitch. Checked at start: the log and `ovsnat status` say which "
        "feature cannot work when it does not answer.",
    ),
    Option(
        "status_file",
        "/var/run/ovsnat/status.json",
        "Where the controller keeps its status (read by `ovsnat status`); empty: none.",
    ),
    Option(
        "metrics_port",
        0,
        "Serve Prometheus metrics on this TCP port of metrics_host (0: off).",
        "int",
    ),
    Option("metrics_host", "127.0.0.1", "Address the metrics endpoint listens on."),
)

BY_NAME = {o.name: o for o in OPTIONS}


def defaults() -> dict:
    return {o.name: o.default for o in OPTIONS}


def read_ini(path: str) -> dict:
    """Options from an INI file's [ovsnat] section over the defaults. Unknown keys are an
    error (a typo must not silently fall back to a default)."""
    parser = configparser.ConfigParser(interpolation=None)
    with open(path) as f:
        parser.read_file(f)
    values = defaults()
    if parser.has_section(SECTION):
        for key, value in parser.items(SECTION):
            if key not in BY_NAME:
                raise ValueError(f"{path}: [{SECTION}] {key}: unknown option")
            values[key] = value
    return values
