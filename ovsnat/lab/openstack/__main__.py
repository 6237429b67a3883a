"""`python -m ovsnat.lab.openstack up|demo|down`: the OpenStack lab by hand (the same as
`ovsnat lab up --openstack` and `ovsnat lab demo --openstack`).

    up [--hosts N] [--instances M]
        OpenStack's own services (Keystone, Placement, Glance, Nova, Neutron with ovsnat's
        driver, RabbitMQ, MariaDB) in a lab namespace, N hypervisors with ovsnat's
        controller, ovsnat-neutron-agent and nova-compute, the external and tenant networks
        and a router, and M servers per host booted by Nova (DHCP). Leaves everything
        running and prints how to look at it.
    demo
        Two hosts and the narrated demo (ovsnat.lab.openstack.demo); left running.
    down LABID
"""

from __future__ import annotations

import argparse
import sys

from ovsnat.lab.topology import Lab


def up(hosts: int, per_host: int):
    """Bring the lab up (torn down again if anything fails) and boot the servers."""
    from ovsnat.lab.openstack import cloudlab, servers

    cl = cloudlab.bring_up(tuple(f"hv{i}" for i in range(1, hosts + 1)))
    try:
        cl.servers = servers.boot_many(
            cl, [(f"{host}-vm{j}", host) for host in cl.lab.hosts for j in range(1, per_host + 1)]
        )
    except BaseException:
        cl.down()
        raise
    return cl


def demo():
    from ovsnat.lab.openstack import cloudlab
    from ovsnat.lab.openstack.demo import run_demo, say

    say(
        "Bringing up the OpenStack lab: Keystone, Placement, Glance, Nova, Neutron, "
        "RabbitMQ, MariaDB, 2 hypervisors ..."
    )
    cl = cloudlab.bring_up(("hv1", "hv2"))
    say(
        f"  up in {cl.timings['bring-up']:.1f} s (lab {cl.lab.id}; databases "
        f"{'from the cache' if cl.stack.cached else 'migrated from nothing'})"
    )
    try:
        run_demo(cl)
    except BaseException:
        cl.down()
        raise
    return cl


def describe(cl) -> str:
    from ovsnat.lab.openstack import config, keystone
    from ovsnat.lab.openstack import stackconf as sc

    lab, stack, topo = cl.lab, cl.stack, cl.topo
    env = " ".join(f"{k}={v}" for k, v in keystone.cli_env(sc.DEMO, sc.DEMO).items())
    return "\n".join(
        [
            f"OpenStack lab {lab.id} up in {cl.timings['bring-up']:.1f} s",
            f"  services netns {stack.ns}: Keystone {sc.KEYSTONE_URL}, Nova "
            f"127.0.0.1:{sc.NOVA_PORT}, Neutron 127.0.0.1:{config.API_PORT}, RabbitMQ "
            f"127.0.0.1:{config.RABBIT_PORT}, MariaDB 127.0.0.1:{sc.MYSQL_PORT} (that "
            "namespace's loopback only)",
            f"  logs: {stack.paths.log}",
            f"  tenant network {topo.tenant_net} (VLAN {topo.vlan}), external {topo.external_net}",
            *[
                f"  server {s.name} on {s.host}: {s.fixed_ip} (guest netns {s.ns})"
                for s in getattr(cl, "servers", [])
            ],
            f"  as the tenant: ip netns exec {stack.ns} env {env} {config.venv_bin('openstack')} "
            "server list",
            f"  (the admin: OS_USERNAME={sc.ADMIN_USER} OS_PASSWORD={sc.password(sc.ADMIN_USER)}"
            f" OS_PROJECT_NAME=admin; in the tenant's project, with OS_PROJECT_NAME={sc.DEMO}, "
            "it may pick hosts and live-migrate)",
            *[
                f"  {h.name}: OVS_RUNDIR={h.rundir} ovs-vsctl --columns=name,external_ids list "
                "Interface"
                for h in lab.hosts.values()
            ],
            f"  remove: ovsnat lab down {lab.id}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovsnat.lab.openstack")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up")
    p_up.add_argument("--hosts", type=int, default=2)
    p_up.add_argument("--instances", type=int, default=1, help="servers per host")
    sub.add_parser("demo")
    p_down = sub.add_parser("down")
    p_down.add_argument("lab_id")
    args = parser.parse_args(argv)
    if args.cmd == "up":
        print(describe(up(args.hosts, args.instances)))
    elif args.cmd == "demo":
        demo()
    else:
        Lab.load(args.lab_id).down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
