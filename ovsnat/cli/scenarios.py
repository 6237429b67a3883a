"""The named scenarios of the golden files (flows/<name>.flows): each a host config, its
ports and its bridge keys, and the helpers tests build their own ports with. Pure data and
the compile of each; ovsnat.cli.golden writes and checks the files.
"""

from __future__ import annotations

from dataclasses import replace

import netaddr

from ovsnat.core.state import build_state
from ovsnat.model import DesiredState, HostConfig, VmPort, routing
from ovsnat.model.externals import parse_externals, served_ids
from ovsnat.model.secgroups import parse_bridge

BASE = {
    "bridge": "br-int",
    "uplink_port": "uplink",
    "uplink_ofport": 1,
    "internal_cidr": "10.0.0.0/24",
    "internal_gateway_ip": "10.0.0.1",
    "router_mac": "02:00:00:00:00:01",
    "external_cidr": "203.0.113.0/24",
    "external_gateway_ip": "203.0.113.1",
    "external_gateway_mac": "02:00:00:00:00:fe",
    "snat_ip": "203.0.113.11",
    "snat_port_min": 20000,
    "snat_port_max": 29999,
    "ct_zone": 65000,
    "fip_frag_ct_zone": 65001,
}


FABRIC = {"fabric_port": "fabric", "fabric_ofport": 2}
NET_A = {
    "ovsnat-network": "tenant-a",
    "ovsnat-cidr": "10.1.0.0/24",
    "ovsnat-gateway": "10.1.0.1",
    "ovsnat-vlan": "101",
}
NET_B = {**NET_A, "ovsnat-network": "tenant-b", "ovsnat-vlan": "102"}
FLAT = {"ovsnat-network": "flat", "ovsnat-cidr": "10.3.0.0/24", "ovsnat-gateway": "10.3.0.1"}
NET_C = {
    "ovsnat-network": "tenant-c",
    "ovsnat-cidr": "10.2.0.0/24",
    "ovsnat-gateway": "10.2.0.1",
    "ovsnat-vlan": "103",
}


def port(
    n: int, fip: str | None = None, net: dict | None = None, ofport: int = 0, **keys: str
) -> VmPort:
    """VM n: MAC 02:00:0a:00:00:n, fixed IP .n of its network (the default one unless `net`
    names one), ofport n unless given; `keys`: more external_ids (ovsnat_sg: ovsnat-sg)."""
    prefix = net["ovsnat-cidr"].rsplit(".", 1)[0] if net else "10.0.0"
    ids = {
        "iface-id": f"vm{n}",
        "attached-mac": f"02:00:0a:00:00:{n:02x}",
        "ovsnat-fixed-ip": f"{prefix}.{n}",
        **(net or {}),
    }
    if fip:
        ids["ovsnat-fip"] = fip
    ids.update({k.replace("_", "-"): v for k, v in keys.items()})
    name = f"tapvm{n}" + (f"-{net['ovsnat-network']}" if net else "")
    return VmPort.from_external_ids(name, ofport or n, ids)


