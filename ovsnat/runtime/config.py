"""The `[ovsnat]` options registered with the framework's oslo.config.

`ryu-manager --config-file ovsnat.conf ovsnat.app` parses the file before it loads the app;
oslo.config reads late-registered options from the already parsed files, so registering here
at import time is enough. `load()` turns the values into a validated HostConfig or raises
ConfigError with one message naming the option.
"""

from __future__ import annotations

import contextlib

from oslo_config import cfg as oslo_cfg

from ovsnat.model import ConfigError, HostConfig
from ovsnat.model.options import OPTIONS, SECTION

INT_RANGES = {
    "snat_port_min": (1, 65535),
    "snat_port_max": (1, 65535),
    "metrics_port": (0, 65535),
    "pat_ports_per_vm": (0, 65535),
    "ct_zone": (0, 65535),
    "fip_frag_ct_zone": (0, 65535),
    "network_ct_zone_base": (4095, 61440),
    "dhcp_lease_time": (60, 2**31),
    "dhcp_mtu": (576, 9216),
    "handoff_vlan": (0, 4094),
    "handoff_grace": (1, 86400),
    "conn_limit": (0, 10**7),
    "conn_limit_zone_base": (4095, 65534),
    "audit_interval": (0, 86400),
    "bgp_table": (1, 251),
    "bgp_community_asn": (1, 65535),
    "bgp_max_routes": (1, 100000),
    "bgp_moved_hold": (1, 86400),
    "bgp_bfd_interval": (50, 60000),
    "bgp_bfd_multiplier": (2, 255),
}
EXTRA: list = []


def oslo_opts() -> list:
    opts = []
    for o in OPTIONS:
        if o.name in INT_RANGES:
            lo, hi = INT_RANGES[o.name]
            opts.append(oslo_cfg.IntOpt(o.name, default=o.default, min=lo, max=hi, help=o.help))
        else:
            opts.append(oslo_cfg.StrOpt(o.name, default=o.default, help=o.help))
    return opts + EXTRA


def register(conf) -> None:
    with contextlib.suppress(oslo_cfg.DuplicateOptError):  # registered (module reloaded)
        conf.register_opts(oslo_opts(), group=SECTION)


def raw_options(conf) -> dict:
    """Option values as a dict; an invalid value raises ConfigError naming the option."""
    group = getattr(conf, SECTION)
    values = {}
    for o in OPTIONS:
        try:
            values[o.name] = getattr(group, o.name)
        except (oslo_cfg.ConfigFileValueError, ValueError) as e:
            raise ConfigError(f"{o.name}: {e}") from None
    return values


def load(conf, uplink_ofport: int = 0) -> HostConfig:
    values = raw_options(conf)
    values["uplink_ofport"] = uplink_ofport
    return HostConfig.parse(values)


def describe(cfg: HostConfig, remote: str, vswitchd) -> str:
    """The controller's first log line: what it runs with, as the operator set it."""
    return (
        f"bridge {cfg.bridge}, uplink {cfg.uplink_port}, OVSDB {remote}, SNAT "
        f"{cfg.snat_ip or '(from the bridge)'}:{cfg.snat_port_min}-{cfg.snat_port_max}, "
        f"FIP activation {cfg.fip_activation}, ovs-vswitchd through {vswitchd.describe()}"
    )
