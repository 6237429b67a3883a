"""Thousands of VM ports on one lab host, for scale tests and benchmarks.

VM ports here are `type=dummy` interfaces (ovs-vswitchd started with --enable-dummy, i.e.
`Lab.add_host(name, dummy=True)`): real OpenFlow ports with ofports and OVSDB rows, but no
veth, namespace or kernel device behind them. Or peerless `type=patch` ports: also an ofport,
a link that is up and the same OVSDB row, but no datapath port at all.

Ports are written in big ovs-vsctl transactions of generic `create` commands. `add-port`
would be the obvious command, but ovs-vsctl rebuilds its whole bridge/port cache after every
`set`, which makes a 1,000-port `add-port ... -- set Interface ...` transaction cost
O(ports already on the bridge) per port. What remains slow is ovs-vswitchd itself
(measured on 2 cores, OVS 3.1):
- attaching N dummy ports costs it O(N^2): 2 s for 2,000, 120-160 s for 10,000 (patch
  ports: 7 s for 10,000);
- each later port addition makes it reconfigure the whole bridge: 0.25 s with 1,000 ports,
  about 27 s with 10,000 dummy ports (3-4 s with 10,000 patch ports);
- it polls every dummy port in its main loop, between batches of OpenFlow messages, so
  dummy ports slow down flow installation: 20,000 flows with `ovs-ofctl --bundle` take
  0.21 s on a bridge without VM ports, 2.4 s with 5,000 dummy ports, 0.18 s with 5,000
  patch ports.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import netaddr

from ovsnat.lab.sh import LabError, run
from ovsnat.lab.topology import BRIDGE, Host

# A NAT scenario big enough for 10,000 VMs and 5,000 FIPs (203.0.113.0/24 is not).
INTERNAL_CIDR = "10.0.0.0/16"
EXTERNAL_CIDR = "198.18.0.0/15"  # benchmarking range (RFC 2544)
EXTERNAL_GW = "198.18.0.1"
EXTERNAL_GW_MAC = "02:00:00:00:fe:01"
SNAT_IP = "198.18.0.2"
FIRST_HOST = 16  # VM i gets the address at offset FIRST_HOST + i


def scale_options() -> dict:
    """[ovsnat] overrides (for scenario.write_config) matching `vm_spec`'s addresses."""
    return {
        "internal_cidr": INTERNAL_CIDR,
        "internal_gateway_ip": "10.0.0.1",
        "external_cidr": EXTERNAL_CIDR,
        "external_gateway_ip": EXTERNAL_GW,
        "external_gateway_mac": EXTERNAL_GW_MAC,
        "fip_activation": "immediate",
    }


@dataclass(frozen=True)
class PortSpec:
    name: str
    external_ids: dict


def vm_spec(i: int, fip: bool | None = None, networks: int = 0) -> PortSpec:
    """VM number i: port p<i>, fixed IP from INTERNAL_CIDR, MAC derived from it; a FIP from
    EXTERNAL_CIDR when `fip` (default: every even i, so half FIP and half PAT). With
    `networks` = K > 0 the VMs are dealt over K VLAN networks (VLAN 101 ...) that all use
    INTERNAL_CIDR: VM i is in network i % K at offset i // K, so every fixed IP is used by K
    VMs at once, one per network."""
    offset, vlan = (
        (FIRST_HOST + i // networks, 101 + i % networks) if networks else (FIRST_HOST + i, 0)
    )
    fixed = netaddr.IPAddress(netaddr.IPNetwork(INTERNAL_CIDR).first + offset)
    ids = {
        "iface-id": f"vm{i}",
        "attached-mac": ":".join(f"{b:02x}" for b in (2, vlan >> 8, vlan & 0xFF, *fixed.words[1:])),
        "ovsnat-fixed-ip": str(fixed),
    }
    if networks:
        ids.update(
            {
                "ovsnat-network": f"net{vlan}",
                "ovsnat-cidr": INTERNAL_CIDR,
                "ovsnat-gateway": "10.0.0.1",
                "ovsnat-vlan": str(vlan),
            }
        )
    if fip if fip is not None else i % 2 == 0:
        ids["ovsnat-fip"] = str(
            netaddr.IPAddress(netaddr.IPNetwork(EXTERNAL_CIDR).first + FIRST_HOST + i)
        )
    return PortSpec(f"p{i}", ids)


def create_args(specs: list[PortSpec], port_type: str = "dummy") -> list[str]:
    """ovs-vsctl arguments adding every spec to br-int in one transaction."""
    args, refs = [], []
    for n, spec in enumerate(specs):
        args += [
            "--",
            f"--id=@i{n}",
            "create",
            "Interface",
            f"name={spec.name}",
            *iface_type(port_type),
            *[f'external_ids:{k}="{v}"' for k, v in spec.external_ids.items()],
            "--",
            f"--id=@p{n}",
            "create",
            "Port",
            f"name={spec.name}",
            f"interfaces=@i{n}",
        ]
        refs.append(f"@p{n}")
    return args + ["--", "add", "Bridge", BRIDGE, "ports", *refs]


def iface_type(port_type: str) -> list[str]:
    """Interface columns of a VM port. "patch": a patch port without a peer, which gets an
    ofport and a link that is up, but no datapath port."""
    return [f"type={port_type}"] + (["options:peer=nowhere"] if port_type == "patch" else [])


def add_ports(
    host: Host,
    specs: list[PortSpec],
    per_txn: int = 1000,
    port_type: str = "dummy",
    timeout: float = 900,
) -> float:
    """Add the ports in transactions of `per_txn`, then wait until ovs-vswitchd has given
    every one an ofport. Returns the seconds it took."""
    t0 = time.monotonic()
    vsctl = ["ovs-vsctl", f"--db=unix:{host.ovs.db_sock}", f"--timeout={int(timeout)}", "--no-wait"]
    for lo in range(0, len(specs), per_txn):
        run(
            vsctl + create_args(specs[lo : lo + per_txn], port_type),
            env=host.ovs.env,
            timeout=timeout,
        )
    names = {s.name for s in specs}
    while names - ofported(host):
        if time.monotonic() - t0 > timeout:
            raise LabError(
                f"{len(names - ofported(host))} of {len(names)} ports have no "
                f"ofport after {timeout:.0f} s"
            )
        time.sleep(0.5)
    return time.monotonic() - t0


def ofported(host: Host) -> set[str]:
    """Names of the interfaces that have an ofport."""
    out = json.loads(host.vsctl("--format=json", "--columns=name,ofport", "list", "Interface"))
    return {name for name, ofport in out["data"] if isinstance(ofport, int) and ofport > 0}


def stop_big_host(host: Host) -> None:
    """Stop a host's ovs-vswitchd at once. With thousands of dummy ports its clean exit (and
    the `version` probe teardown starts with) can take longer than teardown waits; its flows
    and ports are throwaway here, so kill it and let `Lab.down` stop the rest."""
    host.ovs.stop_daemon("ovs-vswitchd", kill=True)
