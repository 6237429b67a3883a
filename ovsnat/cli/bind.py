"""`ovsnat bind` / `ovsnat unbind`: give a VM a floating IP, or take it away, by writing the
external_ids contract on its OVS Interface row (README, "The external_ids contract").

    ovsnat bind   --iface-id ID --fip IP [--fixed-ip IP] [--db REMOTE | --config FILE]
    ovsnat unbind --iface-id ID [--db REMOTE | --config FILE]

The running controller sees the change through its OVSDB watcher and reprograms that VM
only: bind makes it reachable from outside through the FIP (and its outbound traffic leave
with the FIP as source); unbind removes external_ids:ovsnat-fip, so the VM falls back to the
host's PAT. Addresses are checked before anything is written; with --config the port is also
checked against that host's options, because a port the controller rejects (a FIP outside
external_cidr, say) loses all its flows, PAT included. Exit status: 0 done, 1 refused or
failed (one line on stderr says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys

from ovsnat.model import (
    KEY_ATTACHED_MAC,
    KEY_FIP,
    KEY_FIXED_IP,
    KEY_IFACE_ID,
    ConfigError,
    HostConfig,
    PortError,
    VmPort,
    parse_ipv4,
)
from ovsnat.model.options import BY_NAME, read_ini
from ovsnat.model.ports import UNATTACHED

DEFAULT_DB = BY_NAME["ovsdb_connection"].default


class BindError(Exception):
    """The command cannot do what was asked; the message says why."""


def _parser(cmd: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"ovsnat {cmd}",
        description=(
            "Give a VM a floating IP (static 1:1 NAT)."
            if cmd == "bind"
            else "Remove a VM's floating IP: the VM falls back to the host's PAT."
        ),
    )
    p.add_argument(
        "--iface-id",
        required=True,
        metavar="ID",
        help="the VM port's external_ids:iface-id (the Neutron port id)",
    )
    if cmd == "bind":
        p.add_argument("--fip", required=True, metavar="IP", help="the floating IPv4 address")
        p.add_argument(
            "--fixed-ip",
            metavar="IP",
            help="also set external_ids:ovsnat-fixed-ip (the VM's internal IPv4); "
            "needed when the plugging agent did not set it",
        )
    p.add_argument(
        "--db",
        metavar="REMOTE",
        help=f"OVSDB remote (default: ovsdb_connection of --config, else {DEFAULT_DB})",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="the host's ovsnat.conf: check the port against its options first",
    )
    p.add_argument("--timeout", type=float, default=10, help="seconds to wait for OVSDB")
    return p


def _host_config(path: str | None) -> tuple[HostConfig | None, str | None]:
    if path is None:
        return None, None
    try:
        values = read_ini(path)
        values["uplink_ofport"] = 0
        return HostConfig.parse(values), str(values["ovsdb_connection"])
    except OSError as e:
        raise BindError(f"--config {path}: {e.strerror}") from None
    except (ConfigError, ValueError) as e:
        raise BindError(f"--config {path}: {e}") from None


def _check_port(cfg: HostConfig | None):
    """A check for ovsdb.set_iface_external_ids: the row as it will be after the write must
    be a port the controller accepts."""

    def check(name: str, ofport, ids: dict) -> None:
        if not str(ids.get(KEY_FIXED_IP, "")).strip():
            raise BindError(
                f"port {name!r} has no external_ids:{KEY_FIXED_IP}; pass "
                "--fixed-ip with the VM's internal address"
            )
        if cfg is None:
            return
        if not str(ids.get(KEY_ATTACHED_MAC, "")).strip():
            raise BindError(f"port {name!r} has no external_ids:{KEY_ATTACHED_MAC}")
        try:
            # ofport 0 means "not attached yet": check the addresses anyway.
            port = VmPort.from_external_ids(
                name, ofport if ofport and ofport > 0 else UNATTACHED, ids
            )
            port.check(cfg)
        except PortError as e:
            raise BindError(f"refused, the controller would reject the port: {e}") from None

    return check


def run(cmd: str, argv: list[str]) -> int:
    args = _parser(cmd).parse_args(argv)
    from ovsnat import ovsdb  # python-ovs only when there is work to do

    try:
        iface_id = args.iface_id.strip()
        if not iface_id or not iface_id.isprintable():
            raise BindError(f"--iface-id: {args.iface_id!r} is not a port id")
        set_keys, remove_keys = {}, []
        if cmd == "bind":
            set_keys[KEY_FIP] = str(parse_ipv4(args.fip, "--fip"))
            if args.fixed_ip is not None:
                set_keys[KEY_FIXED_IP] = str(parse_ipv4(args.fixed_ip, "--fixed-ip"))
        else:
            remove_keys.append(KEY_FIP)
        cfg, cfg_db = _host_config(args.config)
        remote = args.db or cfg_db or DEFAULT_DB
        if remote.startswith("unix:") and not os.path.exists(remote[5:]):
            raise BindError(
                f"OVSDB socket {remote[5:]} does not exist (is ovsdb-server "
                "running? pick another with --db)"
            )
        check = _check_port(cfg) if cmd == "bind" else None
        rows = ovsdb.set_iface_external_ids(
            remote, iface_id, set_keys, remove_keys, check, timeout=args.timeout
        )
    except (BindError, ConfigError) as e:
        print(f"ovsnat {cmd}: {e}", file=sys.stderr)
        return 1
    except ovsdb.IfaceNotFound as e:
        print(f"ovsnat {cmd}: {e.args[0]}", file=sys.stderr)
        return 1
    except (ConnectionError, TimeoutError, OSError) as e:
        print(f"ovsnat {cmd}: {e}", file=sys.stderr)
        return 1
    for name, ids in rows.items():
        if cmd == "bind":
            print(
                f"{name}: {KEY_IFACE_ID}={iface_id} {KEY_FIXED_IP}={ids.get(KEY_FIXED_IP)} "
                f"{KEY_FIP}={ids[KEY_FIP]}"
            )
        else:
            print(f"{name}: {KEY_IFACE_ID}={iface_id} no FIP (PAT)")
    return 0


def bind_main(argv: list[str]) -> int:
    return run("bind", argv)


def unbind_main(argv: list[str]) -> int:
    return run("unbind", argv)
