"""The `ovsnat` command: one entry point, a subcommand per job."""

from __future__ import annotations

import sys

USAGE = """usage: ovsnat COMMAND [ARGS]

commands:
  flows                compile a host's flows offline (--config ovsnat.conf --ports ports.json)
  bind                 give a VM a floating IP (--iface-id ID --fip IP [--fixed-ip IP] [--db R])
  unbind               remove a VM's floating IP, back to PAT (--iface-id ID [--db R])
  dump                 a live host's flows, annotated by table role and owner (--config F)
  diff                 desired against installed flows; exit 1 on drift (--config F)
  status               VMs, FIPs, skipped ports, PAT usage, conflicts (--config F)
  trace SRC DST [PROTO [PORT]]   follow a packet through the pipeline (--config F)
  bgp render           FRR's configuration for a host in bgp mode (--config F)
  lab up|demo|status|migrate|down   the reference lab (OVS hypervisors in namespaces)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "flows":
        from ovsnat.cli.offline import main as flows_main

        return flows_main(rest)
    if cmd in ("bind", "unbind"):
        from ovsnat.cli.bind import run as bind_run

        return bind_run(cmd, rest)
    if cmd in ("dump", "diff", "status", "trace"):
        from ovsnat.cli.inspect_cli import main as inspect_main

        return inspect_main(cmd, rest)
    if cmd == "bgp":
        from ovsnat.cli.bgp import main as bgp_main

        return bgp_main(rest)
    if cmd == "lab":
        from ovsnat.lab.cli import main as lab_main

        return lab_main(rest)
    print(f"ovsnat: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
