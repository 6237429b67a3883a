"""A VM's port as OVSDB describes it, validated: VmPort, Rejection, the desired state of a
host, and the external_ids keys of the user-facing contract.

Pure: no I/O. Every invalid value records one error that names the port, the key and the
reason, so an operator can fix it from the log line alone. A bad port never takes other
ports down with it: `ovsnat.core.state.build_state` sets it aside with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import netaddr

from ovsnat.model import dhcp_keys, networks, secgroups, validate
from ovsnat.model.config import HostConfig
from ovsnat.model.dhcp_keys import PortDhcp
from ovsnat.model.networks import Network
from ovsnat.model.parse import PortError, _require_host, _show, mac_str, parse_ipv4, parse_mac
from ovsnat.model.routing import NO_KEYS, HostRouting

# external_ids keys of the user-facing contract (README "external_ids contract").
KEY_IFACE_ID = "iface-id"
KEY_ATTACHED_MAC = "attached-mac"
KEY_FIXED_IP = "ovsnat-fixed-ip"
KEY_FIP = "ovsnat-fip"
# Keys of the contract the controller never reads: ovsnat-neutron-agent writes them for the
# host's metadata proxy (docs/metadata.md), which finds a VM's instance and project on its
# row. VmPort leaves them out, so a change of theirs costs no recompile and sends no flow.
KEY_DEVICE_ID = "ovsnat-device-id"  # the Neutron port's device_id (Nova: the instance uuid)
KEY_PROJECT = "ovsnat-project"  # the port's project
PROXY_KEYS = (KEY_DEVICE_ID, KEY_PROJECT)

MAX_ID_LEN = 255
# The ofport a row without a device is judged with (ovsnat.core.markers, `ovsnat bind`): no
# real port has it, so it clashes with nothing; OVS numbers the device when it appears.
UNATTACHED = 0xFFFFFEFF


@dataclass(frozen=True, slots=True)
class VmPort:
    """A VM's port as OVSDB describes it (Interface name, ofport, contract external_ids).
    Slotted: the controller holds one per VM."""

    name: str
    ofport: int
    mac: netaddr.EUI
    fixed_ip: netaddr.IPAddress
    iface_id: str
    fip: netaddr.IPAddress | None = None
    network: Network | None = None  # None: the host's default network
    dhcp: PortDhcp | None = None  # None: the host's dhcp_* options
    security: secgroups.PortSecurity = secgroups.UNFILTERED

    @classmethod
    def from_external_ids(cls, name: str, ofport, external_ids: Mapping[str, str]) -> VmPort:
        """Parse one Interface row; raises PortError naming the port, key and value."""
        label = f"port {_show(name)}"
        if (
            not isinstance(name, str)
            or not name
            or len(name) > MAX_ID_LEN
            or not name.isprintable()
        ):
            raise PortError(f"{label}: invalid interface name")
        try:
            if isinstance(ofport, (float, bool)):
                raise TypeError
            ofport = int(ofport)
        except (TypeError, ValueError, OverflowError):
            raise PortError(f"{label}: ofport {_show(ofport)} is not a number") from None
        if not 1 <= ofport <= 0xFFFFFEFF:
            raise PortError(
                f"{label}: ofport {ofport} is not a usable OpenFlow port "
                "(OVS has not attached the interface)"
            )
        missing = [
            k
            for k in (KEY_IFACE_ID, KEY_ATTACHED_MAC, KEY_FIXED_IP)
            if not str(external_ids.get(k, "")).strip()
        ]
        if missing:
            raise PortError(f"{label}: external_ids:{missing[0]} is missing")
        iface_id = str(external_ids[KEY_IFACE_ID]).strip()
        if len(iface_id) > MAX_ID_LEN or not iface_id.isprintable():
            raise PortError(
                f"{label}: external_ids:{KEY_IFACE_ID} {_show(iface_id)} is too long "
                "or not printable"
            )
        mac = parse_mac(
            external_ids[KEY_ATTACHED_MAC], f"{label}: external_ids:{KEY_ATTACHED_MAC}", PortError
        )
        fixed = parse_ipv4(
            external_ids[KEY_FIXED_IP], f"{label}: external_ids:{KEY_FIXED_IP}", PortError
        )
        fip_text = str(external_ids.get(KEY_FIP, "")).strip()
        fip = (
            parse_ipv4(fip_text, f"{label}: external_ids:{KEY_FIP}", PortError)
            if fip_text
            else None
        )
        return cls(
            name,
            ofport,
            mac,
            fixed,
            iface_id,
            fip,
            networks.parse(label, external_ids),
            dhcp_keys.parse_port(label, external_ids),
            secgroups.parse_port(label, external_ids),
        )

    def net(self, cfg: HostConfig) -> Network | None:
        """The network this port is in on this host (None: it names none, and the host has
        no default network)."""
        return self.network or cfg.default_network

    def check(self, cfg: HostConfig) -> None:
        """This port against the host config (not against other ports)."""
        label = f"port {self.name!r} ({self.iface_id})"
        net = self.net(cfg)
        if net is None:
            raise PortError(
                f"{label}: external_ids:{networks.KEY_NETWORK} is missing and this "
                "host has no default network (internal_cidr is empty)"
            )
        problem = validate.port_problem(
            self.fixed_ip, net, self.dhcp.routes if self.dhcp is not None else (), cfg.limits
        )
        if problem:
            raise PortError(f"{label}: {problem}")
        if self.mac == cfg.router_mac:
            raise PortError(f"{label}: MAC {mac_str(self.mac)} is the router MAC")
        if self.ofport in (cfg.uplink_ofport, cfg.fabric_ofport):
            raise PortError(
                f"{label}: ofport {self.ofport} is the "
                f"{'uplink' if self.ofport == cfg.uplink_ofport else 'fabric'}'s"
            )
        if self.security.filtered and self.ofport != UNATTACHED:  # judged when it attaches
            problem = secgroups.zone_problem(cfg, self.ofport)
            if problem:
                raise PortError(f"{label}: {problem}")
        if self.fip is None:
            return
        if net.contains(self.fip):
            raise PortError(f"{label}: FIP {self.fip} is inside its network {net.label} {net.cidr}")
        ext = cfg.external_for(self.fip)  # a tagged external network's (ovsnat-ext-*)
        cidr, snat, gw = (
            (cfg.external_cidr, cfg.snat_ip, cfg.external_gateway_ip)
            if ext is None
            else (ext.cidr, ext.snat, ext.gateway)
        )
        where = "external_cidr" if ext is None else f"external network {ext.id}"
        _require_host(self.fip, cidr, f"{label}: FIP", where, PortError)
        if self.fip == snat:
            raise PortError(f"{label}: FIP {self.fip} is this host's SNAT IP")
        if self.fip == gw:
            raise PortError(f"{label}: FIP {self.fip} is the external gateway's address")

    def pat_block(self, cfg: HostConfig) -> tuple[int, int]:
        """This VM's PAT source ports. With pat_ports_per_vm = K > 0 the VM owns the K ports
        at offset (fixed IP - network address) * K: deterministic, so a port number and the
        network alone name the VM (RFC 7422 style), and one VM cannot use up the host's
        range. Two VMs at the same offset of two networks would share a block: the host
        state rejects the second."""
        k = cfg.pat_ports_per_vm
        if not k:
            return cfg.snat_port_min, cfg.snat_port_max
        offset = self.offset(cfg)
        lo = cfg.snat_port_min + offset * k
        return lo, lo + k - 1

    @property
    def sg_zone(self) -> int:
        """The conntrack zone of this port's security groups (a zone per port, as OVN)."""
        return secgroups.SG_ZONE_BASE + self.ofport

    def offset(self, cfg: HostConfig) -> int:
        """The fixed IP's offset in its network (its PAT block and transit address)."""
        return int(self.fixed_ip) - self.net(cfg).cidr.first


