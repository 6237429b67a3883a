"""`ovsnat lab up|status|down`: the reference lab from the command line."""

from __future__ import annotations

import argparse

from ovsnat.lab import dhcpclient, routedlab, scenario
from ovsnat.lab.bgpplan import MAX_HOSTS, snat_address
from ovsnat.lab.fabric import TENANT_A, TENANT_B
from ovsnat.lab.topology import Lab, down_all, list_lab_namespaces
from ovsnat.lab.traffic import start_server

# The default lab: two hypervisors, VMs with and without floating IPs (the contract's
# external_ids are set on each Interface row, as nova/os-vif would).
DEFAULT_VMS = [
    # name, host, fixed ip, mac, fip, network (None: the hosts' default network)
    ("vm1", "hv1", "10.0.0.11", "02:00:0a:00:00:0b", "203.0.113.10", None),
    ("vm2", "hv1", "10.0.0.12", "02:00:0a:00:00:0c", None, None),
    ("vm3", "hv2", "10.0.0.13", "02:00:0a:00:00:0d", "203.0.113.12", None),
    ("vm4", "hv2", "10.0.0.14", "02:00:0a:00:00:0e", None, None),
    # two tenant networks with the same addresses, on the fabric in VLAN 101 and 102
    ("ta1", "hv1", "10.1.0.11", "02:00:0a:01:00:0b", None, TENANT_A),
    ("tb1", "hv1", "10.1.0.11", "02:00:0a:02:00:0b", None, TENANT_B),
    ("ta2", "hv2", "10.1.0.12", "02:00:0a:01:00:0c", None, TENANT_A),
]
DHCP_VMS = {"vm3"}  # configured only by a DHCP client, as a cloud image boots
LAB_DHCP = {"dhcp_dns": "198.51.100.53", "dhcp_domain": "lab.example"}
LAB_HANDOFF = {"handoff_vlan": 4000, "handoff_grace": 120}  # docs/handoff.md


def contract_ids(ip: str, fip: str | None) -> dict[str, str]:
    ids = {"ovsnat-fixed-ip": ip}
    if fip:
        ids["ovsnat-fip"] = fip
    return ids


def snat_ip(host: str) -> str:
    """hv1 -> 203.0.113.11, hv2 -> 203.0.113.21, ...: one PAT address per host."""
    return snat_address(int(host[2:]))


def build_default(lab: Lab, hosts: int = 2, controllers: bool = True, bgp: bool = False) -> Lab:
    """Hosts with ovsnat's controller (ryu-manager), the VMs, and servers to talk to. With
    `bgp`, on a routed fabric (ovsnat.lab.routedlab) instead of a shared external segment."""
    routedlab.up(lab) if bgp else lab.up()
    for i in range(1, hosts + 1):
        name, extra = f"hv{i}", {}
        if bgp:
            extra = routedlab.add_host(lab, name, i)[1]
        else:
            lab.add_host(name, fabric=True)
        if controllers:
            scenario.start_controller(lab, name, snat_ip(name), fabric_port="fabric",
                                      **LAB_DHCP, **LAB_HANDOFF, **extra)  # fmt: skip
    if bgp:
        routedlab.peer_tors(lab, hosts)
    for name, host, ip, mac, fip, net in DEFAULT_VMS:
        if host in lab.hosts:
            vm = lab.add_vm(
                name,
                host,
                ip,
                mac,
                contract_ids(ip, fip),
                net=net,
                dhcp=controllers and name in DHCP_VMS,
            )
            start_server(lab, f"{name}-tcp", vm.ns, "tcp", 7000)
    if controllers:
        for name in sorted(DHCP_VMS & set(lab.vms)):
            dhcpclient.wait_bound(lab, lab.vms[name], timeout=30)
    start_server(lab, "srv-tcp", lab.srv_ns, "tcp", 8080)
    start_server(lab, "srv-udp", lab.srv_ns, "udp", 8080)
    return lab


def describe(lab: Lab) -> str:
    lines = [f"lab {lab.id}  (state {lab.dir})"]
    if lab.frr:
        lines.append(
            f"  outside: router (FRR, AS {routedlab.OUT_ASN}) in {lab.out_ns}, server "
            f"198.51.100.10 in {lab.srv_ns}; ToRs (FRR) in {lab.ns_name('ta')} and "
            f"{lab.ns_name('tb')}; no external segment (routed uplinks, BGP)"
        )
        lines += [
            f"      inspect: vtysh --vty_socket {rundir} -c 'show bgp ipv4 unicast'  ({role})"
            for role, rundir in sorted(lab.frr.items())
        ]
    else:
        lines.append(
            f"  outside: router 203.0.113.1 in {lab.out_ns}, server 198.51.100.10 in "
            f"{lab.srv_ns}, external segment in {lab.ext_ns}"
        )
    for host in lab.hosts.values():
        alive = "running" if host.ovs.alive() else "DOWN"
        lines.append(f"  {host.name}: netns {host.ns}, ovs-vswitchd {alive}, rundir {host.rundir}")
        lines.append(
            f"      inspect: OVS_RUNDIR={host.rundir} ovs-ofctl -O OpenFlow13 dump-flows br-int"
        )
        for vm in lab.vms.values():
            if vm.host == host.name:
                ids = host.vsctl(
                    "--if-exists", "get", "Interface", vm.tap, "external_ids", check=False
                ).strip()
                lines.append(f"      {vm.name}: {vm.ip} {vm.mac} port {vm.tap} {ids}")
    for name, info in lab.procs.items():
        lines.append(f"  process {name}: pid {info['pid']} log {info['log']}")
    return "\n".join(lines)


