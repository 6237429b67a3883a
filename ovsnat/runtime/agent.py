"""`ovsnat-agent`: run ovsnat.app on os-ken (OpenStack's maintained ryu fork, which has no
`ryu-manager` since 4.0). Takes the same options as ryu-manager: --config-file,
--ofp-listen-host, --ofp-tcp-listen-port, ... The framework itself is started by
ovsnat.runtime.framework, the only module that imports it."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    # Before eventlet is imported: its green DNS resolver (dnspython) costs 16 MB of RSS and
    # ovsnat resolves no names. An operator's own setting wins.
    os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")
    os.environ["OVSNAT_FRAMEWORK"] = "os_ken"
    from ovsnat.runtime import framework

    return framework.run_apps(sys.argv[1:] if argv is None else argv, ["ovsnat.app"])


if __name__ == "__main__":
    sys.exit(main())
