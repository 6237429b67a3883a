"""The devstack plugin in Neutron mode (OVSNAT_MODE=neutron, the default): ovsnat as
Neutron's backend. Services: `ovsnat` (the controller), `ovsnat-agent` (ovsnat-neutron-agent,
each hypervisor), `ovsnat-ml2` (the ML2 driver, where neutron-server runs). Without devstack:
tests/devstack_harness.py sources the plugin over stub devstack functions; the files it writes
are read by ovsnat's own code (the controller's options) and by the agent's own option
parser, in Neutron's virtualenv.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ovsnat.model import HostConfig
from ovsnat.options import read_ini
from tests.devstack_harness import NEUTRON_VENV, REPO, Devstack, index, localrc, named

ALL_IN_ONE = "key,n-api,n-cpu,placement-api,q-svc,ovsnat,ovsnat-agent,ovsnat-ml2"
COMPUTE = "n-cpu,placement-client,neutron,ovsnat,ovsnat-agent"
# stackrc's default at devstack 493835a6: Neutron with OVN (what the all-in-one sample turns
# off)
DEVSTACK_DEFAULT_SERVICES = ("key,n-api,n-cpu,n-cond,n-sch,n-novnc,n-api-meta,placement-api,"
                             "placement-client,g-api,c-sch,c-api,c-vol,ovn-controller,"
                             "ovn-northd,ovs-vswitchd,ovsdb-server,q-svc,q-ovn-agent,horizon,"
                             "rabbit,tempest,mysql,etcd3,dstat")


@pytest.fixture
def node(tmp_path) -> Devstack:
    return Devstack(tmp_path).neutron_mode(ALL_IN_ONE)


def agent_options(*files: str) -> dict:
    """The agent's own options ([ovs] and [ovsnat]) as ovsnat-neutron-agent itself parses
    these files, as "group.name"."""
    code = ("import json, sys\n"
            "from oslo_service import backend; backend.init_backend("
            "backend.BackendType.THREADING)\n"
            "from oslo_config import cfg\n"
            "from ovsnat.neutron import opts\n"
            "opts.register(cfg.CONF)\n"
            "cfg.CONF([a for f in sys.argv[1:] for a in ('--config-file', f)], "
            "project='neutron')\n"
            "print(json.dumps({f'{g}.{o.name}': getattr(getattr(cfg.CONF, g), o.name) "
            "for g, group in ((opts.OVS_GROUP, opts.OVS_OPTS), "
            "(opts.OVSNAT_GROUP, opts.OVSNAT_OPTS)) for o in group}))\n")
    out = subprocess.run([str(NEUTRON_VENV / "bin" / "python"), "-c", code, *files],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def stack(node: Devstack, **env: str) -> list:
    """install, post-config, extra (stack.sh's order); the calls of extra."""
    node.ok("stack", "install", **env)
    node.ok("stack", "post-config", **env)
    return node.ok("stack", "extra", **env)


# --- pre-install and install ------------------------------------------------------------------
def test_pre_install_refuses_a_q_agent_whose_cleanup_deletes_br_int_or_that_configures_ovn(node):
    for agent in ("openvswitch", "ovn"):
        proc = node.run("stack", "pre-install", Q_AGENT=agent)
        assert proc.returncode != 0 and f"Q_AGENT={agent}" in proc.stderr, proc.stderr
    node.ok("stack", "pre-install")


def test_pre_install_refuses_an_agent_node_without_neutrons_library_and_conf(node):
    node.env["ENABLED_SERVICES"] = COMPUTE.replace(",neutron", "")
    proc = node.run("stack", "pre-install")
    assert proc.returncode != 0 and "enable_service neutron" in proc.stderr, proc.stderr
    node.env["ENABLED_SERVICES"] = COMPUTE
    node.ok("stack", "pre-install")


def test_devstacks_agent_hooks_keep_br_int_through_unstack(node):
    """lib/neutron's cleanup_neutron (unstack.sh, clean.sh) deletes br-int and its tap ports
    when is_neutron_ovs_base_plugin says so; configure_neutron_nova calls
    neutron_plugin_create_nova_conf on every Nova node."""
    script = (f"(source {REPO}/devstack/plugin.sh unstack >/dev/null; "
              "neutron_plugin_create_nova_conf && ! is_neutron_ovs_base_plugin && "
              "echo hooks-ok) >&2")
    proc = node.run("unstack", after_settings=script)
    assert proc.returncode == 0 and "hooks-ok" in proc.stderr, proc.stderr
    proc = node.run("unstack", after_settings=script, Q_AGENT="openvswitch")
    assert "hooks-ok" not in proc.stderr          # devstack's own agent files define them


def test_install_installs_and_starts_open_vswitch_when_it_does_not_answer(node):
    node.ovs_down(installed=False)
    calls = node.ok("stack", "install")
    assert named(calls, "get_packages") == [["openvswitch"]]      # devstack's own list
    assert named(calls, "install_package") == [["fakeroot", "make", "openvswitch-switch"]]
    assert named(calls, "restart_service") == [["openvswitch-switch"]]
    assert index(calls, lambda c: c[0] == "restart_service") < \
        index(calls, lambda c: c[0] == "venv-python")
    again = node.ok("stack", "install")                         # running: left alone
    assert not named(again, "install_package") and not named(again, "restart_service")


def test_install_puts_ovsnat_into_neutrons_environment_without_moving_its_pins(node):
    calls = node.ok("stack", "install")
    assert named(calls, "pip_install") == [["--no-deps", "-e", str(REPO)]]
    assert named(calls, "venv-python")          # and the controller's own virtualenv
    node.env["ENABLED_SERVICES"] = "ovsnat"
    assert not named(node.ok("stack", "install"), "pip_install")


# --- post-config ----------------------------------------------------------------------------
def test_post_config_makes_ovsnat_ml2s_driver_with_vlan_tenant_networks_on_the_fabric(node):
    node.ok("stack", "install")
    node.ok("stack", "post-config")
    ml2 = node.ini("/" + node.env["Q_PLUGIN_CONF_FILE"])
    assert ml2["ml2"] == {"mechanism_drivers": "ovsnat", "type_drivers": "flat,vlan",
                          "tenant_network_types": "vlan"}
    assert ml2["ml2_type_vlan"] == {"network_vlan_ranges": "fabric:100:199"}
    assert ml2["ml2_type_flat"] == {"flat_networks": "fabric,public"}


def test_the_agents_ini_starts_from_the_generated_sample_and_is_what_the_agent_reads(node):
    calls = node.ok("stack", "post-config")
    sample = f"{REPO}/etc/neutron/plugins/ml2/ovsnat_agent.ini.sample"
    assert ["install", "-m", "644", sample, node.env["OVSNAT_AGENT_CONF"]] in \
        named(calls, "sudo")
    options = agent_options(node.env["OVSNAT_AGENT_CONF"])
    assert options == {"OVS.integration_bridge": "br-int", "OVS.ovsdb_connection":
                       "unix:/var/run/openvswitch/db.sock", "OVS.ovsdb_timeout": 10,
                       "ovsnat.physical_networks": ["fabric"],
                       "ovsnat.external_network": "public",
                       "ovsnat.controller_config": str(node.conf)}


def test_the_controllers_config_names_no_network_and_takes_its_snat_address_from_neutron(node):
    node.ok("stack", "post-config")
    values = read_ini(str(node.conf))
    assert values["internal_cidr"] == "" and values["snat_ip"] == ""
    cfg = HostConfig.parse({**values, "uplink_ofport": 1})
    assert cfg.bridge == "br-int" and cfg.uplink_port == "eth1"
    assert cfg.fabric_port == "eth2" and cfg.fip_activation == "probe"


@pytest.mark.parametrize("service", ["q-agt", "q-l3", "q-dhcp", "ovn-controller", "q-ovn-agent",
                                     "neutron-ovn-agent", "q-ovn-metadata-agent"])
def test_a_neutron_agent_beside_ovsnats_is_refused(node, service):
    node.env["ENABLED_SERVICES"] += f",{service}"
    proc = node.run("stack", "post-config")
    assert proc.returncode != 0, proc.stdout
    assert f"service {service} is enabled on a node that runs ovsnat-agent" in proc.stderr
    assert not node.conf.exists()


# --- extra ----------------------------------------------------------------------------------
def test_extra_starts_the_controller_then_the_agent_on_br_int_with_uplink_and_fabric(node):
    calls = stack(node)
    vsctl = named(calls, "ovs-vsctl")
    add_br = next(c for c in vsctl if "add-br" in c)
    assert add_br[add_br.index("add-br") + 1] == "br-int" and "fail_mode=secure" in add_br
    assert [c for c in vsctl if c[-3:] == ["add-port", "br-int", "eth1"]]
    assert [c for c in vsctl if c[-3:] == ["add-port", "br-int", "eth2"]]
    assert ["set-manager", "ptcp:6640:127.0.0.1"] in vsctl       # for nova-compute's os-vif
    (ctl, ctl_cmd, _, ctl_user), (agent, cmd, _, user) = named(calls, "run_process")
    assert (ctl, agent, ctl_user, user) == ("ovsnat", "ovsnat-agent", "root", "root")
    argv = cmd.split()
    assert argv == [f"{NEUTRON_VENV}/bin/ovsnat-neutron-agent",
                    "--config-file", node.env["NEUTRON_CONF"],
                    "--config-file", node.env["OVSNAT_AGENT_CONF"]]
    assert os.access(argv[0], os.X_OK)          # the console script Neutron's venv has
    assert index(calls, lambda c: c[:2] == ["ovs-vsctl", "set-controller"]) < \
        index(calls, lambda c: c[:2] == ["run_process", "ovsnat-agent"])


def test_extra_makes_the_networks_ovsnat_serves_once(node):
    calls = stack(node)
    cli = [" ".join(c[4:]) for c in named(calls, "openstack")]    # after --os-cloud/--os-region
    assert cli[0] == "network show public"
    assert ("network create public --external --provider-network-type flat "
            "--provider-physical-network public") in cli
    assert any(c.startswith("subnet create public-subnet --network public --subnet-range "
                            "172.24.4.0/24 --gateway 172.24.4.1 --no-dhcp --allocation-pool "
                            "start=172.24.4.10,end=172.24.4.250") for c in cli)
    assert "network create private --project demo" in cli
    assert "router set private-router --external-gateway public" in cli
    assert "router add subnet private-router private-subnet" in cli
    (node.state / "networks-exist").touch()          # a second stack.sh
    again = [" ".join(c[4:]) for c in named(node.ok("stack", "extra"), "openstack")]
    assert again == ["network show public"]


def test_a_compute_node_runs_controller_and_agent_but_no_ml2_changes(node):
    node.env["ENABLED_SERVICES"] = COMPUTE
    calls = stack(node)
    assert [c[0] for c in named(calls, "run_process")] == ["ovsnat", "ovsnat-agent"]
    assert not named(calls, "openstack")
    assert not os.path.exists("/" + node.env["Q_PLUGIN_CONF_FILE"])


# --- unstack and clean --------------------------------------------------------------------
def test_unstack_stops_agent_and_controller_and_clean_removes_the_agents_ini(node):
    stack(node)
    assert named(node.ok("unstack"), "stop_process") == [["ovsnat-agent"], ["ovsnat"]]
    assert os.path.exists(node.env["OVSNAT_AGENT_CONF"])
    node.ok("clean")
    assert not os.path.exists(node.env["OVSNAT_AGENT_CONF"]) and not node.conf.exists()


# --- the samples ----------------------------------------------------------------------------
@pytest.mark.parametrize("sample, services", [
    ("local.conf.sample", {"ovsnat", "ovsnat-agent", "ovsnat-ml2"}),
    ("local.conf.compute.sample", {"ovsnat", "ovsnat-agent"})])
def test_the_local_conf_samples_stack_in_neutron_mode(tmp_path, sample, services):
    node = Devstack(tmp_path).neutron_mode(DEVSTACK_DEFAULT_SERVICES)
    for var in ("OVSNAT_MODE", "OVSNAT_SNAT_IP", "OVSNAT_FABRIC_PORT"):
        node.env.pop(var)
    block = localrc(sample)
    assert "enable_plugin ovsnat" in block
    for phase in (("stack", "install"), ("stack", "post-config")):
        node.ok(*phase, localrc=block)
    calls = node.ok("stack", "extra", localrc=block)
    started = {c[0] for c in named(calls, "run_process")}
    assert started == services - {"ovsnat-ml2"}
    assert bool(named(calls, "openstack")) == ("ovsnat-ml2" in services)
    cfg = HostConfig.parse({**read_ini(str(node.conf)), "uplink_ofport": 1})
    assert (cfg.bridge, cfg.uplink_port, cfg.fabric_port) == ("br-int", "eth1", "eth2")
    assert agent_options(node.env["OVSNAT_AGENT_CONF"])["ovsnat.physical_networks"] == \
        ["fabric"]
