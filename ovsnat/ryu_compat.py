"""Let ryu 4.34's `ryu-manager` start with a current eventlet.

`ryu-manager` imports `ryu.app.wsgi` before it loads any application, and that module does
`from eventlet.wsgi import ALREADY_HANDLED`, a name eventlet removed in 0.30.3 (0.30.2, the last
release that has it, crashes on Python 3.10+). So no code in an ovsnat module can fix it in
time: the fix has to be in place before `ryu-manager`'s own imports run.

`python -m ovsnat.ryu_compat --install` writes a one-line .pth file into the running
interpreter's site-packages. Python executes it at start-up; it installs an import hook that
does nothing until `eventlet.wsgi` is imported and then adds the missing sentinel. ryu's files
stay untouched, and the hook is inert for every other program in that environment. ryu only
uses the name for its WebSocket responses, which ovsnat does not serve.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import os
import sys
import sysconfig

PTH_NAME = "ovsnat-ryu-compat.pth"
PTH_LINE = "import ovsnat.ryu_compat as _c; _c.install_hook()\n"
_TARGET = "eventlet.wsgi"


def _patch(module) -> None:
    if not hasattr(module, "ALREADY_HANDLED"):
        module.ALREADY_HANDLED = object()


class _EventletWsgiFinder(importlib.abc.MetaPathFinder):
    """Finds eventlet.wsgi through the normal finders and patches it once it has executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


def install_hook() -> None:
    """Patch eventlet.wsgi now if it is loaded, else when it gets imported."""
    if _TARGET in sys.modules:
        _patch(sys.modules[_TARGET])
        return
    if not any(isinstance(f, _EventletWsgiFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _EventletWsgiFinder())


def pth_path() -> str:
    return os.path.join(sysconfig.get_paths()["purelib"], PTH_NAME)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="write the .pth file")
    parser.add_argument("--uninstall", action="store_true", help="remove the .pth file")
    args = parser.parse_args(argv)
    path = pth_path()
    if args.install:
        with open(path, "w") as f:
            f.write(PTH_LINE)
        print(f"installed {path}")
    elif args.uninstall:
        if os.path.exists(path):
            os.unlink(path)
        print(f"removed {path}")
    else:
        print(f"{path}: {'present' if os.path.exists(path) else 'absent'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