def openstack(a) -> int:
    """`ovsnat lab up|demo --openstack`: ovsnat.lab.openstack's entry points."""
    from ovsnat.lab.openstack import __main__ as os_lab

    if a.cmd == "demo":
        os_lab.demo()
    else:
        print(os_lab.describe(os_lab.up(a.hosts, a.instances)))
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ovsnat lab", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the default lab and leave it running")
    up.add_argument("--hosts", type=int, default=2)
    up.add_argument(
        "--no-controllers",
        action="store_true",
        help="leave br-int without ovsnat (program it yourself)",
    )
    demo = sub.add_parser("demo", help="build the default lab and run the narrated demo")
    demo.add_argument(
        "--keep",
        action="store_true",
        default=True,
        help="leave the lab running afterwards (default)",
    )
    for cmd in (up, demo):
        cmd.add_argument(
            "--bgp",
            action="store_true",
            help="routed uplinks instead of a shared external segment: two ToRs and an "
            "outside router running FRR, each hypervisor announcing its FIPs and SNAT "
            "address by BGP (docs/bgp.md)",
        )
        cmd.add_argument(
            "--openstack",
            action="store_true",
            help="the OpenStack lab: Keystone, Placement, Glance, Nova and "
            "Neutron driving ovsnat (ML2 driver, ovsnat-neutron-agent), "
            "servers booted by Nova (docs/openstack.md)",
        )
    up.add_argument(
        "--instances",
        type=int,
        default=1,
        help="with --openstack: servers per host, booted by Nova (DHCP)",
    )
    mig = sub.add_parser("migrate", help="live-migrate a VM of a running lab to a host")
    mig.add_argument("vm")
    mig.add_argument("host")
    mig.add_argument("--lab", dest="lab_id", help="lab id (default: the only lab)")
    mig.add_argument(
        "--overlap",
        action="store_true",
        help="create the destination row first and leave the source's behind",
    )
    sub.add_parser("status", help="show every lab on this machine")
    down = sub.add_parser("down", help="remove a lab (or all) and everything it started")
    down.add_argument("lab_id", nargs="?")
    down.add_argument("--all", action="store_true")
    a = p.parse_args(argv)

    if a.cmd in ("up", "demo") and a.bgp and not 1 <= getattr(a, "hosts", 2) <= MAX_HOSTS:
        p.error(f"--bgp: --hosts from 1 to {MAX_HOSTS} (the lab's addressing plan)")
    if a.cmd in ("up", "demo") and a.openstack and a.bgp:
        p.error("--bgp and --openstack together: not yet (the OpenStack lab is l2 only)")
    if a.cmd in ("up", "demo") and a.openstack:
        return openstack(a)
    if a.cmd in ("up", "demo"):
        lab = Lab()
        try:
            build_default(
                lab,
                getattr(a, "hosts", 2),
                controllers=not getattr(a, "no_controllers", False),
                bgp=a.bgp,
            )
            if a.cmd == "demo" and a.bgp:
                from ovsnat.lab.routeddemo import run_demo as run_bgp_demo

                run_bgp_demo(lab)
            elif a.cmd == "demo":
                from ovsnat.lab.demo import run_demo

                run_demo(lab)
        except BaseException:
            lab.down()
            raise
        print(describe(lab))
        print(f"\ntear down with: ovsnat lab down {lab.id}")
    elif a.cmd == "migrate":
        ids = [a.lab_id] if a.lab_id else Lab.list_ids()
        if len(ids) != 1:
            p.error(f"name the lab with --lab (labs: {' '.join(ids) or 'none'})")
        lab = Lab.load(ids[0])
        vm = lab.vms[a.vm]
        src = vm.host
        ofport = lab.move_vm(vm, a.host, overlap=a.overlap)
        print(f"moved {vm.name} from {src} to {a.host} (ofport {ofport}); it sent RARPs")
    elif a.cmd == "status":
        ids = Lab.list_ids()
        if not ids:
            print("no labs")
        for lab_id in ids:
            try:  # another process may be building or removing that lab right now
                print(describe(Lab.load(lab_id)))
            except Exception as e:
                print(f"lab {lab_id}: cannot be read right now ({type(e).__name__}: {e})")
        known = set()
        for i in ids:
            try:
                known |= set(Lab.load(i).namespaces)
            except Exception:
                known |= {ns for ns in list_lab_namespaces() if f"-{i}-" in ns}
        orphans = set(list_lab_namespaces()) - known
        if orphans:
            print(
                "orphan namespaces (remove with `ovsnat lab down --all`): "
                + " ".join(sorted(orphans))
            )
    elif a.cmd == "down":
        if a.all:
            gone = down_all()
            print("removed: " + (" ".join(gone) if gone else "nothing"))
        elif a.lab_id:
            Lab.load(a.lab_id).down()
            print(f"removed lab {a.lab_id}")
        else:
            p.error("name a lab id or pass --all")
    return 0
