"""What a port must satisfy on this host beyond its own keys: the shared rules
(ovsnat.validate, through VmPort.check: its network against what the host reserves, its
address, its routes), then what only this host's controller can judge: its PAT block fits
the host's port range. A port that fails is rejected alone, with the reason naming it;
every other port keeps working.

`keys_problem` is the same judgement made before any row exists, by Neutron's mechanism
driver at binding, on the keys the agent would write and the limits the host's agent
reported."""

from __future__ import annotations

from ovsnat.model import HostConfig, PortError, VmPort
from ovsnat.networks import OFFSET_BITS, Network
from ovsnat.validate import HostLimits, port_problem


def check_alone(cfg: HostConfig, port: VmPort) -> str | None:
    """Why `port` cannot be programmed on this host, whatever the other ports are; None if
    it can."""
    try:
        port.check(cfg)
        net = port.net(cfg)
        if port.fip is None and cfg.pat_ports_per_vm:
            _check_block(cfg, port, net)
    except PortError as e:
        return str(e)
    return None


def keys_problem(name: str, external_ids: dict, limits: HostLimits) -> str | None:
    """Why the controller would refuse a port with these keys on a host with these limits,
    whatever the other ports and the switch are; None if it would not. `name` is the
    Interface name the port will have (Nova's tap name)."""
    try:
        port = VmPort.from_external_ids(name, 1, external_ids)
    except PortError as e:
        return str(e)
    if port.network is None:
        return (f"port {name!r} ({port.iface_id}): external_ids:ovsnat-network is missing "
                "(a Neutron port always names its network)")
    problem = port_problem(port.fixed_ip, port.network,
                           port.dhcp.routes if port.dhcp is not None else (), limits)
    return f"port {name!r} ({port.iface_id}): {problem}" if problem else None


def _check_block(cfg: HostConfig, port: VmPort, net: Network) -> None:
    label = f"port {port.name!r} ({port.iface_id})"
    lo, hi = port.pat_block(cfg)
    if hi > cfg.snat_port_max:
        raise PortError(f"{label}: PAT block {lo}-{hi} for {port.fixed_ip} does not fit "
                        f"snat_port_max {cfg.snat_port_max}; lower "
                        "pat_ports_per_vm or widen the range")
    if net.vlan is not None and port.offset(cfg) >= 1 << OFFSET_BITS:
        raise PortError(f"{label}: with per-VM PAT blocks a VLAN network's VMs need a "
                        f"transit address of their own: {port.fixed_ip} is beyond the "
                        f"first {1 << OFFSET_BITS} addresses of {net.cidr}")
