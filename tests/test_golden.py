"""flows/ stays equal to the compiler's output, and the rendered text is exactly what OVS
prints for the installed flows (so golden files read like real dumps)."""

from __future__ import annotations

import pytest

from ovsnat.cli import golden
from ovsnat.lab import scenario


@pytest.mark.parametrize("name", sorted(golden.SCENARIOS))
def test_golden_flows_match_the_compiler(name):
    with open(golden.path(name)) as f:
        assert f.read() == golden.render(name), f"flows/{name}.flows is stale: run `make golden`"


def test_sample_config_lists_every_option_with_its_default():
    with open(golden.SAMPLE_CONF) as f:
        assert f.read() == golden.sample_conf(), "etc/ovsnat.conf.sample is stale: `make golden`"


def test_pipeline_md_tables_match_the_declared_pipeline():
    with open(golden.PIPELINE_MD) as f:
        current = f.read()
    assert golden.pipeline_md(current) == current, "flows/pipeline.md is stale: `make golden`"


@pytest.mark.lab
@pytest.mark.parametrize(
    "name",
    [
        "hairpin",
        "per-vm-pat-blocks",
        "gateway-by-arp",
        "networks",
        "handoff",
        "conn-limit",
        "unrouted",
        "east-west",
    ],
)
def test_ovs_accepts_golden_flows_and_dumps_them_identically(make_lab, name):
    lab = make_lab()
    host = lab.add_host("hv1")
    text = golden.render(name)
    scenario.install_meters(host)
    host.ofctl("--bundle", "add-flows", "br-int", "-", input=text)
    dumped = {
        line.strip()
        for line in host.ofctl("dump-flows", "br-int", "--no-stats").splitlines()
        if "priority=" in line
    }
    rendered = {line for line in text.splitlines() if not line.startswith("#")}
    assert dumped == rendered