# name -> (description, option overrides, ports)
SCENARIOS = {
    "fip-only": ("One VM with a floating IP.", {}, [port(11, "203.0.113.10")]),
    "pat-only": ("One VM without a floating IP (PAT).", {}, [port(12)]),
    "mixed": ("A FIP VM and a PAT VM on one host.", {}, [port(11, "203.0.113.10"), port(12)]),
    "hairpin": (
        "Two FIP VMs and a PAT VM that reach each other's FIPs.",
        {},
        [port(11, "203.0.113.10"), port(12), port(13, "203.0.113.12")],
    ),
    "per-vm-pat-blocks": (
        "PAT with 64 ports per VM (pat_ports_per_vm=64).",
        {"pat_ports_per_vm": 64},
        [port(12), port(14), port(15, "203.0.113.15")],
    ),
    "gateway-by-arp": (
        "external_gateway_mac empty: the gateway's MAC is learned by ARP; "
        "until then nothing leaves the uplink.",
        {"external_gateway_mac": ""},
        [port(11, "203.0.113.10"), port(12)],
    ),
    "many-vms": (
        "20 VMs, every third with a FIP.",
        {},
        [port(n, f"203.0.113.{100 + n}" if n % 3 == 0 else None) for n in range(20, 40)],
    ),
    "networks": (
        "A fabric port; the default network and two VLAN networks with the same "
        "CIDR (10.1.0.0/24 in VLAN 101 and 102), each with a PAT VM at 10.1.0.11 and "
        "VLAN 101 with a FIP VM.",
        FABRIC,
        [
            port(11, "203.0.113.10"),
            port(11, net=NET_A, ofport=21),
            port(12, "203.0.113.12", net=NET_A, ofport=22),
            port(11, net=NET_B, ofport=31),
        ],
    ),
    "flat": (
        "No default network (internal_cidr empty): an untagged network 'flat' and a VLAN "
        "network on the fabric.",
        {**FABRIC, "internal_cidr": "", "internal_gateway_ip": ""},
        [port(11, "203.0.113.10", net=FLAT, ofport=11), port(11, net=NET_A, ofport=21)],
    ),
    "conn-limit": (
        "conn_limit 100: each PAT VM counts its connections in a zone of its own "
        "(conn_limit_zone_base 20000 + its ofport); a FIP VM has no limit.",
        {"conn_limit": 100},
        [port(11, "203.0.113.10"), port(12), port(13)],
    ),
    "handoff": (
        "PAT session handoff (handoff_vlan 4000): a resident PAT VM (vm12), one that "
        "arrived within its grace period (vm13), and one that left this host for "
        "another (vm14 of tenant-a); docs/handoff.md.",
        {**FABRIC, "handoff_vlan": 4000},
        [port(12), port(13)],
    ),
    "security-groups": (
        "Security groups (flows/pipeline.md): vm11 (FIP) and vm12 share Neutron's default "
        "group (egress open, ingress from the group's members); vm13 has a web group "
        "(TCP 80 and 8000-8099 from anywhere, ICMP echo from 198.51.100.0/24, SSH from "
        "the default group) and an allowed address pair; vm14 has port security off; vm15 "
        "is administratively down. Members of the default group: vm11, vm12 and 10.0.0.40 "
        "(on another host).",
        {},
        [
            port(11, "203.0.113.10", ovsnat_sg="default"),
            port(12, ovsnat_sg="default"),
            port(13, ovsnat_sg="web", ovsnat_allowed_pairs="10.0.0.100"),
            port(14, ovsnat_port_security="off"),
            port(15, ovsnat_sg="default", ovsnat_admin="down"),
        ],
    ),
    "unrouted": (
        "A network on no router (tenant-a: ovsnat-net-tenant-a router=-, docs/routers.md): "
        "its gateway's ARP is answered (the DHCP server's address) but nothing is routed, "
        "no PAT, and vm12's FIP is held inert; tenant-b, on router r1 with a gateway, is "
        "routed as before.",
        FABRIC,
        [
            port(11, net=NET_A, ofport=21),
            port(12, "203.0.113.12", net=NET_A, ofport=22),
            port(11, net=NET_B, ofport=31),
        ],
    ),
    "no-snat": (
        "Routers without PAT (docs/routers.md): tenant-a on router r1 with enable_snat "
        "off (its FIP VM vm12 still translated, its PAT VM vm11 reaches nothing outside), "
        "the untagged network flat on router r2 without gateway (vm13's FIP held inert).",
        {**FABRIC, "internal_cidr": "", "internal_gateway_ip": ""},
        [
            port(11, net=NET_A, ofport=21),
            port(12, "203.0.113.12", net=NET_A, ofport=22),
            port(13, "203.0.113.13", net=FLAT, ofport=13),
        ],
    ),
    "east-west": (
        "East-west routing (docs/routers.md): router r1 holds tenant-a (vm11, filtered, and "
        "vm12 here), tenant-c (vm13 here, 10.2.0.20 on hv2) and tenant-d (on no port here; "
        "10.4.0.5 on hv3); tenant-b, with tenant-a's addresses, is on router r2 and meets "
        "none of them. This host is hv1 (routed MAC fa:16:3f:00:00:01); hv2 and hv3 have "
        "their own.",
        FABRIC,
        [
            port(11, net=NET_A, ofport=21, ovsnat_sg="default"),
            port(12, "203.0.113.12", net=NET_A, ofport=22),
            port(13, net=NET_C, ofport=33),
            port(11, net=NET_B, ofport=31),
        ],
    ),
    "externals": (
        "Two external networks (docs/routers.md item 3): tenant-a on router r1, whose "
        "gateway is public (the options' untagged network); tenant-b on router r2, whose "
        "gateway is pub2 (VLAN 200 on the uplink, SNAT 198.51.100.140, its gateway's MAC "
        "learned), each with a PAT VM and a FIP VM; tenant-c on router r3, whose gateway "
        "network pub9 has no key here (vm13's FIP held inert, no PAT).",
        FABRIC,
        [
            port(11, net=NET_A, ofport=21),
            port(12, "203.0.113.12", net=NET_A, ofport=22),
            port(11, net=NET_B, ofport=31),
            port(12, "198.51.100.142", net=NET_B, ofport=32),
            port(13, "198.51.100.143", net=NET_C, ofport=33),
        ],
    ),
    "bgp": (
        "bgp mode (docs/bgp.md): no shared external segment; uplinks up0 (port 4) and up1 "
        "(port 5) are /31 links to two ToRs, their kernel ports bgp0 (6) and bgp1 (7) hold "
        "the host's addresses; both ToRs' MACs known, so the select group has two buckets. "
        "A FIP VM and a PAT VM.",
        {
            "external_mode": "bgp",
            "bgp_asn": "4200100001",
            "bgp_uplinks": "up0,up1",
            "bgp_kernel_ports": "bgp0,bgp1",
            "bgp_links": "10.254.1.1/31,10.254.1.3/31",
            "bgp_protect": "10.255.0.0/24",
        },
        [port(11, "203.0.113.10"), port(12)],
    ),
    "metadata": (
        "Metadata (docs/metadata.md): the proxy on port 3 (ovsnat-meta); vm11 (FIP, "
        "filtered by the default group) and vm12 on the untagged network, vm11 of tenant-a "
        "with vm11's fixed IP (each its own data: its own port), vm14 with port security "
        "off (still only its own fixed IP is steered), vm15 administratively down (no "
        "metadata flow at all). The default group lets everything out, so vm11's request "
        "passes its egress rules.",
        {**FABRIC, "metadata_port": "ovsnat-meta", "metadata_ofport": 3},
        [
            port(11, "203.0.113.10", ovsnat_sg="default"),
            port(12),
            port(11, net=NET_A, ofport=21),
            port(14, ovsnat_port_security="off"),
            port(15, ovsnat_sg="default", ovsnat_admin="down"),
        ],
    ),
}
# Scenario name -> the bridge's keys (security groups, routers)
BRIDGE_KEYS = {
    "east-west": {
        "ovsnat-net-tenant-a": "router=r1;cidr=10.1.0.0/24;gw=10.1.0.1;vlan=101",
        "ovsnat-net-tenant-c": "router=r1;cidr=10.2.0.0/24;gw=10.2.0.1;vlan=103",
        "ovsnat-net-tenant-d": "router=r1;cidr=10.4.0.0/24;gw=10.4.0.1;vlan=104",
        "ovsnat-net-tenant-b": "router=r2;cidr=10.1.0.0/24;gw=10.1.0.1;vlan=102",
        "ovsnat-router-r1": "ext=public;snat=on",
        "ovsnat-router-r2": "ext=public;snat=on",
        "ovsnat-host": "hv1",
        "ovsnat-hostmac-hv1": "fa:16:3f:00:00:01",
        "ovsnat-hostmac-hv2": "fa:16:3f:00:00:02",
        "ovsnat-hostmac-hv3": "fa:16:3f:00:00:03",
        "ovsnat-nb-tenant-c": "10.2.0.20=02:00:0a:02:00:14@hv2",
        "ovsnat-nb-tenant-d": "10.4.0.5=02:00:0a:04:00:05@hv3",
        "ovsnat-sg-default": "r1,in,4,any,-,g:default;r2,out,4,any,-,-",
        "ovsnat-sgm-default": "10.1.0.11",
    },
    "unrouted": {
        "ovsnat-net-tenant-a": "router=-",
        "ovsnat-net-tenant-b": "router=r1",
        "ovsnat-router-r1": "ext=public;snat=on",
    },
    "no-snat": {
        "ovsnat-net-tenant-a": "router=r1",
        "ovsnat-router-r1": "ext=public;snat=off",
        "ovsnat-net-flat": "router=r2",
        "ovsnat-router-r2": "ext=-;snat=off",
    },
    "externals": {
        "ovsnat-net-tenant-a": "router=r1",
        "ovsnat-net-tenant-b": "router=r2",
        "ovsnat-net-tenant-c": "router=r3",
        "ovsnat-router-r1": "ext=public;snat=on",
        "ovsnat-router-r2": "ext=pub2;snat=on",
        "ovsnat-router-r3": "ext=pub9;snat=on",
        "ovsnat-ext-public": "vlan=-;cidr=203.0.113.0/24;gw=203.0.113.1;snat=203.0.113.11",
        "ovsnat-ext-pub2": "vlan=200;cidr=198.51.100.128/25;gw=198.51.100.129;snat=198.51.100.140",
    },
    "security-groups": {
        "ovsnat-sg-default": "r1,in,4,any,-,g:default;r2,out,4,any,-,-;r3,out,6,any,-,-",
        "ovsnat-sgm-default": "10.0.0.11,10.0.0.12,10.0.0.40",
        "ovsnat-sg-web": (
            "w1,in,4,tcp,80,-;w2,in,4,tcp,8000-8099,p:0.0.0.0/0;w3,in,4,icmp,8,p:198.51.100.0/24;"
            "w4,in,4,tcp,22,g:default;w5,out,4,any,-,-"
        ),
    },
}
BRIDGE_KEYS["metadata"] = {
    "ovsnat-sg-default": "r1,in,4,any,-,g:default;r2,out,4,any,-,-",
    "ovsnat-sgm-default": "10.0.0.11,10.0.0.15",
}
# Scenario name -> (ports that arrived after the controller's first view, ports that left)
HANDOFFS = {"handoff": (["tapvm13"], [port(14, net=NET_A, ofport=24)])}


