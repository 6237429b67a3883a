"""The shape the brief asks for, kept by a test: the linter and the formatter agree with the
code, the layers' contracts hold (lint-imports), modules of at most 400 lines and a shim of
at most 250, one module that imports the OpenFlow framework, and a core that loads none of
the framework, OVSDB, oslo.config, eventlet or subprocess when imported."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "ovsnat").rglob("*.py")) + sorted((ROOT / "bench").rglob("*.py"))
BIN = pathlib.Path(sys.executable).parent  # the venv's tools, as make test installs them
PURE = ["ovsnat.model", "ovsnat.compile", "ovsnat.openflow", "ovsnat.packets", "ovsnat.core"]
# What the pure packages must not load, even through a third-party package. (socket is not
# here: netaddr imports it for inet_pton; import-linter keeps ovsnat's own modules off it.)
NOT_LOADED = [
    "ryu",
    "os_ken",
    "oslo_config",
    "oslo_log",
    "ovs",
    "eventlet",
    "greenlet",
    "subprocess",
]


def _tool(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "argv",
    [("ruff", "check", "."), ("ruff", "format", "--check", "."), ("lint-imports",)],
    ids=" ".join,
)
def test_the_linter_the_formatter_and_the_import_contracts_pass(argv):
    done = _tool(*argv)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_import_contracts_are_the_ones_declared():
    """Positive control: lint-imports checked the three contracts of pyproject.toml, not
    none (a renamed table or a bad path would make it check nothing and pass)."""
    out = _tool("lint-imports").stdout
    assert re.search(r"Contracts: 3 kept, 0 broken", out), out


def test_every_module_is_at_most_400_lines_and_the_shim_at_most_250():
    long = {
        str(p.relative_to(ROOT)): n
        for p in SOURCES
        for n in [len(p.read_text().splitlines())]
        if n > 400
    }
    assert not long
    assert len((ROOT / "ovsnat" / "app.py").read_text().splitlines()) <= 250


def test_only_framework_py_imports_ryu_or_os_ken():
    pattern = re.compile(r"^\s*(import|from)\s+(ryu|os_ken)\b", re.M)
    importers = {p.name for p in SOURCES if pattern.search(p.read_text())}
    assert importers <= {"ryu_compat.py"}, importers
    assert SOURCES  # positive control: files were read


def _loaded_by(module: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after importing `module`."""
    code = f"import sys, json; import {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return {name.split(".")[0] for name in json.loads(done.stdout)}


@pytest.mark.parametrize("module", ["ovsnat.core.controller", *PURE])
def test_the_core_loads_no_framework_ovsdb_oslo_eventlet_or_subprocess(module):
    assert not set(NOT_LOADED) & _loaded_by(module)


def test_the_framework_module_does_load_the_framework():
    """Positive control for the test above: the same check sees a framework loaded."""
    assert {"ryu", "os_ken"} & _loaded_by("ovsnat.runtime.framework")


def test_every_effect_the_core_returns_has_a_handler_in_the_shim():
    """ovsnat.app's `_write` hands each effect of ovsnat.core.effects to its handler; one
    without would be taken for a sync's chunks and fail at run time."""
    from ovsnat.core import effects

    shim = (ROOT / "ovsnat" / "app.py").read_text()
    handled = set(re.findall(r"^\s+(\w+): lambda e, now:", shim, re.M))
    assert handled == set(effects.EFFECTS), handled ^ set(effects.EFFECTS)
