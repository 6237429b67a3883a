"""Fixtures over the real lab (ovsnat.lab). Lab tests need root and Open vSwitch; when either
is missing they fail with the reason, never skip: `make test` installs everything."""

from __future__ import annotations

import os

import pytest

from ovsnat.lab import Lab
from ovsnat.lab.ovs import Ovs, require_ovs


def _require_lab_prerequisites(request) -> None:
    if request.node.get_closest_marker("lab") is None:
        pytest.fail(
            f"{request.node.nodeid} builds a lab but is not marked `lab`: the unit "
            "tests must run with no OVS and no namespace",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail(
            "lab tests need root (network namespaces, Open vSwitch): run `make test` as root",
            pytrace=False,
        )
    try:
        require_ovs()
    except Exception as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_ovs_and_make_no_namespace(request, monkeypatch):
    """A test not marked `lab` fails if it reaches the lab's namespaces or OVS by any road
    (a Lab built by hand, a helper that builds one, ovs-vsctl/ofctl/appctl through Ovs), not
    only through the fixtures below: the unit tests must pass on a machine with neither."""
    if request.node.get_closest_marker("lab") is not None:
        return

    def refuse(what):
        def fail(*args, **kwargs):
            pytest.fail(
                f"{request.node.nodeid} is not marked `lab` but {what}: the unit "
                "tests must run with no OVS and no namespace",
                pytrace=False,
            )

        return fail

    monkeypatch.setattr(Lab, "up", refuse("builds a lab"))
    monkeypatch.setattr(Lab, "_add_ns", refuse("creates a network namespace"))
    for method in ("start_db", "start_vswitchd", "vsctl", "ofctl", "appctl"):
        monkeypatch.setattr(Ovs, method, refuse(f"uses Open vSwitch (Ovs.{method})"))


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
