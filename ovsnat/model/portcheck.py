"""What a port must satisfy on this host beyond its own keys (which ovsnat.model checks): its
network fits the cookie layout, and its PAT block fits the host's port range. A port that
fails is rejected alone, with the reason naming it; every other port keeps working."""

from __future__ import annotations

from ovsnat.model import HostConfig, PortError, VmPort
from ovsnat.model.networks import OFFSET_BITS, Network


def check_alone(cfg: HostConfig, port: VmPort) -> str | None:
    """Why `port` cannot be programmed on this host, whatever the other ports are; None if
    it can."""
    try:
        port.check(cfg)
        net = port.net(cfg)
        if net.vlan is not None and net.cidr.prefixlen < 12:
            raise PortError(
                f"port {port.name!r} ({port.iface_id}): network {net.name} "
                f"{net.cidr} is larger than a /12 (its VMs' flows are "
                "named by VLAN and the fixed IP's last 20 bits)"
            )
        if port.fip is None and cfg.pat_ports_per_vm:
            _check_block(cfg, port, net)
    except PortError as e:
        return str(e)
    return None


def _check_block(cfg: HostConfig, port: VmPort, net: Network) -> None:
    label = f"port {port.name!r} ({port.iface_id})"
    lo, hi = port.pat_block(cfg)
    if hi > cfg.snat_port_max:
        raise PortError(
            f"{label}: PAT block {lo}-{hi} for {port.fixed_ip} does not fit "
            f"snat_port_max {cfg.snat_port_max}; lower "
            "pat_ports_per_vm or widen the range"
        )
    if net.vlan is not None and port.offset(cfg) >= 1 << OFFSET_BITS:
        raise PortError(
            f"{label}: with per-VM PAT blocks a VLAN network's VMs need a "
            f"transit address of their own: {port.fixed_ip} is beyond the "
            f"first {1 << OFFSET_BITS} addresses of {net.cidr}"
        )
