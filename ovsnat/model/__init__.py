"""What ovsnat is asked to do, validated: the host's options (config), its VM ports and
their external_ids contract (ports), tenant networks, DHCP keys, the option table, and the
rows OVSDB hands the controller. Pure: no framework, no OVSDB, no subprocess.

The names most code uses are re-exported here (`from ovsnat.model import HostConfig`)."""

from ovsnat.model.config import HostConfig
from ovsnat.model.parse import ConfigError, PortError, mac_str, parse_ipv4
from ovsnat.model.ports import (
    KEY_ATTACHED_MAC,
    KEY_FIP,
    KEY_FIXED_IP,
    KEY_IFACE_ID,
    DesiredState,
    Rejection,
    VmPort,
    port_from_row,
    with_gateway_mac,
)

__all__ = [
    "KEY_ATTACHED_MAC",
    "KEY_FIP",
    "KEY_FIXED_IP",
    "KEY_IFACE_ID",
    "ConfigError",
    "DesiredState",
    "HostConfig",
    "PortError",
    "Rejection",
    "VmPort",
    "mac_str",
    "parse_ipv4",
    "port_from_row",
    "with_gateway_mac",
]
