"""The desired state of one host, validated: host config, VM ports, FIP bindings, PAT blocks.

Pure: no I/O. Every invalid value raises (or, for a port, records) one error that names the
item and the reason, so an operator can fix it from the log line alone. A bad port never
takes other ports down with it: `state.build_state` sets it aside with its reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Mapping

import netaddr

# external_ids keys of the user-facing contract (README "external_ids contract").
KEY_IFACE_ID = "iface-id"
KEY_ATTACHED_MAC = "attached-mac"
KEY_FIXED_IP = "ovsnat-fixed-ip"
KEY_FIP = "ovsnat-fip"

MAX_ID_LEN = 255
FIP_ACTIVATIONS = ("probe", "first-packet", "immediate")


class ConfigError(ValueError):
    """A host option is invalid; the message starts with the option name."""


class PortError(ValueError):
    """A VM port cannot be programmed; the message names the port and the reason."""


# --- parsing helpers: each returns a clean value or raises with the item's name ----------------
def parse_ipv4(value, what: str, error=ConfigError) -> netaddr.IPAddress:
    text = str(value).strip()
    try:
        ip = netaddr.IPAddress(text, version=4, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise error(f"{what}: {_show(value)} is not an IPv4 address") from None
    return ip


def parse_cidr(value, what: str) -> netaddr.IPNetwork:
    text = str(value).strip()
    addr, slash, plen = text.partition("/")
    if not slash:
        raise ConfigError(f"{what}: {_show(value)} needs a prefix length (e.g. 10.0.0.0/24)")
    ip = parse_ipv4(addr, what)
    if not re.fullmatch(r"[0-9]{1,2}", plen) or int(plen) > 32:
        raise ConfigError(f"{what}: {_show(value)} is not an IPv4 CIDR")
    net = netaddr.IPNetwork(f"{ip}/{int(plen)}")
    if net.ip != net.network:
        raise ConfigError(f"{what}: {text} has host bits set (did you mean {net.cidr}?)")
    if net.prefixlen > 30:
        raise ConfigError(f"{what}: {text} is too small (at most /30)")
    return net


def parse_mac(value, what: str, error=ConfigError) -> netaddr.EUI:
    text = str(value).strip()
    try:
        if len(text) != 17:
            raise ValueError
        mac = netaddr.EUI(text, version=48)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise error(f"{what}: {_show(value)} is not a MAC address "
                    "(expected six colon-separated hex bytes)") from None
    if int(mac) >> 40 & 1:
        raise error(f"{what}: {text} is a multicast MAC")
    if int(mac) == 0:
        raise error(f"{what}: {text} is the zero MAC")
    return mac


def mac_str(mac: netaddr.EUI) -> str:
    """aa:bb:cc:dd:ee:ff (netaddr's str() is slow and dashed). As fast as a cache lookup, so
    not cached: a cache would keep every VM's MAC alive a second time."""
    return int(mac).to_bytes(6, "big").hex(":")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "...'"


def _in(ip: netaddr.IPAddress, net: netaddr.IPNetwork) -> bool:
    return net.first <= int(ip) <= net.last


def _usable(ip: netaddr.IPAddress, net: netaddr.IPNetwork) -> bool:
    return net.first < int(ip) < net.last


def _require_host(ip, net, what: str, net_name: str, error=ConfigError) -> None:
    """ip must be a host address of net (not its network or broadcast address)."""
    if not _usable(ip, net):
        raise error(f"{what} {ip} is not a host address of {net_name} {net}")


# --- host -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HostConfig:
    """One hypervisor's NAT settings: the `[ovsnat]` options of the contract, parsed."""

    bridge: str
    uplink_port: str
    uplink_ofport: int
    internal_cidr: netaddr.IPNetwork
    internal_gateway_ip: netaddr.IPAddress
    router_mac: netaddr.EUI
    external_cidr: netaddr.IPNetwork
    external_gateway_ip: netaddr.IPAddress
    external_gateway_mac: netaddr.EUI | None
    snat_ip: netaddr.IPAddress | None   # None: not known yet (Bridge external_ids, see README)
    snat_port_min: int
    snat_port_max: int
    ct_zone: int
    fip_frag_ct_zone: int
    pat_ports_per_vm: int = 0
    mac_prefix: str = "02:5a"
    learn_gateway_mac: bool = False      # external_gateway_mac not configured: learn by ARP
    fip_activation: str = "probe"        # or "first-packet", "immediate" (FIP_ACTIVATIONS)

    @classmethod
    def parse(cls, raw: Mapping[str, object]) -> "HostConfig":
        """From option name -> value (strings or numbers); raises ConfigError naming the
        first bad option."""
        def get(name):
            if name not in raw or raw[name] is None or str(raw[name]).strip() == "":
                raise ConfigError(f"{name}: required option is empty")
            return raw[name]

        def integer(name, lo, hi):
            value = get(name)
            text = str(value).strip()
            if not re.fullmatch(r"-?[0-9]{1,10}", text):
                raise ConfigError(f"{name}: {_show(value)} is not an integer")
            number = int(text)
            if not lo <= number <= hi:
                raise ConfigError(f"{name}: {number} is outside {lo}-{hi}")
            return number

        gw_mac = str(raw.get("external_gateway_mac") or "").strip()
        cfg = cls(
            bridge=_name(get("bridge"), "bridge"),
            uplink_port=_name(get("uplink_port"), "uplink_port"),
            uplink_ofport=integer("uplink_ofport", 0, 0xFFFFFEFF) if raw.get(
                "uplink_ofport") not in (None, "") else 0,
            internal_cidr=parse_cidr(get("internal_cidr"), "internal_cidr"),
            internal_gateway_ip=parse_ipv4(get("internal_gateway_ip"), "internal_gateway_ip"),
            router_mac=parse_mac(get("router_mac"), "router_mac"),
            external_cidr=parse_cidr(get("external_cidr"), "external_cidr"),
            external_gateway_ip=parse_ipv4(get("external_gateway_ip"), "external_gateway_ip"),
            external_gateway_mac=(parse_mac(gw_mac, "external_gateway_mac")
                                  if gw_mac else None),
            snat_ip=parse_ipv4(raw["snat_ip"], "snat_ip")
            if str(raw.get("snat_ip") or "").strip() else None,
            snat_port_min=integer("snat_port_min", 1, 65535),
            snat_port_max=integer("snat_port_max", 1, 65535),
            ct_zone=integer("ct_zone", 0, 65535),
            fip_frag_ct_zone=integer("fip_frag_ct_zone", 0, 65535),
            pat_ports_per_vm=integer("pat_ports_per_vm", 0, 65535)
            if raw.get("pat_ports_per_vm") not in (None, "") else 0,
            mac_prefix=str(raw.get("mac_prefix") or "02:5a").strip().lower(),
            learn_gateway_mac=not gw_mac,
            fip_activation=str(raw.get("fip_activation") or "probe").strip(),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Relations between options (each option alone was checked while parsing)."""
        if self.internal_cidr.first <= self.external_cidr.last and \
                self.external_cidr.first <= self.internal_cidr.last:
            raise ConfigError(f"external_cidr: {self.external_cidr} overlaps internal_cidr "
                              f"{self.internal_cidr}")
        _require_host(self.internal_gateway_ip, self.internal_cidr, "internal_gateway_ip:",
                      "internal_cidr")
        _require_host(self.external_gateway_ip, self.external_cidr, "external_gateway_ip:",
                      "external_cidr")
        if self.snat_ip is not None:
            self.check_snat_ip(self.snat_ip)
        if self.snat_port_min > self.snat_port_max:
            raise ConfigError(f"snat_port_min: {self.snat_port_min} is above snat_port_max "
                              f"{self.snat_port_max} (range reversed)")
        if self.pat_ports_per_vm > self.snat_port_max - self.snat_port_min + 1:
            raise ConfigError(f"pat_ports_per_vm: {self.pat_ports_per_vm} is larger than the "
                              f"whole range {self.snat_port_min}-{self.snat_port_max}")
        if self.fip_activation not in FIP_ACTIVATIONS:
            raise ConfigError(f"fip_activation: {self.fip_activation!r} is not one of "
                              f"{', '.join(FIP_ACTIVATIONS)}")
        if self.ct_zone == self.fip_frag_ct_zone:
            raise ConfigError(f"fip_frag_ct_zone: {self.fip_frag_ct_zone} equals ct_zone; the "
                              "two conntrack zones must differ")
        if not re.fullmatch(r"[0-9a-f]{2}:[0-9a-f]{2}", self.mac_prefix) or \
                int(self.mac_prefix[:2], 16) & 0x03 != 0x02:
            raise ConfigError(f"mac_prefix: {self.mac_prefix!r} must be two bytes of a "
                              "locally administered unicast MAC (e.g. 02:5a)")

    def check_snat_ip(self, ip: netaddr.IPAddress, what: str = "snat_ip") -> None:
        """The SNAT IP against the external network (from the config or from OVSDB)."""
        _require_host(ip, self.external_cidr, f"{what}:", "external_cidr")
        if ip == self.external_gateway_ip:
            raise ConfigError(f"{what}: {ip} is the external gateway's address")

    def require_snat(self) -> None:
        if self.snat_ip is None:
            raise ConfigError("snat_ip: required option is empty (set it, or let "
                              "ovsnat-neutron-agent set Bridge external_ids:ovsnat-snat-ip)")

    @property
    def pat_port_count(self) -> int:
        return self.snat_port_max - self.snat_port_min + 1

    def ip_mac(self, ip: netaddr.IPAddress) -> netaddr.EUI:
        """The deterministic MAC of an external address (FIP or SNAT IP): prefix + the four
        address bytes. The same on every host, so a migrated FIP keeps its MAC and the
        upstream router's ARP entry stays valid; only switches relearn the port."""
        return netaddr.EUI(int(self.mac_prefix.replace(":", ""), 16) << 32 | int(ip))

    @property
    def snat_mac(self) -> netaddr.EUI:
        return self.ip_mac(self.snat_ip)


def _name(value, what: str) -> str:
    text = str(value).strip()
    if not text or len(text) > 64 or not all(c.isalnum() or c in "-_." for c in text):
        raise ConfigError(f"{what}: {_show(value)} is not a valid OVS port or bridge name")
    return text


# --- VM ports ---------------------------------------------------------------------------------
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

    @classmethod
    def from_external_ids(cls, name: str, ofport, external_ids: Mapping[str, str]) -> "VmPort":
        """Parse one Interface row; raises PortError naming the port, key and value."""
        label = f"port {_show(name)}"
        if not isinstance(name, str) or not name or len(name) > MAX_ID_LEN or \
                not name.isprintable():
            raise PortError(f"{label}: invalid interface name")
        try:
            if isinstance(ofport, float) or isinstance(ofport, bool):
                raise TypeError
            ofport = int(ofport)
        except (TypeError, ValueError, OverflowError):
            raise PortError(f"{label}: ofport {_show(ofport)} is not a number") from None
        if not 1 <= ofport <= 0xFFFFFEFF:
            raise PortError(f"{label}: ofport {ofport} is not a usable OpenFlow port "
                            "(OVS has not attached the interface)")
        missing = [k for k in (KEY_IFACE_ID, KEY_ATTACHED_MAC, KEY_FIXED_IP)
                   if not str(external_ids.get(k, "")).strip()]
        if missing:
            raise PortError(f"{label}: external_ids:{missing[0]} is missing")
        iface_id = str(external_ids[KEY_IFACE_ID]).strip()
        if len(iface_id) > MAX_ID_LEN or not iface_id.isprintable():
            raise PortError(f"{label}: external_ids:{KEY_IFACE_ID} {_show(iface_id)} is too long "
                            "or not printable")
        mac = parse_mac(external_ids[KEY_ATTACHED_MAC], f"{label}: external_ids:"
                        f"{KEY_ATTACHED_MAC}", PortError)
        fixed = parse_ipv4(external_ids[KEY_FIXED_IP], f"{label}: external_ids:{KEY_FIXED_IP}",
                           PortError)
        fip_text = str(external_ids.get(KEY_FIP, "")).strip()
        fip = parse_ipv4(fip_text, f"{label}: external_ids:{KEY_FIP}", PortError) \
            if fip_text else None
        return cls(name, ofport, mac, fixed, iface_id, fip)

    def check(self, cfg: HostConfig) -> None:
        """This port against the host config (not against other ports)."""
        label = f"port {self.name!r} ({self.iface_id})"
        _require_host(self.fixed_ip, cfg.internal_cidr, f"{label}: fixed IP", "internal_cidr",
                      PortError)
        if self.fixed_ip == cfg.internal_gateway_ip:
            raise PortError(f"{label}: fixed IP {self.fixed_ip} is the VMs' gateway address")
        if self.mac == cfg.router_mac:
            raise PortError(f"{label}: MAC {mac_str(self.mac)} is the router MAC")
        if self.ofport == cfg.uplink_ofport:
            raise PortError(f"{label}: ofport {self.ofport} is the uplink's")
        if self.fip is None:
            return
        if _in(self.fip, cfg.internal_cidr):
            raise PortError(f"{label}: FIP {self.fip} is inside internal_cidr "
                            f"{cfg.internal_cidr}")
        _require_host(self.fip, cfg.external_cidr, f"{label}: FIP", "external_cidr", PortError)
        if self.fip == cfg.snat_ip:
            raise PortError(f"{label}: FIP {self.fip} is this host's SNAT IP")
        if self.fip == cfg.external_gateway_ip:
            raise PortError(f"{label}: FIP {self.fip} is the external gateway's address")

    def pat_block(self, cfg: HostConfig) -> tuple[int, int]:
        """This VM's PAT source ports. With pat_ports_per_vm = K > 0 the VM owns the K ports
        at offset (fixed IP - network address) * K: deterministic, so a port number alone
        names the VM (RFC 7422 style), and one VM cannot use up the host's range."""
        k = cfg.pat_ports_per_vm
        if not k:
            return cfg.snat_port_min, cfg.snat_port_max
        offset = int(self.fixed_ip) - cfg.internal_cidr.first
        lo = cfg.snat_port_min + offset * k
        return lo, lo + k - 1


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
    try:
        port = VmPort.from_external_ids(name, ofport if ofport is not None else -1,
                                        external_ids)
    except PortError as e:
        return Rejection(name, str(e), transient=True)
    if link_state == "down":
        return Rejection(name, f"port {name!r} ({port.iface_id}): link down (the VM's "
                         "device is gone); no flows until it comes back", transient=True)
    return port