@dataclass(frozen=True)
class Rejection:
    """A port set aside, and why (shown in logs and `ovsnat status`). transient: not a
    mistake but a passing state (no OpenFlow port yet, device gone), logged at INFO."""

    name: str
    reason: str
    transient: bool = False


@dataclass(frozen=True)
class DesiredState:
    """What the compiler programs: the host and its accepted VMs (sorted by port name)."""

    config: HostConfig
    vms: tuple[VmPort, ...] = ()
    rejected: tuple[Rejection, ...] = field(default=())
    security: secgroups.HostSecurity = secgroups.NO_GROUPS  # the bridge's groups
    routing: HostRouting = NO_KEYS  # the bridge's routers (docs/routers.md)


def with_gateway_mac(cfg: HostConfig, mac: netaddr.EUI | None) -> HostConfig:
    """The config with a resolved external gateway MAC (from ARP when not configured)."""
    return replace(cfg, external_gateway_mac=mac)


def port_from_row(name: str, ofport, external_ids: dict, link_state: str | None = None):
    """An OVSDB Interface row as a VmPort, a Rejection (with the reason), or None when the
    row is not ovsnat's (no ovsnat-* keys). The external_ids are judged first, so a bad
    value is reported even while the VM is away; a row without a usable OpenFlow port or
    with its link down is a transient rejection: the VM is not (or no longer) here."""
    if KEY_FIXED_IP not in external_ids and KEY_FIP not in external_ids:
        return None
    try:
        port = VmPort.from_external_ids(name, 1, external_ids)
    except PortError as e:
        return Rejection(name, str(e))
    if type(ofport) is int and 1 <= ofport <= 0xFFFFFEFF:
        port = replace(port, ofport=ofport)  # a usable ofport: no second parse
    else:
        try:
            port = VmPort.from_external_ids(
                name, ofport if ofport is not None else -1, external_ids
            )
        except PortError as e:
            return Rejection(name, str(e), transient=True)
    if link_state == "down":
        return Rejection(
            name,
            f"port {name!r} ({port.iface_id}): link down (the VM's "
            "device is gone); no flows until it comes back",
            transient=True,
        )
    return port
