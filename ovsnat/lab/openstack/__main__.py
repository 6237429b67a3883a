"""`python -m ovsnat.lab.openstack up|demo|down`: the OpenStack lab by hand (the same as
`ovsnat lab up --openstack` and `ovsnat lab demo --openstack`).

    up [--hosts N] [--db sqlite|mariadb] [--instances M]
        RabbitMQ + Neutron (with ovsnat's driver) in a lab namespace, N hypervisors with
        ovsnat's controller and ovsnat-neutron-agent, the external and tenant networks and a
        router (openstacksdk), and M instances per host booted as Nova boots them (DHCP).
        Leaves everything running and prints how to look at it.
    demo [--db sqlite|mariadb]
        Two hosts and the narrated demo (ovsnat.lab.openstack.demo); left running.
    down LABID
"""

from __future__ import annotations

import argparse
import sys

from ovsnat.lab.topology import Lab


def up(hosts: int, db: str, per_host: int):
    """Bring the lab up (torn down again if anything fails) and boot the instances."""
    from ovsnat.lab import dhcpclient
    from ovsnat.lab.openstack import cloudlab, nova
    cl = cloudlab.bring_up(tuple(f"hv{i}" for i in range(1, hosts + 1)), db=db)
    try:
        booted = [nova.boot(cl, f"{host}-vm{j}", host) for host in cl.lab.hosts
                  for j in range(1, per_host + 1)]
        for inst in booted:
            dhcpclient.wait_bound(cl.lab, inst.vm, timeout=30)
    except BaseException:
        cl.down()
        raise
    return cl


def demo(db: str):
    from ovsnat.lab.openstack import cloudlab
    from ovsnat.lab.openstack.demo import run_demo, say
    say(f"Bringing up the OpenStack lab ({db}): RabbitMQ, Neutron, 2 hypervisors ...")
    cl = cloudlab.bring_up(("hv1", "hv2"), db=db)
    say(f"  up in {cl.timings['bring-up']:.1f} s (lab {cl.lab.id})")
    try:
        run_demo(cl)
    except BaseException:
        cl.down()
        raise
    return cl


def describe(cl) -> str:
    from ovsnat.lab.openstack import config
    lab, services, topo = cl.lab, cl.services, cl.topo
    return "\n".join([
        f"OpenStack lab {lab.id} up in {cl.timings['bring-up']:.1f} s (db {services.db})",
        f"  services netns {services.ns}: Neutron {services.endpoint}, RabbitMQ "
        f"127.0.0.1:{config.RABBIT_PORT} (that namespace's loopback only)",
        f"  logs: {services.paths.log}",
        f"  tenant network {topo.tenant_net} (VLAN {topo.vlan}), external {topo.external_net}",
        *[f"  {vm.name} on {vm.host}: {vm.ip} (netns {vm.ns})" for vm in lab.vms.values()],
        f"  ports, as Neutron sees them: ip netns exec {services.ns} curl -s "
        f"{services.endpoint}/v2.0/ports -H 'X-Roles: admin'",
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
    p_demo = sub.add_parser("demo")
    p_demo.add_argument("--db", choices=("sqlite", "mariadb"), default="sqlite")
    p_down = sub.add_parser("down")
    p_down.add_argument("lab_id")
    args = parser.parse_args(argv)
    if args.cmd == "up":
        print(describe(up(args.hosts, args.db, args.instances)))
    elif args.cmd == "demo":
        demo(args.db)
    else:
        Lab.load(args.lab_id).down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
