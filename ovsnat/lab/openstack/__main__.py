"""`python -m ovsnat.lab.openstack up|down`: the OpenStack lab by hand.

    up [--hosts N] [--db sqlite|mariadb] [--instances M]
        RabbitMQ + Neutron (with ovsnat's driver) in a lab namespace, N hypervisors with their
        ovsnat-neutron-agent, the external and tenant networks and a router (openstacksdk),
        and M instances per host plugged with os-vif. Leaves everything running and prints
        how to look at it; `ovsnat lab down LABID` (or --all) removes it.
    down LABID
"""

from __future__ import annotations

import argparse
import sys
import time

from ovsnat.lab.openstack import cloud, config, instances
from ovsnat.lab.openstack.services import OpenStack
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import Lab


def up(hosts: int, db: str, per_host: int) -> Lab:
    t0 = time.monotonic()
    lab = Lab().up()
    services = OpenStack(lab, db=db)
    try:
        services.up()
        conn = cloud.InNamespace(cloud.connect(services.endpoint), services.ns)
        topo = cloud.create_topology(conn)
        for i in range(1, hosts + 1):
            lab.add_host(f"hv{i}")
            services.start_agent(f"hv{i}")
        wait_for(lambda: len([a for a in conn.network.agents() if a.is_alive]) == hosts, 60,
                 interval=0.2, what="every ovsnat agent alive")
        for host in list(lab.hosts):
            for j in range(1, per_host + 1):
                port = cloud.create_port(conn, topo, host, f"{host}-vm{j}")
                spec = cloud.vif_spec(conn, port, f"{host}-vm{j}")
                instances.boot(lab, f"{host}-vm{j}", host, spec,
                               port.fixed_ips[0]["ip_address"], cloud.TENANT["cidr"],
                               cloud.TENANT["gateway"])
    except BaseException:
        services.down()
        lab.down()
        raise
    print(describe(lab, services, topo, time.monotonic() - t0))
    return lab


def describe(lab: Lab, services: OpenStack, topo: cloud.Topology, took: float) -> str:
    py = config.venv_bin("python")
    return "\n".join([
        f"OpenStack lab {lab.id} up in {took:.1f} s (db {services.db})",
        f"  services netns {services.ns}: Neutron {services.endpoint}, RabbitMQ "
        f"127.0.0.1:{config.RABBIT_PORT} (that namespace's loopback only)",
        f"  logs: {services.paths.log}",
        f"  tenant network {topo.tenant_net} (VLAN {topo.vlan}), external {topo.external_net}",
        "  ports, as Neutron sees them:",
        f"    ip netns exec {services.ns} curl -s {services.endpoint}/v2.0/ports "
        "-H 'X-Project-Id: admin'",
        "  agents, with openstacksdk:",
        f"    ip netns exec {services.ns} {py} -c \"import openstack; c = openstack.connect("
        f"auth_type='none', auth={{'endpoint': '{services.endpoint}'}}); "
        "print([(a.host, a.is_alive) for a in c.network.agents()])\"",
        *[f"  {h.name}: OVS_RUNDIR={h.rundir} ovs-vsctl --columns=name,external_ids list "
          "Interface" for h in lab.hosts.values()],
        f"  remove: ovsnat lab down {lab.id}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovsnat.lab.openstack")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up")
    p_up.add_argument("--hosts", type=int, default=2)
    p_up.add_argument("--db", choices=("sqlite", "mariadb"), default="sqlite")
    p_up.add_argument("--instances", type=int, default=1, help="instances per host")
    p_down = sub.add_parser("down")
    p_down.add_argument("lab_id")
    args = parser.parse_args(argv)
    if args.cmd == "up":
        up(args.hosts, args.db, args.instances)
    else:
        Lab.load(args.lab_id).down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
