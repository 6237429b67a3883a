"""bgp mode's options (docs/bgp.md, build plan slice 1): an operator writes `bgp_*` in
ovsnat.conf, `ovsnat bgp render` turns them into FRR's configuration, and FRR's own parser
(`vtysh --dryrun`) accepts it. A bad value is one line naming the option; the controller
loads bgp mode from the same file, and l2 mode is unchanged."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import netaddr
import pytest

from ovsnat.cli import golden
from ovsnat.cli.main import main as ovsnat_main
from ovsnat.model import ConfigError, HostConfig, bgp
from ovsnat.model.options import BY_NAME, defaults

EXTERNAL = netaddr.IPNetwork("203.0.113.0/24")
BASE = {
    "external_mode": "bgp",
    "bgp_asn": "4200100001",
    "bgp_uplinks": "up0,up1",
    "bgp_kernel_ports": "bgp0,bgp1",
    "bgp_links": "10.254.1.1/31,10.254.1.2/31",
}


def settings(**changes) -> bgp.BgpSettings:
    return bgp.parse_bgp({**BASE, **changes}, EXTERNAL)


def vtysh_dryrun(path: Path) -> subprocess.CompletedProcess:
    vtysh = shutil.which("vtysh")
    assert vtysh, "vtysh missing: scripts/install.sh installs Debian's frr"
    return subprocess.run(
        [vtysh, "--dryrun", "-f", str(path)], capture_output=True, text=True, timeout=60
    )


def test_the_samples_rendering_is_the_golden_file_and_frr_accepts_it(tmp_path):
    text = golden.frr_sample()
    assert Path(golden.FRR_SAMPLE).read_text() == text, "etc/frr stale: `make golden`"
    good = tmp_path / "frr.conf"
    good.write_text(text)
    done = vtysh_dryrun(good)
    assert done.returncode == 0, done.stdout + done.stderr
    # Positive control: the same check refuses a line FRR does not know.
    bad = tmp_path / "bad.conf"
    bad.write_text(text.replace("coalesce-time 100", "coalesce-time 100\n no-such-command 1"))
    assert vtysh_dryrun(bad).returncode != 0


def test_each_link_is_a_31_whose_other_address_is_the_tors():
    s = settings()
    assert [(str(x.local), str(x.peer)) for x in s.links] == [
        ("10.254.1.1", "10.254.1.0"),
        ("10.254.1.2", "10.254.1.3"),
    ]
    assert str(s.router_id) == "10.254.1.1" and s.announce == (EXTERNAL,)
    assert s.accept == (netaddr.IPNetwork("0.0.0.0/0"),)
    assert (s.table, s.moved_table, s.live_community, s.moved_community) == (
        100,
        101,
        "64999:100",
        "64999:200",
    )
    assert [str(n) for n in settings(bgp_protect="10.255.0.1/32").guarded] == [
        "10.254.1.0/31",
        "10.254.1.2/31",
        "10.255.0.1/32",
    ]


@pytest.mark.parametrize(
    ("changes", "option", "reason"),
    [
        ({"bgp_asn": ""}, "bgp_asn", "required"),
        ({"bgp_asn": "4294967295"}, "bgp_asn", "outside"),
        ({"bgp_asn": "AS65000"}, "bgp_asn", "not an integer"),
        ({"bgp_uplinks": ""}, "bgp_uplinks", "required"),
        ({"bgp_uplinks": "a,b,c,d,e"}, "bgp_uplinks", "one per ToR"),
        ({"bgp_kernel_ports": "bgp0"}, "bgp_kernel_ports", "1 given for 2"),
        ({"bgp_links": "10.254.1.1/31"}, "bgp_links", "1 given for 2"),
        ({"bgp_links": "10.254.1.1/30,10.254.1.3/31"}, "bgp_links", "not a /31"),
        ({"bgp_links": "10.254.1.1/31,10.254.1.0/31"}, "bgp_links", "given twice"),
        ({"bgp_links": "nonsense/31,10.254.1.3/31"}, "bgp_links", "not an IPv4"),
        ({"bgp_kernel_ports": "up1,bgp1"}, "bgp_kernel_ports", "its own"),
        ({"bgp_uplinks": "up 0,up1"}, "bgp_uplinks", "not a valid port name"),
        ({"bgp_announce": "10.254.0.0/16"}, "bgp_links", "overlaps bgp_announce"),
        ({"bgp_announce": "203.0.113.5/24"}, "bgp_announce", "host bits"),
        ({"bgp_accept": "0.0.0.0"}, "bgp_accept", "no prefix length"),
        ({"bgp_table": "252"}, "bgp_table", "outside 1-251"),
        ({"bgp_community_asn": "70000"}, "bgp_community_asn", "outside"),
        ({"bgp_bfd_interval": "10"}, "bgp_bfd_interval", "outside"),
        ({"bgp_router_id": "hv1"}, "bgp_router_id", "not an IPv4"),
    ],
)
def test_a_bad_value_is_one_error_naming_the_option_and_the_reason(changes, option, reason):
    with pytest.raises(ConfigError) as err:
        settings(**changes)
    assert str(err.value).startswith(f"{option}: ") and reason in str(err.value), err.value


def test_every_option_the_parser_reads_is_in_the_option_table():
    source = Path(bgp.__file__).read_text()
    read = set(re.findall(r'"(bgp_[a-z_]+)"', source)) | {"external_mode"}
    assert read <= set(BY_NAME), read - set(BY_NAME)
    assert {n for n in BY_NAME if n.startswith("bgp_")} <= read


def test_the_controller_loads_bgp_mode_from_its_file_and_l2_is_unchanged(tmp_path):
    from oslo_config import cfg as oslo_cfg

    from ovsnat.runtime import config

    options = {**defaults(), "snat_ip": "203.0.113.11", "uplink_ofport": 1}
    assert HostConfig.parse(options) == HostConfig.parse({**options, "external_mode": "l2"})
    assert HostConfig.parse({**options, **BASE}).bgp == settings()  # the tools read it
    with pytest.raises(ConfigError, match=r"^external_mode: 'ospf' is not one of l2, bgp"):
        HostConfig.parse({**options, "external_mode": "ospf"})
    path = tmp_path / "ovsnat.conf"
    path.write_text("[ovsnat]\n" + "".join(f"{k} = {v}\n" for k, v in BASE.items()))
    conf = oslo_cfg.ConfigOpts()
    config.register(conf)
    conf([], default_config_files=[str(path)])
    cfg = config.load(conf)
    assert cfg.bgp == settings() and [r.link for r in cfg.routed] == list(settings().links)
    assert cfg.fip_activation == "echo" and not cfg.learn_gateway_mac  # no segment to probe


def test_the_command_writes_the_file_and_refuses_an_l2_config_in_one_line(tmp_path, capsys):
    out = tmp_path / "frr.conf"
    argv = ["bgp", "render", "--config", golden.BGP_CONF, "--hostname", "hv1"]
    assert ovsnat_main([*argv, "--output", str(out)]) == 0
    assert out.read_text() == golden.frr_sample()
    l2 = tmp_path / "l2.conf"
    l2.write_text("[ovsnat]\nexternal_cidr = 203.0.113.0/24\n")
    assert ovsnat_main(["bgp", "render", "--config", str(l2)]) == 2
    assert capsys.readouterr().err == (
        "ovsnat bgp render: external_mode: l2, nothing to render (bgp mode only)\n"
    )
    bad = tmp_path / "bad.conf"
    bad.write_text(Path(golden.BGP_CONF).read_text().replace("up0,up1", "up0"))
    assert ovsnat_main(["bgp", "render", "--config", str(bad)]) == 2
    assert capsys.readouterr().err.startswith("ovsnat bgp render: bgp_kernel_ports: 2 given")


def test_the_console_script_knows_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "ovsnat.cli.main", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "bgp render" in done.stdout
