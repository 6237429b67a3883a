"""The host config in effect: the `[ovsnat]` options plus what only OVSDB knows.

The uplink's and fabric's OpenFlow ports, the SNAT IP from the bridge (Neutron's per-host
port, over the configured one) and the gateway MAC when it is learned. Until the uplink and
a SNAT IP are known there is no host to program; each thing waited for is logged once.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ovsnat.model import ConfigError, HostConfig, parse_ipv4
from ovsnat.model.externals import EXT_PREFIX, External, parse_externals

LOG = logging.getLogger("ovsnat")
FABRIC_MISSING = "no traffic between hosts"
META_MISSING = "metadata requests are dropped"
UNUSED = "the ToR of its link is not used"
BGP_NO_EXTERNALS = (
    "the bridge's ovsnat-ext-* keys (tagged external networks) are not served in bgp mode "
    "(docs/bgp.md); ignored"
)
SNAT_KEY = "ovsnat-snat-ip"  # on the Bridge row: the host's SNAT IP (Neutron)


class Settings:
    def __init__(self, base: HostConfig, log: bool = True):
        self.base, self.log = base, log  # log False: the caller says it (the tools)
        self.warned: set[str] = set()
        self.said: dict[str, str] = {}  # key -> its message, as last logged

    def infra(self) -> set[str]:
        """The bridge's own ports: not VMs (in bgp mode also the routed uplinks and the
        kernel's ports on them)."""
        base = self.base
        routed = {n for r in base.routed for n in (r.link.uplink, r.link.kernel_port)}
        return {base.uplink_port, base.fabric_port, base.metadata_port, *routed} - {""}

    def resolve(
        self, rows: dict, bridge_ids: dict, gateway_mac, current_snat, ext_macs=None, hops=None
    ):
        """The effective config, or None while the uplink (l2 mode) or the SNAT IP is
        missing. `ext_macs`: the tagged external networks' gateway MACs learned, by (VLAN,
        gateway); `hops`: bgp mode's usable next hops, ToR address -> MAC."""
        base = self.base
        row = rows.get(base.uplink_port)
        if base.bgp is not None:
            row = None
        elif row is None or not row.ofport or row.ofport < 1:
            self.warn_once(
                "uplink",
                f"uplink port {base.uplink_port} is not on bridge "
                f"{base.bridge} (or has no ofport); waiting for it",
            )
            return None
        snat = self._snat_ip(bridge_ids) or current_snat
        if snat is None:
            self.warn_once(
                "snat",
                f"no SNAT IP: snat_ip is empty and bridge {base.bridge} "
                f"has no external_ids:{SNAT_KEY}; waiting for it",
            )
            return None
        self.warned -= {"uplink", "snat"}
        cfg = replace(
            base,
            uplink_ofport=row.ofport if row else 0,
            routed=self._routed(rows, hops or {}),
            snat_ip=snat,
            external_gateway_mac=gateway_mac,
            fabric_ofport=self._ofport(rows, base.fabric_port, "fabric", FABRIC_MISSING),
            metadata_ofport=self._ofport(rows, base.metadata_port, "metadata", META_MISSING),
        )
        return replace(cfg, externals=self._externals(cfg, bridge_ids, ext_macs or {}))

    def _routed(self, rows: dict, hops: dict) -> tuple:
        """bgp mode's links with their ports' numbers (each missing one logged once while
        it lasts: that ToR is not used) and the ToR's MAC while it is a usable next hop."""
        return tuple(
            replace(
                r,
                uplink_ofport=self._ofport(rows, r.link.uplink, "routed uplink", UNUSED),
                kernel_ofport=self._ofport(rows, r.link.kernel_port, "kernel", UNUSED),
                tor_mac=hops.get(str(r.link.peer)),
            )
            for r in self.base.routed
        )

    def _externals(self, cfg, bridge_ids: dict, macs) -> tuple[External, ...]:
        """The ovsnat-ext-* keys, each bad one logged once while it lasts; the tagged
        networks with their gateway's MAC when it is learned. bgp mode has none yet."""
        if cfg.bgp is not None:
            if any(k.startswith(EXT_PREFIX) for k in bridge_ids):
                self.warn_once(EXT_PREFIX, BGP_NO_EXTERNALS)
            return ()
        externals, problems = parse_externals(bridge_ids, cfg)
        for key, error in problems.items():
            self.warn_once(f"{key} {error}", error)
        self.warned -= {w for w in self.warned if w.startswith(EXT_PREFIX)} - {
            f"{k} {e}" for k, e in problems.items()
        }
        return tuple(
            replace(e, gateway_mac=macs.get((e.vlan, str(e.gateway)))) if e.vlan else e
            for e in externals
        )

    def _ofport(self, rows: dict, name: str, what: str, missing: str) -> int:
        """An optional port's ofport; 0 (logged once while it lasts) while it is missing."""
        row = rows.get(name) if name else None
        key = f"{what} {name}"
        if name and (row is None or not row.ofport or row.ofport < 1):
            self.warn_once(
                key,
                f"{what} port {name} is not on bridge {self.base.bridge} (or has no "
                f"ofport); {missing} until it is",
            )
            return 0
        self.warned.discard(key)
        return row.ofport if row else 0

    def _snat_ip(self, bridge_ids: dict):
        """The bridge's SNAT IP over the configured one. A bad value is logged and ignored:
        the host keeps the last good one."""
        text = bridge_ids.get(SNAT_KEY, "").strip()
        if not text:
            return self.base.snat_ip
        what = f"bridge {self.base.bridge} external_ids:{SNAT_KEY}"
        try:
            ip = parse_ipv4(text, what)
            self.base.check_snat_ip(ip, what)
            return ip
        except ConfigError as e:
            self.warn_once(f"snat {text}", f"{e}; ignored")
            return None

    def warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            if self.log:
                LOG.error("ovsnat: %s", message)
            self.said = {k: v for k, v in self.said.items() if k in self.warned}
            self.said[key] = message

    def waiting_for(self) -> list[str]:
        """What the last resolve waited for (the uplink, a SNAT IP, and why the bridge's
        SNAT IP was not taken), as it was logged."""
        keys = sorted(k for k in self.warned if k in ("uplink", "snat") or k.startswith("snat "))
        return [self.said[key] for key in keys]


class RejectionLog:
    """One log line per new reason a port is skipped: an error once per distinct bad value
    (not again when the port's link bounces), passing states at INFO."""

    def __init__(self):
        self.reported: dict[str, str] = {}  # port -> rejection last logged
        self.errors_logged: dict[str, str] = {}  # port -> error last logged (not on bounces)

    def report(self, host) -> None:
        rejected = host.rejected
        current = {r.name: r.reason for r in rejected}
        for r in rejected:
            if self.reported.get(r.name) == r.reason:
                continue
            if r.transient:
                LOG.info("ovsnat: skipping %s", r.reason)
            elif self.errors_logged.get(r.name) != r.reason:
                LOG.error("ovsnat: skipping %s", r.reason)
                self.errors_logged[r.name] = r.reason
        for name in set(self.reported) - set(current):
            self.errors_logged.pop(name, None)
            if name in host.valid:
                LOG.info("ovsnat: port %s is programmed again", name)
        self.reported = current
