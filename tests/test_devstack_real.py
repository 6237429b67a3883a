"""The devstack plugin run by devstack's own code (devstack/tools/with-devstack.sh: its
function libraries, stackrc, local.conf handling and plugin machinery, in stack.sh's,
unstack.sh's and clean.sh's order, stubbing only what needs the internet or a real node) on
both local.conf samples. Needs a checkout of openstack/devstack in OVSNAT_DEVSTACK_DIR: CI
has none and `make test` deselects it (marker devstack) (the stub harness, tests/test_devstack*.py, runs there); `make
test-devstack DEVSTACK_DIR=...` runs it. The recorded run is in devstack/README.md."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.devstack_harness import REPO

pytestmark = pytest.mark.devstack
DEVSTACK_DIR = os.environ.get("OVSNAT_DEVSTACK_DIR", "")


@pytest.mark.parametrize("sample", ["local.conf.sample", "local.conf.compute.sample"])
def test_the_plugins_phases_run_under_devstacks_own_code(sample, tmp_path):
    if not DEVSTACK_DIR:
        pytest.fail("no devstack checkout: set OVSNAT_DEVSTACK_DIR (make test-devstack "
                    "DEVSTACK_DIR=...); `make test` deselects these tests", pytrace=False)
    proc = subprocess.run([str(REPO / "devstack" / "tools" / "with-devstack.sh"), DEVSTACK_DIR,
                           sample], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, TMPDIR=str(tmp_path)))
    out = proc.stdout + proc.stderr
    sandbox = re.search(r"with-devstack: sandbox (\S+)", out)
    try:
        assert proc.returncode == 0, out[-4000:]
        assert "with-devstack: OK" in out
        assert "br-int is still there after unstack.sh" in out
        assert re.search(r"the agent reads transport_url='rabbit://", out), out[-4000:]
        assert "the agent reports the controller's limits: {'reserved': " in out
    finally:
        if sandbox:
            shutil.rmtree(sandbox.group(1), ignore_errors=True)
