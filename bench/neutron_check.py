"""Checks bench.neutron_fw's formula against Neutron's own OVS firewall driver: the driver
(neutron.agent.linux.openvswitch_firewall.firewall.OVSFirewallDriver, from the Neutron venv
`make install` builds) programs the same ports, groups and members as bench.sgconfig
against a bridge that only records its flows; the switch would hold one flow per (table,
priority, match), so that is what is counted. Run with the Neutron venv's python:

    .venv-neutron/bin/python -m bench.neutron_check --ports 20 --members 100
"""

from __future__ import annotations

import argparse
import json
import sys
from types import SimpleNamespace
from unittest import mock

from bench import neutron_fw
from bench.sgconfig import desired_state
from ovsnat.model.secgroups import Rule

VLAN = 5
PROTO = {1: "icmp", 6: "tcp", 17: "udp"}


class RecordingBridge:
    """What the driver calls on its integration bridge, flows recorded by identity."""

    def __init__(self, ports: dict):
        self.ports = ports  # port id -> vif
        self.flows: dict[tuple, str] = {}
        self.br = self  # the driver calls int_br.br.<...> too

    # the deferred bridge
    def add_protocols(self, *protocols) -> None:
        pass

    def deferred(self, **_):
        return self

    def add_flow(self, flow_group_id=None, **kw) -> None:
        actions = str(kw.pop("actions", ""))
        kw.pop("cookie", None)
        self.flows[tuple(sorted((k, str(v)) for k, v in kw.items()))] = actions

    def delete_flows(self, **_) -> None:
        pass

    def apply_flows(self) -> None:
        pass

    # the OVSBridge
    def dump_flows(self, table):
        return []

    def get_vif_port_by_id(self, port_id):
        return self.ports[port_id]

    def db_get_val(self, table, name, column):
        return {"tag": str(VLAN), "network_type": "vlan", "segmentation_id": "101"}

    def request_cookie(self):
        return 1

    def unset_cookie(self, cookie) -> None:
        pass

    def get_port_ofport(self, name):
        return -1

    is_hw_offload_enabled = False


def neutron_rule(rule: Rule) -> dict:
    """A parsed contract rule as Neutron's agent receives it (security_group_info_for_devices)."""
    out = {
        "ethertype": "IPv4",
        "direction": "ingress" if rule.ingress else "egress",
    }
    if rule.proto is not None:
        out["protocol"] = PROTO.get(rule.proto, str(rule.proto))
    if rule.lo is not None:
        out["port_range_min"] = rule.lo
    if rule.hi is not None:
        out["port_range_max"] = rule.hi
    if rule.remote_group:
        out["remote_group_id"] = rule.remote_group
    elif rule.prefixes:
        side = "source_ip_prefix" if rule.ingress else "dest_ip_prefix"
        out[side] = str(rule.prefixes[0].cidr)
    return out


def driver_count(ports: int, members: int, profiles: int, rules: int) -> int:
    from neutron.agent.linux import ip_conntrack
    from neutron.agent.linux.openvswitch_firewall import firewall as ovsfw
    from neutron.conf.agent import securitygroups_rpc
    from neutron.conf.plugins.ml2.drivers import ovs_conf
    from oslo_config import cfg

    ovs_conf.register_ovs_agent_opts(cfg=cfg.CONF)
    securitygroups_rpc.register_securitygroups_opts()
    cfg.CONF([], project="bench")
    state = desired_state(ports, profiles, rules, members)
    vifs = {
        vm.name: SimpleNamespace(
            ofport=vm.ofport, vif_mac=str(vm.mac).replace("-", ":").lower(), port_name=vm.name
        )
        for vm in state.vms
    }
    bridge = RecordingBridge(vifs)
    with (
        mock.patch.object(ip_conntrack.IpConntrackManager, "_process_queue_worker"),
        mock.patch.object(
            ip_conntrack.OvsIpConntrackManager, "delete_conntrack_state_by_remote_ips"
        ),
        mock.patch("neutron.agent.linux.openvswitch_firewall.iptables.Helper"),
    ):
        fw = ovsfw.OVSFirewallDriver(bridge)
        fw.filter_defer_apply_on()
        for gid, group in state.security.groups.items():
            fw.update_security_group_rules(gid, [neutron_rule(r) for r in group.rules])
        for gid, ips in state.security.members.items():
            by_mac = {str(vm.fixed_ip): vifs[vm.name].vif_mac for vm in state.vms}
            fw.update_security_group_members(
                gid, {"IPv4": [(str(ip), by_mac.get(str(ip), "fa:16:3e:00:00:01")) for ip in ips]}
            )
        for vm in state.vms:
            fw.prepare_port_filter(
                {
                    "device": vm.name,
                    "fixed_ips": [str(vm.fixed_ip)],
                    "security_groups": list(vm.security.groups),
                    "port_security_enabled": True,
                    "allowed_address_pairs": [],
                }
            )
        fw.filter_defer_apply_off()
    return len(bridge.flows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.neutron_check", description=__doc__)
    p.add_argument("--ports", type=int, default=20)
    p.add_argument("--members", type=int, default=100)
    p.add_argument("--profiles", type=int, default=1)
    p.add_argument("--rules", type=int, default=20)
    a = p.parse_args(argv)
    real = driver_count(a.ports, a.members, a.profiles, a.rules)
    state = desired_state(a.ports, a.profiles, a.rules, a.members)
    formula = neutron_fw.count([vm.security.groups for vm in state.vms], state.security)
    print(json.dumps({"args": vars(a), "driver": real, "formula": formula.as_dict()}))
    return 0 if real == formula.total else 1


if __name__ == "__main__":
    sys.exit(main())
