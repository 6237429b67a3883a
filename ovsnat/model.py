"""The desired state of one host, validated: host config, VM ports, FIP bindings, PAT blocks.

Pure: no I/O. Every invalid value raises (or, for a port, records) one error that names the
item and the reason, so an operator can fix it from the log line alone. A bad port never
takes other ports down with it: `state.build_state` sets it aside with its reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Mapping

import netaddr

# external_ids keys of the user-facing contract (README "external_ids contract").
KEY_IFACE_ID = "iface-id"
KEY_ATTACHED_MAC = "attached-mac"
KEY_FIXED_IP = "ovsnat-fixed-ip"
KEY_FIP = "ovsnat-fip"

MAX_ID_LEN = 255
FIP_ACTIVATIONS = ("probe", "first-packet", "immediate")

from ovsnat import dhcp_keys, networks, validate  # noqa: E402
from ovsnat.dhcp_keys import HostDhcp, PortDhcp  # noqa: E402
from ovsnat.networks import Network  # noqa: E402
from ovsnat.parse import ConfigError, PortError, _in, _require_host, _show, _usable, \
    mac_str, parse_cidr, parse_ipv4, parse_mac  # noqa: F401  (re-exported)


# --- host -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HostConfig:
    """One hypervisor's NAT settings: the `[ovsnat]` options of the contract, parsed."""

    bridge: str
    uplink_port: str
    uplink_ofport: int
    internal_cidr: netaddr.IPNetwork | None         # None: no default network on this host
    internal_gateway_ip: netaddr.IPAddress | None
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
    fabric_port: str = ""                # port to the tenant networks' L2 fabric ("": none)
    fabric_ofport: int = 0               # 0: not (yet) on the bridge
    transit_cidr: netaddr.IPNetwork = networks.TRANSIT_CANDIDATES[0]   # transit_option
    network_ct_zone_base: int = 60000
    dhcp: HostDhcp = HostDhcp()
    handoff_vlan: int = 0                # 0: no PAT session handoff (docs/handoff.md)
    handoff_grace: int = 300
    conn_limit: int = 0                  # connections per PAT VM (0: none); ovsnat.connlimit
    conn_limit_zone_base: int = 20000

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
            internal_cidr=parse_cidr(raw["internal_cidr"], "internal_cidr")
            if _given(raw, "internal_cidr") else None,
            internal_gateway_ip=parse_ipv4(raw["internal_gateway_ip"], "internal_gateway_ip")
            if _given(raw, "internal_gateway_ip") else None,
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
            fabric_port=_name(raw["fabric_port"], "fabric_port")
            if _given(raw, "fabric_port") else "",
            fabric_ofport=integer("fabric_ofport", 0, 0xFFFFFEFF)
            if _given(raw, "fabric_ofport") else 0,
            transit_cidr=networks.transit_option(raw),
            network_ct_zone_base=integer("network_ct_zone_base", 4095, 61440)
            if _given(raw, "network_ct_zone_base") else 60000,
            dhcp=dhcp_keys.parse_host(raw),
            handoff_vlan=integer("handoff_vlan", 0, 4094) if _given(raw, "handoff_vlan") else 0,
            handoff_grace=integer("handoff_grace", 1, 86400)
            if _given(raw, "handoff_grace") else 300,
            conn_limit=integer("conn_limit", 0, 10 ** 7) if _given(raw, "conn_limit") else 0,
            conn_limit_zone_base=integer("conn_limit_zone_base", 4095, 65534)
            if _given(raw, "conn_limit_zone_base") else 20000,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Relations between options (each option alone was checked while parsing)."""
        if (self.internal_cidr is None) != (self.internal_gateway_ip is None):
            raise ConfigError("internal_gateway_ip: internal_cidr and internal_gateway_ip go "
                              "together (both empty: this host has no default network)")
        networks.check_transit_cidr(self.transit_cidr)
        for name, cidr in (("internal_cidr", self.internal_cidr),
                           ("transit_cidr", self.transit_cidr)):
            if cidr is not None and _overlap(cidr, self.external_cidr):
                raise ConfigError(f"external_cidr: {self.external_cidr} overlaps {name} {cidr}")
        if self.internal_cidr is not None:
            if _overlap(self.internal_cidr, self.transit_cidr):
                raise ConfigError(f"transit_cidr: {self.transit_cidr} overlaps internal_cidr "
                                  f"{self.internal_cidr}")
            _require_host(self.internal_gateway_ip, self.internal_cidr,
                          "internal_gateway_ip:", "internal_cidr")
        zones = range(self.network_ct_zone_base + 1, self.network_ct_zone_base + 4095)
        for name in ("ct_zone", "fip_frag_ct_zone"):
            if getattr(self, name) in zones:
                raise ConfigError(f"{name}: {getattr(self, name)} is one of the VLAN networks' "
                                  f"zones {zones.start}-{zones.stop - 1} "
                                  "(network_ct_zone_base + VLAN)")
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
        if self.handoff_vlan and not self.fabric_port:
            raise ConfigError(f"handoff_vlan: {self.handoff_vlan} needs a fabric_port (the "
                              "handoff crosses the fabric)")
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

    @cached_property
    def limits(self) -> validate.HostLimits:
        """What this host reserves, as the shared validation (and Neutron's driver, through
        the agent's report) sees it: the external network and the transit range, in the
        order the controller has always checked them."""
        return validate.HostLimits((("external_cidr", self.external_cidr),
                                    ("transit_cidr", self.transit_cidr)),
                                   self.internal_cidr, self.handoff_vlan)

    @property
    def default_network(self) -> Network | None:
        """The network of ports that name none: internal_cidr, untagged."""
        if self.internal_cidr is None:
            return None
        return networks.intern(Network(networks.DEFAULT, self.internal_cidr,
                                       self.internal_gateway_ip, None))

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


def _given(raw: Mapping, name: str) -> bool:
    return raw.get(name) is not None and str(raw[name]).strip() != ""


def _overlap(a: netaddr.IPNetwork, b: netaddr.IPNetwork) -> bool:
    return a.first <= b.last and b.first <= a.last


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
    network: Network | None = None     # None: the host's default network
    dhcp: PortDhcp | None = None       # None: the host's dhcp_* options

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
        return cls(name, ofport, mac, fixed, iface_id, fip, networks.parse(label, external_ids),
                   dhcp_keys.parse_port(label, external_ids))

    def net(self, cfg: HostConfig) -> Network | None:
        """The network this port is in on this host (None: it names none, and the host has
        no default network)."""
        return self.network or cfg.default_network

    def check(self, cfg: HostConfig) -> None:
        """This port against the host config (not against other ports)."""
        label = f"port {self.name!r} ({self.iface_id})"
        net = self.net(cfg)
        if net is None:
            raise PortError(f"{label}: external_ids:{networks.KEY_NETWORK} is missing and this "
                            "host has no default network (internal_cidr is empty)")
        problem = validate.port_problem(self.fixed_ip, net,
                                        self.dhcp.routes if self.dhcp is not None else (),
                                        cfg.limits)
        if problem:
            raise PortError(f"{label}: {problem}")
        if self.mac == cfg.router_mac:
            raise PortError(f"{label}: MAC {mac_str(self.mac)} is the router MAC")
        if self.ofport in (cfg.uplink_ofport, cfg.fabric_ofport):
            raise PortError(f"{label}: ofport {self.ofport} is the "
                            f"{'uplink' if self.ofport == cfg.uplink_ofport else 'fabric'}'s")
        if self.fip is None:
            return
        if net.contains(self.fip):
            raise PortError(f"{label}: FIP {self.fip} is inside its network {net.label} "
                            f"{net.cidr}")
        _require_host(self.fip, cfg.external_cidr, f"{label}: FIP", "external_cidr", PortError)
        if self.fip == cfg.snat_ip:
            raise PortError(f"{label}: FIP {self.fip} is this host's SNAT IP")
        if self.fip == cfg.external_gateway_ip:
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
        port = replace(port, ofport=ofport)      # a usable ofport: no second parse
    else:
        try:
            port = VmPort.from_external_ids(name, ofport if ofport is not None else -1,
                                            external_ids)
        except PortError as e:
            return Rejection(name, str(e), transient=True)
    if link_state == "down":
        return Rejection(name, f"port {name!r} ({port.iface_id}): link down (the VM's "
                         "device is gone); no flows until it comes back", transient=True)
    return port
