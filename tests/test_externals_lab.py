"""Several external networks with real packets (docs/routers.md, issue 26 item 3): each
router's networks leave through its own gateway network's VLAN on the uplink, from this
host's own SNAT address there, and its FIPs answer ARP only in that VLAN; a router whose
gateway network has no key here gets no PAT and no FIP. The keys are written as the
contract says (any tool may; ovsnat-neutron-agent does under Neutron).

Lab: hv1 on the fabric. tenant-a (VLAN 101) on router r1, gateway `public` (the options'
untagged network, 203.0.113.0/24): a1 (PAT), a2 (FIP 203.0.113.42). tenant-b (VLAN 102)
on router r2, gateway `pub2`: VLAN 200 on the uplink, 198.51.100.128/25, its gateway the
outside router's eth200 (198.51.100.129), this host's SNAT address 198.51.100.140: b1
(PAT), b2 (FIP 198.51.100.142). The outside router filters by reverse path (strict), so a
packet from one network's addresses is accepted only on that network's own interface.
"""

from __future__ import annotations

import json

import pytest

from ovsnat.lab import outside, scenario
from ovsnat.lab.fabric import TENANT_A, TENANT_B
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import ping, start_server, tcp_connect

pytestmark = pytest.mark.lab

SNAT, SNAT2 = "203.0.113.11", "198.51.100.140"
FIP_A2, FIP_B2 = "203.0.113.42", "198.51.100.142"
PUB2_CIDR, PUB2_GW, PUB2_VLAN = "198.51.100.128/25", "198.51.100.129", 200
PUB2_DEV = f"eth{PUB2_VLAN}"  # the outside router's interface in VLAN 200 (ovsnat.lab.outside)
VMS = {  # name: (ip, mac, network, extra external_ids)
    "a1": ("10.1.0.11", "02:00:0a:01:00:0b", TENANT_A, {}),
    "a2": ("10.1.0.12", "02:00:0a:01:00:0c", TENANT_A, {"ovsnat-fip": FIP_A2}),
    "b1": ("10.1.0.11", "02:00:0a:02:00:0b", TENANT_B, {}),
    "b2": ("10.1.0.12", "02:00:0a:02:00:0c", TENANT_B, {"ovsnat-fip": FIP_B2}),
}
KEYS = {
    "ovsnat-net-tenant-a": "router=r1",
    "ovsnat-net-tenant-b": "router=r2",
    "ovsnat-router-r1": "ext=public;snat=on",
    "ovsnat-router-r2": "ext=pub2;snat=on",
    "ovsnat-ext-public": f"vlan=-;cidr=203.0.113.0/24;gw=203.0.113.1;snat={SNAT}",
    "ovsnat-ext-pub2": f"vlan={PUB2_VLAN};cidr={PUB2_CIDR};gw={PUB2_GW};snat={SNAT2}",
}
CONVERGE = 15.0  # a deadline for set-up, not a measurement


@pytest.fixture(scope="module")
def xlab(module_lab):
    lab = module_lab
    out, srv = lab.out_ns, lab.srv_ns
    dev = outside.add_external_vlan(lab, PUB2_VLAN, f"{PUB2_GW}/25")  # the outside router's
    for conf in ("all", "default", "eth0", dev):
        run(["sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=1"], ns=out)
    lab.add_host("hv1", fabric=True)
    set_keys(lab, KEYS)  # before the ports: a Neutron port is never seen without them
    for name, (ip, mac, net, extra) in VMS.items():
        lab.add_vm(name, "hv1", ip, mac, {"ovsnat-fixed-ip": ip, **extra}, net=net)
    scenario.start_controller(lab, "hv1", SNAT, fabric_port="fabric")
    scenario.wait_in_sync(lab, "hv1")
    start_server(lab, "srv-tcp", srv, "tcp", 8080)
    for name in VMS:
        start_server(lab, f"{name}-tcp", lab.vms[name].ns, "tcp", 7000)
    return lab


@pytest.fixture
def both(xlab):
    set_keys(xlab, KEYS)
    for vm, want in (("a1", SNAT), ("b1", SNAT2)):
        wait_for(lambda vm=vm, w=want: seen_as(xlab, vm) == w, CONVERGE, what=f"{vm} as {want}")
    for fip in (FIP_A2, FIP_B2):
        wait_for(lambda fip=fip: reaches(xlab, fip), CONVERGE, what=f"{fip} from outside")
    return xlab


def set_keys(lab, keys: dict[str, str]) -> None:
    lab.hosts["hv1"].vsctl(
        "set", "Bridge", "br-int", *[f'external_ids:{k}="{v}"' for k, v in keys.items()]
    )


