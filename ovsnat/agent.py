"""`ovsnat-agent`: run ovsnat.app on os-ken (OpenStack's maintained ryu fork, which has no
`ryu-manager` since 4.0). Takes the same options as ryu-manager: --config-file,
--ofp-listen-host, --ofp-tcp-listen-port, ..."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    # Before eventlet is imported: its green DNS resolver (dnspython) costs 16 MB of RSS and
    # ovsnat resolves no names. An operator's own setting wins.
    os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")
    from os_ken.lib import hub
    hub.patch(thread=False)
    from os_ken import cfg, log
    from os_ken.base.app_manager import AppManager
    import os_ken.controller.controller  # noqa: F401  (registers the --ofp-* options)

    log.early_init_log()
    cfg.CONF(sys.argv[1:] if argv is None else argv, project="os_ken")
    log.init_log()
    app_mgr = AppManager.get_instance()
    app_mgr.load_apps(["ovsnat.app"])
    contexts = app_mgr.create_contexts()
    services = app_mgr.instantiate_apps(**contexts)
    try:
        hub.joinall(services)
    finally:
        app_mgr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
