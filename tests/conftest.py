"""Fixtures over the real lab (ovsnat.lab). Lab tests need root and Open vSwitch; when either
is missing they fail with the reason, never skip: `make test` installs everything."""

from __future__ import annotations

import os

import pytest

from ovsnat.lab import Lab
from ovsnat.lab.ovs import require_ovs


def _require_lab_prerequisites(request) -> None:
    if request.node.get_closest_marker("lab") is None:
        pytest.fail(f"{request.node.nodeid} builds a lab but is not marked `lab`: the unit "
                    "tests must run with no OVS and no namespace", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces, Open vSwitch): run `make test` "
                    "as root", pytrace=False)
    try:
        require_ovs()
    except Exception as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def make_lab(request):
    """Factory: make_lab() returns a Lab with the outside network up; every lab made is torn
    down after the test, pass or fail."""
    _require_lab_prerequisites(request)
    labs: list[Lab] = []

    def make() -> Lab:
        lab = Lab()
        labs.append(lab)
        return lab.up()

    yield make
    for lab in labs:
        lab.down()


@pytest.fixture(scope="module")
def module_lab(request):
    """One lab shared by the tests of a module (building one costs about half a second, but
    the scenario setup on top of it usually costs more)."""
    _require_lab_prerequisites(request)
    lab = Lab()
    try:
        yield lab.up()
    finally:
        lab.down()
