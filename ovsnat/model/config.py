"""One host's NAT settings, validated: the `[ovsnat]` options of the contract as a frozen
HostConfig, and the relations between them.

Pure: no I/O. Every invalid value raises one ConfigError that names the option and the
reason, so an operator can fix it from the log line alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import netaddr

from ovsnat.model import dhcp_keys, networks, validate
from ovsnat.model.bgp import BgpSettings, RoutedLink, external_mode, parse_bgp
from ovsnat.model.dhcp_keys import HostDhcp
from ovsnat.model.externals import External
from ovsnat.model.networks import Network
from ovsnat.model.parse import (
    ConfigError,
    _require_host,
    _show,
    parse_cidr,
    parse_int,
    parse_ipv4,
    parse_mac,
)

FIP_ACTIVATIONS = ("probe", "first-packet", "immediate")


@dataclass(frozen=True)
class HostConfig:
    """One hypervisor's NAT settings: the `[ovsnat]` options of the contract, parsed."""

    bridge: str
    uplink_port: str
    uplink_ofport: int
    internal_cidr: netaddr.IPNetwork | None  # None: no default network on this host
    internal_gateway_ip: netaddr.IPAddress | None
    router_mac: netaddr.EUI
    external_cidr: netaddr.IPNetwork
    external_gateway_ip: netaddr.IPAddress
    external_gateway_mac: netaddr.EUI | None
    snat_ip: netaddr.IPAddress | None  # None: not known yet (Bridge external_ids, see README)
    snat_port_min: int
    snat_port_max: int
    ct_zone: int
    fip_frag_ct_zone: int
    pat_ports_per_vm: int = 0
    mac_prefix: str = "02:5a"
    learn_gateway_mac: bool = False  # external_gateway_mac not configured: learn by ARP
    fip_activation: str = "probe"  # or "first-packet", "immediate" (FIP_ACTIVATIONS)
    fabric_port: str = ""  # port to the tenant networks' L2 fabric ("": none)
    fabric_ofport: int = 0  # 0: not (yet) on the bridge
    metadata_port: str = ""  # port to this host's metadata proxy ("": no metadata)
    metadata_ofport: int = 0  # 0: not (yet) on the bridge
    transit_cidr: netaddr.IPNetwork = networks.TRANSIT_CANDIDATES[0]  # transit_option
    network_ct_zone_base: int = 60000
    dhcp: HostDhcp = HostDhcp()
    handoff_vlan: int = 0  # 0: no PAT session handoff (docs/handoff.md)
    handoff_grace: int = 300
    conn_limit: int = 0  # connections per PAT VM (0: none); ovsnat.compile.connlimit
    conn_limit_zone_base: int = 20000
    # The Bridge's ovsnat-ext-* keys (ovsnat.model.externals); () without any key: every
    # router's gateway is the options' network, as before several external networks.
    externals: tuple[External, ...] = ()
    # external_mode = bgp (docs/bgp.md): the routed uplinks instead of uplink_port, and each
    # link's ports and ToR MAC as far as they are known.
    bgp: BgpSettings | None = None
    routed: tuple[RoutedLink, ...] = ()

    @classmethod
    def parse(cls, raw: Mapping[str, object]) -> HostConfig:
        """From option name -> value (strings or numbers); raises ConfigError naming the
        first bad option."""

        def get(name):
            if name not in raw or raw[name] is None or str(raw[name]).strip() == "":
                raise ConfigError(f"{name}: required option is empty")
            return raw[name]

        def integer(name, lo, hi):
            return parse_int(get(name), name, lo, hi)

        external_cidr = parse_cidr(get("external_cidr"), "external_cidr")
        bgp = parse_bgp(raw, external_cidr) if external_mode(raw) == "bgp" else None
        gw_mac = str(raw.get("external_gateway_mac") or "").strip()
        cfg = cls(
            bridge=_name(get("bridge"), "bridge"),
            uplink_port=_name(get("uplink_port"), "uplink_port"),
            uplink_ofport=integer("uplink_ofport", 0, 0xFFFFFEFF)
            if raw.get("uplink_ofport") not in (None, "")
            else 0,
            internal_cidr=parse_cidr(raw["internal_cidr"], "internal_cidr")
            if _given(raw, "internal_cidr")
            else None,
            internal_gateway_ip=parse_ipv4(raw["internal_gateway_ip"], "internal_gateway_ip")
            if _given(raw, "internal_gateway_ip")
            else None,
            router_mac=parse_mac(get("router_mac"), "router_mac"),
            external_cidr=external_cidr,
            external_gateway_ip=parse_ipv4(get("external_gateway_ip"), "external_gateway_ip"),
            external_gateway_mac=(parse_mac(gw_mac, "external_gateway_mac") if gw_mac else None),
            snat_ip=parse_ipv4(raw["snat_ip"], "snat_ip")
            if str(raw.get("snat_ip") or "").strip()
            else None,
            snat_port_min=integer("snat_port_min", 1, 65535),
            snat_port_max=integer("snat_port_max", 1, 65535),
            ct_zone=integer("ct_zone", 0, 65535),
            fip_frag_ct_zone=integer("fip_frag_ct_zone", 0, 65535),
            pat_ports_per_vm=integer("pat_ports_per_vm", 0, 65535)
            if raw.get("pat_ports_per_vm") not in (None, "")
            else 0,
            mac_prefix=str(raw.get("mac_prefix") or "02:5a").strip().lower(),
            learn_gateway_mac=not gw_mac and bgp is None,  # bgp: no shared segment
            # bgp mode: the other hosts' routes say who holds a FIP (docs/bgp.md, section 2)
            fip_activation="echo" if bgp else str(raw.get("fip_activation") or "probe").strip(),
            fabric_port=_name(raw["fabric_port"], "fabric_port")
            if _given(raw, "fabric_port")
            else "",
            fabric_ofport=integer("fabric_ofport", 0, 0xFFFFFEFF)
            if _given(raw, "fabric_ofport")
            else 0,
            metadata_port=_name(raw["metadata_port"], "metadata_port")
            if _given(raw, "metadata_port")
            else "",
            metadata_ofport=integer("metadata_ofport", 0, 0xFEFF)
            if _given(raw, "metadata_ofport")
            else 0,
            transit_cidr=networks.transit_option(raw),
            network_ct_zone_base=integer("network_ct_zone_base", 4095, 61440)
            if _given(raw, "network_ct_zone_base")
            else 60000,
            dhcp=dhcp_keys.parse_host(raw),
            handoff_vlan=integer("handoff_vlan", 0, 4094) if _given(raw, "handoff_vlan") else 0,
            handoff_grace=integer("handoff_grace", 1, 86400)
            if _given(raw, "handoff_grace")
            else 300,
            conn_limit=integer("conn_limit", 0, 10**7) if _given(raw, "conn_limit") else 0,
            conn_limit_zone_base=integer("conn_limit_zone_base", 4095, 65534)
            if _given(raw, "conn_limit_zone_base")
            else 20000,
            bgp=bgp,
            routed=tuple(RoutedLink(link) for link in bgp.links) if bgp else (),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Relations between options (each option alone was checked while parsing)."""
        if (self.internal_cidr is None) != (self.internal_gateway_ip is None):
            raise ConfigError(
                "internal_gateway_ip: internal_cidr and internal_gateway_ip go "
                "together (both empty: this host has no default network)"
            )
        networks.check_transit_cidr(self.transit_cidr)
        for name, cidr in (
            ("internal_cidr", self.internal_cidr),
            ("transit_cidr", self.transit_cidr),
        ):
            if cidr is not None and _overlap(cidr, self.external_cidr):
                raise ConfigError(f"external_cidr: {self.external_cidr} overlaps {name} {cidr}")
        if self.internal_cidr is not None:
            if _overlap(self.internal_cidr, self.transit_cidr):
                raise ConfigError(
                    f"transit_cidr: {self.transit_cidr} overlaps internal_cidr {self.internal_cidr}"
                )
            _require_host(
                self.internal_gateway_ip,
                self.internal_cidr,
                "internal_gateway_ip:",
                "internal_cidr",
            )
        zones = range(self.network_ct_zone_base + 1, self.network_ct_zone_base + 4095)
        for name in ("ct_zone", "fip_frag_ct_zone"):
            if getattr(self, name) in zones:
                raise ConfigError(
                    f"{name}: {getattr(self, name)} is one of the VLAN networks' "
                    f"zones {zones.start}-{zones.stop - 1} "
                    "(network_ct_zone_base + VLAN)"
                )
        _require_host(
            self.external_gateway_ip, self.external_cidr, "external_gateway_ip:", "external_cidr"
        )
        if self.snat_ip is not None:
            self.check_snat_ip(self.snat_ip)
        if self.snat_port_min > self.snat_port_max:
            raise ConfigError(
                f"snat_port_min: {self.snat_port_min} is above snat_port_max "
                f"{self.snat_port_max} (range reversed)"
            )
        if self.pat_ports_per_vm > self.snat_port_max - self.snat_port_min + 1:
            raise ConfigError(
                f"pat_ports_per_vm: {self.pat_ports_per_vm} is larger than the "
                f"whole range {self.snat_port_min}-{self.snat_port_max}"
            )
        if self.fip_activation not in FIP_ACTIVATIONS and not (
            self.bgp and self.fip_activation == "echo"
        ):
            raise ConfigError(
                f"fip_activation: {self.fip_activation!r} is not one of "
                f"{', '.join(FIP_ACTIVATIONS)}"
            )
        if self.metadata_port and self.metadata_port in (self.uplink_port, self.fabric_port):
            raise ConfigError(
                f"metadata_port: {self.metadata_port} is the uplink or fabric port (it must "
                "be the metadata proxy's own port: what comes from it is trusted as the "
                "proxy's replies)"
            )
        if self.handoff_vlan and not self.fabric_port:
            raise ConfigError(
                f"handoff_vlan: {self.handoff_vlan} needs a fabric_port (the "
                "handoff crosses the fabric)"
            )
        if self.ct_zone == self.fip_frag_ct_zone:
            raise ConfigError(
                f"fip_frag_ct_zone: {self.fip_frag_ct_zone} equals ct_zone; the "
                "two conntrack zones must differ"
            )
        if (
            not re.fullmatch(r"[0-9a-f]{2}:[0-9a-f]{2}", self.mac_prefix)
            or int(self.mac_prefix[:2], 16) & 0x03 != 0x02
        ):
            raise ConfigError(
                f"mac_prefix: {self.mac_prefix!r} must be two bytes of a "
                "locally administered unicast MAC (e.g. 02:5a)"
            )

    def check_snat_ip(self, ip: netaddr.IPAddress, what: str = "snat_ip") -> None:
        """The SNAT IP against the external network (from the config or from OVSDB)."""
        _require_host(ip, self.external_cidr, f"{what}:", "external_cidr")
        if ip == self.external_gateway_ip:
            raise ConfigError(f"{what}: {ip} is the external gateway's address")

    def require_snat(self) -> None:
        if self.snat_ip is None:
            raise ConfigError(
                "snat_ip: required option is empty (set it, or let "
                "ovsnat-neutron-agent set Bridge external_ids:ovsnat-snat-ip)"
            )

    @cached_property
    def limits(self) -> validate.HostLimits:
        """What this host reserves, as the shared validation (and Neutron's driver, through
        the agent's report) sees it: the external network and the transit range, in the
        order the controller has always checked them."""
        return validate.HostLimits(
            (("external_cidr", self.external_cidr), ("transit_cidr", self.transit_cidr)),
            self.internal_cidr,
            self.handoff_vlan,
        )

    @property
    def default_network(self) -> Network | None:
        """The network of ports that name none: internal_cidr, untagged."""
        if self.internal_cidr is None:
            return None
        return networks.intern(
            Network(networks.DEFAULT, self.internal_cidr, self.internal_gateway_ip, None)
        )

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

    @property
    def tagged(self) -> tuple[External, ...]:
        """The external networks in a VLAN of the uplink (the untagged one is the options')."""
        return tuple(e for e in self.externals if e.vlan is not None)

    def external_vlan(self, ext_id: str | None) -> int:
        """The uplink VLAN of a router's gateway network (0: untagged, the options')."""
        return next((e.vlan for e in self.tagged if e.id == ext_id), 0)

    def external_for(self, ip: netaddr.IPAddress) -> External | None:
        """The tagged external network an address (a FIP, a SNAT IP) belongs to, or None:
        the untagged one. The addresses decide: external networks never overlap."""
        return next((e for e in self.tagged if e.cidr.first <= int(ip) <= e.cidr.last), None)


def _given(raw: Mapping, name: str) -> bool:
    return raw.get(name) is not None and str(raw[name]).strip() != ""


def _overlap(a: netaddr.IPNetwork, b: netaddr.IPNetwork) -> bool:
    return a.first <= b.last and b.first <= a.last


def _name(value, what: str) -> str:
    text = str(value).strip()
    if not text or len(text) > 64 or not all(c.isalnum() or c in "-_." for c in text):
        raise ConfigError(f"{what}: {_show(value)} is not a valid OVS port or bridge name")
    return text
