"""`ovsnat bgp render`: FRR's configuration for a host in bgp mode, from its ovsnat.conf.

The operator's FRR service runs the result (`frr-reload.py` applies a change); the lab
renders each hypervisor's file the same way. The file never changes with a FIP: ovsnat
feeds FRR through kernel tables (docs/bgp.md).
"""

from __future__ import annotations

import argparse
import socket
import sys

from ovsnat.compile.frr_conf import render
from ovsnat.model import ConfigError, bgp
from ovsnat.model.options import read_ini
from ovsnat.model.parse import parse_cidr


def settings_from(options: dict) -> bgp.BgpSettings:
    """The bgp_* options of a config file; ConfigError when it is not in bgp mode."""
    if bgp.external_mode(options) != "bgp":
        raise ConfigError("external_mode: l2, nothing to render (bgp mode only)")
    return bgp.parse_bgp(options, parse_cidr(options.get("external_cidr"), "external_cidr"))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ovsnat bgp", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    r = sub.add_parser("render", help="print (or write) this host's frr.conf")
    r.add_argument("--config", required=True, help="ovsnat.conf ([ovsnat] section)")
    r.add_argument("--hostname", default=socket.gethostname(), help="FRR's hostname line")
    r.add_argument("--output", help="write here instead of standard output")
    a = p.parse_args(argv)
    try:
        text = render(settings_from(read_ini(a.config)), a.hostname)
    except (ConfigError, ValueError, OSError) as e:
        print(f"ovsnat bgp render: {e}", file=sys.stderr)
        return 2
    if a.output:
        with open(a.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