# bgp mode's links as OVSDB and the kernel would tell them: (uplink, kernel port, ToR MAC)
ROUTED = {"bgp": ((4, 6, "02:aa:00:00:00:01"), (5, 7, "02:bb:00:00:00:02"))}


def scenario_state(name: str) -> DesiredState:
    """A scenario's desired state: its host config, ports and bridge keys."""
    _, overrides, ports = SCENARIOS[name]
    keys = BRIDGE_KEYS.get(name, {})
    cfg = HostConfig.parse({**BASE, **overrides})
    if name in ROUTED:
        cfg = replace(
            cfg,
            uplink_ofport=0,
            routed=tuple(
                replace(r, uplink_ofport=up, kernel_ofport=kernel, tor_mac=netaddr.EUI(mac))
                for r, (up, kernel, mac) in zip(cfg.routed, ROUTED[name], strict=True)
            ),
        )
    tagged_mac = netaddr.EUI("02:00:00:00:c8:fe")  # as a tagged network's gateway's, learned
    externals = parse_externals(keys, cfg)[0]
    cfg = replace(
        cfg, externals=tuple(replace(e, gateway_mac=tagged_mac) if e.vlan else e for e in externals)
    )
    served = routing.parse_bridge(keys, served_ids(keys, cfg.externals))
    state = build_state(cfg, ports, served)
    assert not state.rejected, state.rejected
    return replace(state, security=parse_bridge(keys))
