"""ovsnat-neutron-agent's options, named as an operator of Neutron's Open vSwitch agent
knows them, and the `oslo.config.opts` entry point (`ovsnat.neutron.agent`) from which
oslo-config-generator writes etc/neutron/plugins/ml2/ovsnat_agent.ini.sample
(`make config-samples`; tests/test_agent_options.py fails when it is stale).

- `[ovs] integration_bridge`, `ovsdb_connection`, `ovsdb_timeout`: the names, group and
  meaning of neutron-openvswitch-agent's (neutron/conf/plugins/ml2/drivers/ovs_conf.py,
  neutron/conf/agent/ovsdb_api.py, neutron/conf/agent/ovs_conf.py). Only ovsdb_connection's
  default differs: the local unix socket (the agent runs as root, as the controller does;
  Neutron's agent defaults to tcp:127.0.0.1:6640, a manager ovsnat needs only for Nova).
  Until 0.3.0 they were `[ovsnat] bridge` and `[ovsnat] ovsdb_connection`: still read in
  0.3.x, as deprecated aliases (a warning in the log), removed in 0.4.0.
- `[ovsnat] physical_networks`, `external_network`, `controller_config`: ovsnat's own.
- `[agent] report_interval`, `log_agent_heartbeats`: Neutron's, registered by Neutron.

Neutron-free at import (oslo.config only); list_opts imports Neutron's [agent] options.
"""

from __future__ import annotations

from oslo_config import cfg

OVS_GROUP = "OVS"            # neutron-openvswitch-agent's group (`[ovs]` in files)
OVSNAT_GROUP = "ovsnat"
_OLD = "ovsnat"              # the deprecated names' group
_RELEASE = "ovsnat 0.4.0"    # when the deprecated names go (0.3.0 renamed them)

OVS_OPTS = [
    cfg.StrOpt("integration_bridge", default="br-int",
               deprecated_opts=[cfg.DeprecatedOpt("bridge", group=_OLD)],
               help="The bridge whose VM ports ovsnat programs: the one Nova plugs "
                    "instances into, reported to Neutron (vif_details bridge_name). The "
                    "same bridge as the controller's [ovsnat] bridge. [ovsnat] bridge is a "
                    f"deprecated alias, removed in {_RELEASE}."),
    cfg.StrOpt("ovsdb_connection", default="unix:/var/run/openvswitch/db.sock",
               regex=r"^(tcp|ssl|unix):.+",
               deprecated_opts=[cfg.DeprecatedOpt("ovsdb_connection", group=_OLD)],
               help="The local OVSDB (the same database as the controller's "
                    "ovsdb_connection). [ovsnat] ovsdb_connection is a deprecated alias, "
                    f"removed in {_RELEASE}."),
    cfg.IntOpt("ovsdb_timeout", default=10, min=1,
               help="Timeout in seconds for one OVSDB transaction of the agent's (a VM "
                    "port's keys); it is retried on the next pass."),
]

OVSNAT_OPTS = [
    cfg.ListOpt("physical_networks", default=["fabric"],
                help="Physical networks the bridge's fabric port reaches; the mechanism "
                     "driver binds vlan and flat segments of these only."),
    cfg.StrOpt("external_network", default="",
               help="Name or id of the external network for this host's SNAT address; "
                    "empty: the only router:external network."),
    cfg.StrOpt("controller_config", default="/etc/ovsnat/ovsnat.conf",
               help="The configuration file of this host's ovsnat controller. The agent "
                    "reports what it reserves (external_cidr, transit_cidr, a default "
                    "network, handoff_vlan) to Neutron, whose mechanism driver then refuses "
                    "at binding a port whose network overlaps them. Empty, or a file that "
                    "cannot be read: nothing is reported (logged), and such ports bind but "
                    "the controller refuses them."),
]


def register(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OVS_OPTS, OVS_GROUP)
    conf.register_opts(OVSNAT_OPTS, OVSNAT_GROUP)


def list_opts() -> list[tuple[str, list]]:
    """For oslo-config-generator (entry point oslo.config.opts: ovsnat.neutron.agent), with
    the [agent] options of Neutron's that the agent reads, as Neutron's own agents list
    them."""
    from neutron.conf.agent import common as agent_conf
    return [("agent", agent_conf.AGENT_STATE_OPTS), ("ovs", OVS_OPTS),
            (OVSNAT_GROUP, OVSNAT_OPTS)]
