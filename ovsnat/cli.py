"""The `ovsnat` command: one entry point, a subcommand per job."""

from __future__ import annotations

import sys

USAGE = """usage: ovsnat COMMAND [ARGS]

commands:
  flows                compile a host's flows offline (--config ovsnat.conf --ports ports.json)
  bind                 give a VM a floating IP (--iface-id ID --fip IP [--fixed-ip IP] [--db R])
  unbind               remove a VM's floating IP, back to PAT (--iface-id ID [--db R])
  lab up|status|down   the reference lab (real OVS hypervisors in network namespaces)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "flows":
        from ovsnat.offline import main as flows_main
        return flows_main(rest)
    if cmd in ("bind", "unbind"):
        from ovsnat.bind import run as bind_run
        return bind_run(cmd, rest)
    if cmd == "lab":
        from ovsnat.lab.cli import main as lab_main
        return lab_main(rest)
    print(f"ovsnat: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
