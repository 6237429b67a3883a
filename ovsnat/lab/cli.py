"""`ovsnat lab up|status|down`: the reference lab from the command line."""

from __future__ import annotations

import argparse

from ovsnat.lab.topology import Lab, down_all, list_lab_namespaces

# The default lab: two hypervisors, VMs with and without floating IPs (the contract's
# external_ids are set on each Interface row, as nova/os-vif would).
DEFAULT_VMS = [
    # name, host, fixed ip, mac, fip
    ("vm1", "hv1", "10.0.0.11", "02:00:0a:00:00:0b", "203.0.113.10"),
    ("vm2", "hv1", "10.0.0.12", "02:00:0a:00:00:0c", None),
    ("vm3", "hv2", "10.0.0.13", "02:00:0a:00:00:0d", "203.0.113.12"),
    ("vm4", "hv2", "10.0.0.14", "02:00:0a:00:00:0e", None),
]


def contract_ids(ip: str, fip: str | None) -> dict[str, str]:
    ids = {"ovsnat-fixed-ip": ip}
    if fip:
        ids["ovsnat-fip"] = fip
    return ids


def build_default(lab: Lab, hosts: int = 2) -> Lab:
    lab.up()
    for i in range(1, hosts + 1):
        lab.add_host(f"hv{i}")
    for name, host, ip, mac, fip in DEFAULT_VMS:
        if host in lab.hosts:
            lab.add_vm(name, host, ip, mac, contract_ids(ip, fip))
    return lab


def describe(lab: Lab) -> str:
    lines = [f"lab {lab.id}  (state {lab.dir})",
             f"  outside: router 203.0.113.1 in {lab.out_ns}, server 198.51.100.10 in "
             f"{lab.srv_ns}, external segment in {lab.ext_ns}"]
    for host in lab.hosts.values():
        alive = "running" if host.ovs.alive() else "DOWN"
        lines.append(f"  {host.name}: netns {host.ns}, ovs-vswitchd {alive}, rundir {host.rundir}")
        lines.append(f"      inspect: OVS_RUNDIR={host.rundir} ovs-ofctl -O OpenFlow13 "
                     f"dump-flows br-int")
        for vm in lab.vms.values():
            if vm.host == host.name:
                ids = host.vsctl("--if-exists", "get", "Interface", vm.tap,
                                 "external_ids").strip()
                lines.append(f"      {vm.name}: {vm.ip} {vm.mac} port {vm.tap} {ids}")
    for name, info in lab.procs.items():
        lines.append(f"  process {name}: pid {info['pid']} log {info['log']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ovsnat lab", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the default lab and leave it running")
    up.add_argument("--hosts", type=int, default=2)
    sub.add_parser("status", help="show every lab on this machine")
    down = sub.add_parser("down", help="remove a lab (or all) and everything it started")
    down.add_argument("lab_id", nargs="?")
    down.add_argument("--all", action="store_true")
    a = p.parse_args(argv)

    if a.cmd == "up":
        lab = Lab()
        try:
            build_default(lab, a.hosts)
        except BaseException:
            lab.down()
            raise
        print(describe(lab))
        print(f"\ntear down with: ovsnat lab down {lab.id}")
    elif a.cmd == "status":
        ids = Lab.list_ids()
        if not ids:
            print("no labs")
        for lab_id in ids:
            print(describe(Lab.load(lab_id)))
        orphans = set(list_lab_namespaces()) - {ns for i in ids for ns in Lab.load(i).namespaces}
        if orphans:
            print("orphan namespaces (remove with `ovsnat lab down --all`): "
                  + " ".join(sorted(orphans)))
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
