"""Several external networks (docs/routers.md, issue 26 item 3): the `ovsnat-ext-*` keys of
the Bridge row, parsed against the host's options.

- `ovsnat-ext-<external-network-id>` = `vlan=<1-4094|->;cidr=<cidr>;gw=<ip>;snat=<ip>`:
  an external network this host serves, the VLAN it has on the uplink, its gateway and
  this host's SNAT address on it.

`vlan=-` names the options' network (untagged: `external_cidr`, `external_gateway_ip`, the
host's SNAT IP), so its key must say the same, or it is not taken. A tagged network must not
overlap any other, `internal_cidr` or the transit range, nor share a VLAN. Without any key
every router's gateway is the options' network, as before this issue; once keys exist, a
router naming an external network without a good key gets no PAT and no FIP
(ovsnat.model.routing). Pure: each bad key is one problem naming the key and the value,
which the controller logs once, and it drops that external network alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import netaddr

from ovsnat.model.eastwest import ID
from ovsnat.model.parse import ConfigError, _show, _usable, parse_cidr, parse_fields, parse_ipv4

EXT_PREFIX = "ovsnat-ext-"
NONE = "-"


@dataclass(frozen=True)
class External:
    """One external network on this host's uplink. `vlan` None: the untagged one (the
    options'). `gateway_mac`: learned from the gateway's ARP (None until then)."""

    id: str
    vlan: int | None
    cidr: netaddr.IPNetwork
    gateway: netaddr.IPAddress
    snat: netaddr.IPAddress
    gateway_mac: netaddr.EUI | None = None

    def describe(self) -> dict:
        return {
            "vlan": self.vlan,
            "cidr": str(self.cidr),
            "gateway": str(self.gateway),
            "gateway_mac": str(self.gateway_mac).replace("-", ":").lower()
            if self.gateway_mac is not None
            else None,
            "snat": str(self.snat),
        }


def parse_externals(ids: Mapping[str, str], cfg) -> tuple[tuple[External, ...], dict[str, str]]:
    """The external networks the keys name, in id order, and the problems (key -> error)."""
    problems: dict[str, str] = {}
    kept: list[External] = []
    for key in sorted(k for k in ids if k.startswith(EXT_PREFIX)):
        what = f"bridge external_ids:{key}"
        try:
            ext = _external(key[len(EXT_PREFIX) :], ids[key], what, cfg)
            _check_against(ext, kept, cfg, what)
        except ValueError as e:
            problems[key] = f"{e}; routers on it get no PAT and no FIP"
            continue
        kept.append(ext)
    return tuple(kept), problems


def _external(eid: str, value, what: str, cfg) -> External:
    if not ID.fullmatch(eid):
        raise ValueError(f"{what}: {_show(eid)} is not a network id")
    f = parse_fields(value, ("vlan", "cidr", "gw", "snat"), what)
    vlan = f["vlan"]
    if vlan != NONE and not (re.fullmatch(r"[0-9]{1,4}", vlan) and 1 <= int(vlan) <= 4094):
        raise ValueError(f"{what}: vlan {_show(vlan)} is not a VLAN (1-4094) or {NONE}")
    try:
        cidr = parse_cidr(f["cidr"], f"{what}: cidr")
        gw = parse_ipv4(f["gw"], f"{what}: gw")
        snat = parse_ipv4(f["snat"], f"{what}: snat")
    except ConfigError as e:
        raise ValueError(str(e)) from None
    for name, ip in (("gw", gw), ("snat", snat)):
        if not _usable(ip, cidr):
            raise ValueError(f"{what}: {name} {ip} is not a host address of {cidr}")
    if gw == snat:
        raise ValueError(f"{what}: snat {snat} is the gateway's address")
    return External(eid, None if vlan == NONE else int(vlan), cidr, gw, snat)


def _check_against(ext: External, kept: list[External], cfg, what: str) -> None:
    """The untagged network must be the options'; a tagged one must not meet anything else
    this host addresses."""
    if ext.vlan is None:
        options = (cfg.external_cidr, cfg.external_gateway_ip, cfg.snat_ip)
        if (ext.cidr, ext.gateway, ext.snat) != options:
            raise ValueError(
                f"{what}: the untagged external network (vlan={NONE}) is the options' "
                f"(cidr {cfg.external_cidr}, gw {cfg.external_gateway_ip}, snat "
                f"{cfg.snat_ip}), not cidr {ext.cidr}, gw {ext.gateway}, snat {ext.snat}"
            )
        if any(k.vlan is None for k in kept):
            raise ValueError(f"{what}: another key already names the untagged network")
        return
    reserved = [("external_cidr", cfg.external_cidr), ("transit_cidr", cfg.transit_cidr)]
    if cfg.internal_cidr is not None:
        reserved.append(("internal_cidr", cfg.internal_cidr))
    reserved += [(f"{EXT_PREFIX}{k.id}", k.cidr) for k in kept if k.vlan is not None]
    for name, cidr in reserved:
        if ext.cidr.first <= cidr.last and cidr.first <= ext.cidr.last:
            raise ValueError(f"{what}: cidr {ext.cidr} overlaps {name} {cidr}")
    clash = next((k for k in kept if k.vlan == ext.vlan), None)
    if clash is not None:
        raise ValueError(f"{what}: vlan {ext.vlan} is already {EXT_PREFIX}{clash.id}'s")


def served_ids(ids: Mapping[str, str], externals: tuple[External, ...]) -> frozenset[str] | None:
    """The external networks routers may name here: None while no key exists at all (every
    gateway is then the options' network), else those with a good key."""
    if not any(k.startswith(EXT_PREFIX) for k in ids):
        return None
    return frozenset(e.id for e in externals)