def seen_as(lab, vm: str) -> str | None:
    reply = tcp_connect(lab, lab.vms[vm].ns, SERVER_IP, 8080, timeout=1)
    return reply.peer_ip if reply.ok else None


def reaches(lab, fip: str) -> bool:
    return tcp_connect(lab, lab.srv_ns, fip, 7000, timeout=1).ok


def neighbour(lab, ip: str, dev: str) -> str:
    return run(["ip", "-n", lab.out_ns, "neigh", "show", ip, "dev", dev]).stdout


def test_each_router_leaves_through_its_own_external_network(both):
    lab = both
    # PAT from each network's own SNAT address, FIPs both ways: the outside router's strict
    # reverse-path filter proves each arrived in its own VLAN.
    assert seen_as(lab, "a1") == SNAT and seen_as(lab, "b1") == SNAT2
    assert seen_as(lab, "a2") == FIP_A2 and seen_as(lab, "b2") == FIP_B2
    assert "lladdr" in neighbour(lab, SNAT2, PUB2_DEV)
    assert "lladdr" in neighbour(lab, FIP_B2, PUB2_DEV)
    # A packet whose TTL ends at the host is answered from the FIP, back in its VLAN.
    for fip in (FIP_B2, FIP_A2):
        argv = ["ping", "-n", "-c", "1", "-W", "2", "-t", "2", fip]
        expired = run(argv, ns=lab.srv_ns, check=False).stdout
        assert f"From {fip}" in expired and "Time to live exceeded" in expired, expired
    gw_mac = run(["ip", "-n", lab.out_ns, "-j", "link", "show", PUB2_DEV]).stdout
    gw_mac = json.loads(gw_mac)[0]["address"]

    def learned():  # the status file is rewritten once a second
        r = scenario.status(lab, "hv1").get("routing", {})
        return r if r.get("externals", {}).get("pub2", {}).get("gateway_mac") else None

    routing = wait_for(learned, 5, what="pub2's gateway MAC in the status file")
    pub2 = routing["externals"]["pub2"]
    assert pub2 == {
        "vlan": PUB2_VLAN,
        "cidr": PUB2_CIDR,
        "gateway": PUB2_GW,
        "gateway_mac": gw_mac,
        "snat": SNAT2,
    }, routing
    assert routing["externals"]["public"]["snat"] == SNAT and not routing["problems"]
    diff = scenario.cli(lab, "hv1", "diff")
    assert diff.returncode == 0, diff.stdout
    text = scenario.cli(lab, "hv1", "status").stdout  # the operator's view says the same
    line = next(line for line in text.splitlines() if line.strip().startswith("pub2 "))
    assert f"VLAN {PUB2_VLAN}" in line and f"SNAT {SNAT2}" in line and gw_mac in line, text


def test_a_fip_answers_arp_only_in_its_own_vlan(both):
    """The outside router asks for each FIP in the other network's segment (a host route
    on the wrong interface): no answer, while the same FIP answers in its own."""
    lab, out = both, both.out_ns
    wrong = {FIP_B2: "eth0", FIP_A2: PUB2_DEV}
    try:
        for fip, dev in wrong.items():
            run(["ip", "-n", out, "route", "add", f"{fip}/32", "dev", dev])
            assert ping(out, fip, count=2, wait=0.5).received == 0
            assert "lladdr" not in neighbour(lab, fip, dev), neighbour(lab, fip, dev)
    finally:
        for fip, dev in wrong.items():
            run(["ip", "-n", out, "route", "del", f"{fip}/32", "dev", dev], check=False)
    for fip in wrong:  # the positive control: answered in its own segment
        assert ping(out, fip, count=2, wait=1).received == 2


def test_a_router_whose_gateway_network_has_no_key_gets_no_pat_or_fip(both):
    lab = both
    set_keys(lab, {**KEYS, "ovsnat-router-r2": "ext=pub9;snat=on"})
    wait_for(lambda: seen_as(lab, "b1") is None, 5, what="b1's PAT gone")
    assert not reaches(lab, FIP_B2)
    assert seen_as(lab, "a1") == SNAT and reaches(lab, FIP_A2)  # the positive control
    routing = wait_for(
        lambda: (r := scenario.status(lab, "hv1").get("routing", {})).get("problems") and r,
        5,
        what="the problem in the status file",
    )
    assert any("ovsnat-ext-pub9" in p for p in routing["problems"]), routing
    assert routing["inert_fips"]["tapb2"]["fips"] == [FIP_B2], routing
