"""`pip install 'ovsnat[neutron]'` into an existing Neutron changes nothing there: the extra
names compatible ranges (setup.cfg), nothing lab-only, and pip's own resolver agrees.

Offline: the existing Neutron is a copy of .venv-neutron (hard links: a few seconds, no
download) reduced to Neutron 29 and what it needs (its dependency closure, read from the
installed packages' metadata), ovsnat is the wheel built from this checkout, and pip runs
with --no-index: a requirement the installed packages do not satisfy fails the install
instead of fetching another version, so "nothing but ovsnat added" is what pip would do with
an index too. Then `pip freeze` before and after are compared.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from tests.devstack_harness import NEUTRON_VENV, REPO

LAB_ONLY = {"pyuwsgi", "pymysql", "keystone", "openstack-placement", "glance", "nova",
            "python-novaclient", "keystonemiddleware", "python-openstackclient"}

# The installed distributions Neutron needs, read from their metadata (markers evaluated).
CLOSURE = r'''
import json, re
from importlib import metadata
from packaging.requirements import Requirement
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
dists = {norm(d.metadata["Name"]): d for d in metadata.distributions()}
todo, seen = [("neutron", ())], set()
while todo:
    name, extras = todo.pop()
    key = (name, extras)
    if key in seen or name not in dists:
        continue
    seen.add(key)
    for text in dists[name].requires or []:
        req = Requirement(text)
        envs = [{"extra": e} for e in extras] or [{"extra": ""}]
        if req.marker is None or any(req.marker.evaluate(env) for env in envs):
            todo.append((norm(req.name), tuple(sorted(req.extras))))
keep = {n for n, _ in seen} | {"pip", "setuptools", "wheel"}
print(json.dumps(sorted(set(dists) - keep)))
'''


def extras() -> dict[str, list[Requirement]]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    section = parser["options.extras_require"]
    return {name: [Requirement(line) for line in section[name].splitlines() if
                   line.strip() and not line.strip().startswith("#")] for name in section}


def test_the_neutron_extra_names_ranges_and_nothing_lab_only():
    neutron = extras()["neutron"]
    assert {r.name.lower() for r in neutron} & LAB_ONLY == set()
    assert not [str(r) for r in neutron if any(s.operator == "==" for s in r.specifier)]
    assert any(r.name == "neutron" and "30" not in r.specifier and "29.0.0" in r.specifier
               for r in neutron)
    lab = {r.name.lower() for r in extras()["lab"]}
    assert LAB_ONLY <= lab and {"openstacksdk", "os-vif"} <= lab


def pip(venv, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check",
                           *args], capture_output=True, text=True, timeout=300, check=check,
                          env=dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS=""))


def freeze(venv) -> dict[str, str]:
    lines = pip(venv, "freeze", "--all").stdout.splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line)


@pytest.fixture
def existing_neutron(tmp_path):
    """A virtualenv holding the current Neutron (29, as .venv-neutron has it) and nothing else:
    a hard-linked copy of .venv-neutron with every distribution outside Neutron's closure
    uninstalled (ovsnat, the lab's services)."""
    if not (NEUTRON_VENV / "bin" / "python").exists():
        pytest.fail(f"{NEUTRON_VENV} missing: `make install` builds it")
    venv = tmp_path / "neutron-venv"
    subprocess.run(["cp", "-al", str(NEUTRON_VENV), str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    for path in [*site.glob("*.pth"), *(venv / "bin").iterdir()]:    # files pip may rewrite
        if path.is_file() and not path.is_symlink():
            shutil.copy2(path, f"{path}.copy")
            os.replace(f"{path}.copy", path)
    (venv / "pyvenv.cfg").write_text((NEUTRON_VENV / "pyvenv.cfg").read_text())
    extra = json.loads(subprocess.run([str(venv / "bin" / "python"), "-c", CLOSURE],
                                      capture_output=True, text=True, check=True).stdout)
    assert "ovsnat" in extra and "nova" in extra and "neutron" not in extra
    pip(venv, "uninstall", "-q", "-y", *extra)
    yield venv
    shutil.rmtree(venv, ignore_errors=True)


def test_installing_ovsnat_neutron_into_an_existing_neutron_changes_nothing_there(
        existing_neutron, tmp_path):
    before = freeze(existing_neutron)
    assert before["neutron"] == "29.0.0" and "ovsnat" not in before and "nova" not in before
    wheels, src = tmp_path / "wheels", tmp_path / "src"     # built from a clean copy
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(src)], check=True,
                   capture_output=True, timeout=300)
    assert next(wheels.glob("ovsnat-*.whl"))
    proc = pip(existing_neutron, "install", "--find-links", str(wheels), "ovsnat[neutron]",
               check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr     # nothing to fetch: all there
    after = freeze(existing_neutron)
    assert {k: v for k, v in after.items() if k != "ovsnat"} == before
    assert after["ovsnat"] == "0.1.0"
    check = pip(existing_neutron, "check", check=False)
    assert check.returncode == 0, check.stdout
