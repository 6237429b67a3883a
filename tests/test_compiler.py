"""Properties of the flow compiler (ovsnat.compile.compiler), checked on compiled flows as values.

Deterministic output, every flow within its table's declaration (ovsnat.compile.pipeline), per-VM
flows that depend on nothing but the host config and that VM, cookies that name their owner,
and the shape of the FIP, PAT and gateway-by-ARP paths. Pure unit tests: no root, no OVS.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from ovsnat.cli.golden import BASE, FABRIC, NET_A, NET_B, port
from ovsnat.compile import pipeline
from ovsnat.compile import vm as vmflows
from ovsnat.compile.actions import (
    Controller,
    Ct,
    DecTtl,
    Goto,
    Load,
    Meter,
    Move,
    Nat,
    Output,
    PopVlan,
    PushVlan,
    SetField,
)
from ovsnat.compile.compiler import compile_state
from ovsnat.compile.flows import (
    COOKIE_HOST,
    COOKIE_NET,
    COOKIE_VLAN_VM,
    COOKIE_VM,
    Match,
    cookie_kind,
    cookie_owner,
    make_flow,
    owner_cookie,
)
from ovsnat.compile.host import host_flows
from ovsnat.compile.network import network_flows
from ovsnat.compile.pipeline import (
    CLASSIFY,
    CONN_COUNT,
    DELIVER,
    EGRESS,
    EW_ROUTE,
    FABRIC_IN,
    HANDOFF_IN,
    INGRESS,
    PAT_OUT,
    UPLINK_ARP,
    VM_ARP,
    VM_L2,
    VM_ROUTE,
)
from ovsnat.compile.punt_flows import (
    CLAIM_METER,
    DHCP_METER,
    PACKET_IN_METER,
    UPLINK_METER,
    quarantine_flows,
)
from ovsnat.compile.tables import TABLES, PipelineViolation, check_flow
from ovsnat.core.state import build_state
from ovsnat.model import HostConfig, VmPort
from ovsnat.model.secgroups import PortSecurity

OPTIONS = BASE  # the valid host options of the golden scenarios


def config(**overrides) -> HostConfig:
    return HostConfig.parse({**OPTIONS, **overrides})


def vm(n: int, fip: str | None = None) -> VmPort:
    ids = {
        "iface-id": f"vm{n}",
        "attached-mac": f"02:00:0a:00:00:{n:02x}",
        "ovsnat-fixed-ip": f"10.0.0.{n}",
    }
    if fip:
        ids["ovsnat-fip"] = fip
    return VmPort.from_external_ids(f"tapvm{n}", n, ids)


FIP_VM, PAT_VM = vm(10, "203.0.113.10"), vm(12)
# 50 VMs, every third with a FIP (203.0.113.100 + n, clear of the SNAT IP and gateway).
CROWD = [vm(n, f"203.0.113.{100 + n}" if n % 3 == 0 else None) for n in range(20, 70)]


def vm_flows(cfg: HostConfig, vm: VmPort, active: bool = True) -> list:
    return vmflows.vm_flows(cfg, vm, vm.net(cfg), active)


def compiled(cfg: HostConfig, ports) -> list:
    state = build_state(cfg, ports)
    assert not state.rejected, state.rejected
    return compile_state(state)


# --- determinism ------------------------------------------------------------------------------


def test_same_state_compiles_to_identical_flows_and_cookies():
    cfg = config()
    first = compiled(cfg, [FIP_VM, PAT_VM, *CROWD])
    second = compiled(config(), [FIP_VM, PAT_VM, *CROWD])
    assert first == second
    assert [f.cookie for f in first] == [f.cookie for f in second]
    assert [f.text() for f in first] == [f.text() for f in second]


def test_port_order_does_not_change_the_flows():
    ports = [FIP_VM, PAT_VM, *CROWD]
    shuffled = ports[:]
    random.Random(7).shuffle(shuffled)
    assert compiled(config(), shuffled) == compiled(config(), ports)
    assert compiled(config(), ports[::-1]) == compiled(config(), ports)


# --- the declared pipeline --------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"pat_ports_per_vm": 64}, {"external_gateway_mac": ""}])
def test_every_flow_stays_inside_its_tables_declaration(overrides):
    for flow in compiled(config(**overrides), [FIP_VM, PAT_VM, *CROWD]):
        check_flow(flow)


def test_every_declared_table_ends_in_a_priority_0_catch_all():
    flows = host_flows(config(**FABRIC, handoff_vlan=4000, conn_limit=100))
    drops = {f.table for f in flows if f.priority == 0 and f.match == Match() and not f.actions}
    # conn_count's catch-all goes on to egress: only new connections are counted; and
    # ew_route's: what is not routed east-west is routed as before.
    assert drops == {t.id for t in TABLES} - {CONN_COUNT, EW_ROUTE}
    [switched] = [f for f in flows if f.table == VM_ROUTE and f.priority == 10]
    assert switched.actions == (pipeline.TO_KEY_IP, Goto(VM_L2))  # switched in the network
    assert FABRIC_IN not in {f.table for f in host_flows(config())}  # no fabric, no table
    assert HANDOFF_IN not in {f.table for f in host_flows(config(**FABRIC))}


def test_every_dec_ttl_flow_matches_ip():
    flows = compiled(config(), [FIP_VM, PAT_VM, *CROWD])
    with_dec_ttl = [f for f in flows if DecTtl() in f.actions]
    assert with_dec_ttl and all(f.match.get("proto") == "ip" for f in with_dec_ttl)


HOST = owner_cookie(COOKIE_HOST, 0)
OFF_PIPELINE = [
    ("undeclared table", make_flow(HOST, 99, 0, Match(), [])),
    ("undeclared action", make_flow(HOST, CLASSIFY, 10, Match.of(proto="ip"), [DecTtl()])),
    (
        "undeclared match",
        make_flow(HOST, DELIVER, 10, Match.of(proto="tcp", tp_dst=80), [Output(3)]),
    ),
    ("undeclared goto", make_flow(HOST, CLASSIFY, 10, Match.of(proto="ip"), [Goto(DELIVER)])),
    ("goto backwards", make_flow(HOST, DELIVER, 10, Match.of(proto="ip"), [Goto(VM_ROUTE)])),
    (
        "undeclared ct recirculation",
        make_flow(HOST, EGRESS, 10, Match.of(proto="ip"), [Ct(zone=1, table=DELIVER)]),
    ),
    (
        "dec_ttl without ip",
        make_flow(HOST, DELIVER, 10, Match.of(nw_dst="10.0.0.5"), [DecTtl(), Output(3)]),
    ),
]


@pytest.mark.parametrize("flow", [f for _, f in OFF_PIPELINE], ids=[w for w, _ in OFF_PIPELINE])
def test_check_flow_rejects_a_flow_outside_the_declaration(flow):
    with pytest.raises(PipelineViolation):
        check_flow(flow)


# --- one VM's flows are its own ---------------------------------------------------------------


@pytest.mark.parametrize("port", [FIP_VM, PAT_VM], ids=["fip", "pat"])
@pytest.mark.parametrize("overrides", [{}, {"pat_ports_per_vm": 64}])
def test_adding_a_vm_adds_exactly_its_own_flows(port, overrides):
    cfg = config(**overrides)
    without = compiled(cfg, CROWD)
    with_vm = compiled(cfg, [*CROWD, port])
    assert Counter(with_vm) - Counter(without) == Counter(vm_flows(cfg, port))
    assert not Counter(without) - Counter(with_vm)


def test_removing_a_vm_removes_exactly_its_flows():
    cfg = config()
    everyone = compiled(cfg, [FIP_VM, PAT_VM, *CROWD])
    removed = compiled(cfg, [PAT_VM, *CROWD])
    assert Counter(everyone) - Counter(removed) == Counter(vm_flows(cfg, FIP_VM))
    mask = vmflows.vm_cookie(FIP_VM, FIP_VM.net(cfg))
    assert [f for f in everyone if f.cookie >> 24 != mask >> 24] == removed


def test_a_vms_flows_do_not_depend_on_other_vms():
    cfg = config()
    alone = compile_state(build_state(cfg, [FIP_VM]))
    crowded = compile_state(build_state(cfg, [FIP_VM, *CROWD]))
    mine = set(vm_flows(cfg, FIP_VM))
    assert [f for f in alone if f in mine] == [f for f in crowded if f in mine]
    assert len(mine) == len(vm_flows(cfg, FIP_VM))


# --- cookies ----------------------------------------------------------------------------------


def test_vm_cookies_carry_the_fixed_ip_and_host_cookies_owner_zero():
    cfg = config()
    for vm in [FIP_VM, PAT_VM, *CROWD]:
        for flow in vm_flows(cfg, vm):
            assert cookie_kind(flow.cookie) == COOKIE_VM
            assert cookie_owner(flow.cookie) == int(vm.fixed_ip)
    for flow in host_flows(cfg):
        assert (cookie_kind(flow.cookie), cookie_owner(flow.cookie)) == (COOKIE_HOST, 0)
    for flow in network_flows(cfg, cfg.default_network):
        assert (cookie_kind(flow.cookie), cookie_owner(flow.cookie)) == (COOKIE_NET, 0)


def test_vlan_networks_vm_cookies_carry_the_vlan_so_equal_fixed_ips_stay_apart():
    cfg = config(**FABRIC)
    a, b = port(11, net=NET_A, ofport=21), port(11, net=NET_B, ofport=31)
    cookies = {p.name: {f.cookie >> 24 for f in vm_flows(cfg, p)} for p in (a, b)}
    low = int(a.fixed_ip) & 0xFFFFF  # 10.1.0.11: 0x1000b
    assert cookies == {
        a.name: {(COOKIE_VLAN_VM << 32 | 101 << 20 | low)},
        b.name: {(COOKIE_VLAN_VM << 32 | 102 << 20 | low)},
    }
    assert {cookie_owner(f.cookie) for f in network_flows(cfg, a.network)} == {101}


@pytest.mark.parametrize("overrides", [{}, {"pat_ports_per_vm": 64}, {"external_gateway_mac": ""}])
def test_cookies_are_unique_within_a_hosts_flows(overrides):
    flows = compiled(config(**overrides), [FIP_VM, PAT_VM, *CROWD])
    cookies = [f.cookie for f in flows]
    assert len(set(cookies)) == len(cookies)


# --- flow counts ------------------------------------------------------------------------------
# Current numbers, counted from the compiler; flows/pipeline.md ("Flows per object") records
# the same numbers, so a change here must show up there too.


def test_flow_counts_per_object():
    cfg, cfg64, fabric = config(), config(pat_ports_per_vm=64), config(**FABRIC)
    # 17 of them are the security-group tables' (ovsnat.compile.sg_flows.host_flows)
    # 3 the east-west lookup's (ew_route: TTL 0 and 1, the miss)
    assert len(host_flows(cfg)) == 86
    assert len(host_flows(cfg64)) == 85  # no shared PAT commit: each VM has its own
    assert len(host_flows(config(external_gateway_mac=""))) == 86  # ARP punt replaces egress
    # fabric_in: 5, RARP relay: 1 (+2 drops), DHCP drop: 1, ew_in and ew_in_port drops: 2
    assert len(host_flows(fabric)) == 97
    assert len(host_flows(config(dhcp="false"))) == 84  # no DHCP punt, no uplink drop
    # metadata: the steering, the way back from the proxy, the ARP answer; two per port
    meta = config(metadata_port="ovsnat-meta", metadata_ofport=3)
    assert len(host_flows(meta)) == 86 + 3
    assert len(vm_flows(meta, PAT_VM)) == 3 + 2
    assert len(network_flows(cfg, cfg.default_network)) == 4
    assert len(network_flows(fabric, fabric.default_network)) == 7
    assert len(network_flows(fabric, port(11, net=NET_A).network)) == 8
    # Issue 17's budget for the sample config: at most 8 per FIP VM and 3 per PAT VM.
    assert len(vm_flows(cfg, FIP_VM)) == len(vm_flows(cfg64, FIP_VM)) == 8
    assert len(vm_flows(cfg, FIP_VM, active=False)) == 7  # FIP dark until activation
    assert len(vm_flows(cfg, PAT_VM)) == len(vm_flows(cfg, PAT_VM, active=False)) == 3
    assert len(vm_flows(cfg64, PAT_VM)) == 4
    # nobody on the fabric may use its MAC; routed frames from other hosts to its MAC
    assert len(vm_flows(fabric, PAT_VM)) == 5
    # A filtered port: its IP delivered through its ingress rules, a drop flow each way.
    filtered = replace(FIP_VM, security=PortSecurity(groups=("default",)))
    assert len(vm_flows(cfg, filtered)) == 8 + 3
    admin_down = replace(FIP_VM, security=PortSecurity(groups=(), admin_down=True))
    assert len(vm_flows(cfg, admin_down)) == 2  # nothing in, nothing out


# --- FIP: stateless but for fragments ---------------------------------------------------------


def test_fip_vm_uses_conntrack_only_for_fragments():
    flows = vm_flows(config(), FIP_VM)
    with_ct = [f for f in flows if any(isinstance(a, Ct) for a in f.actions)]
    assert len(with_ct) == 2  # one each way
    assert all(f.match.get("nw_frag") == "yes" for f in with_ct)
    assert {a.zone for f in with_ct for a in f.actions if isinstance(a, Ct)} == {65001}


def test_fip_vm_rewrites_addresses_both_ways():
    actions = {a for f in vm_flows(config(), FIP_VM) for a in f.actions}
    assert SetField("ip_dst", "10.0.0.10") in actions  # in: its own flow
    assert Load("reg8", 0xCB00710A) in actions  # out: its FIP...
    [out] = [
        f
        for f in host_flows(config())
        if f.table == pipeline.EGRESS and f.match.get("reg5") == pipeline.flag(pipeline.HAS_FIP)
    ]  # ...for one host flow
    assert out.actions[:3] == (
        Move("reg8", "ip_src"),
        Move("reg8", "eth_src", (0, 31)),
        Load("eth_src", 0x025A, span=(32, 47)),
    )


# --- PAT --------------------------------------------------------------------------------------


def test_pat_vm_commits_its_own_block_with_ports_per_vm():
    cfg = config(pat_ports_per_vm=64)
    commits = [a for f in vm_flows(cfg, PAT_VM) if f.table == PAT_OUT for a in f.actions]
    # 10.0.0.12 is offset 12: 20000 + 12 * 64 = 20768 ... 20768 + 63 = 20831.
    assert commits == [
        Ct(zone=65000, table=38, commit=True, nat=Nat("src", "203.0.113.11", 20768, 20831))
    ]
    assert "nat(src=203.0.113.11:20768-20831)" in commits[0].text()
    assert not [f for f in host_flows(cfg) if f.table == PAT_OUT and f.priority == 50]


def test_shared_pat_range_is_one_host_flow():
    commits = [f for f in host_flows(config()) if f.table == PAT_OUT and f.priority == 50]
    assert [f.actions for f in commits] == [
        (Ct(zone=65000, table=38, commit=True, nat=Nat("src", "203.0.113.11", 20000, 29999)),)
    ]
    assert not [f for f in vm_flows(config(), PAT_VM) if f.table == PAT_OUT]


def test_fip_vm_gets_no_pat_block():
    assert not [f for f in vm_flows(config(pat_ports_per_vm=64), FIP_VM) if f.table == PAT_OUT]


# --- gateway MAC learned by ARP ---------------------------------------------------------------


def test_unknown_gateway_mac_means_no_uplink_output_and_the_gateways_arp_is_copied_up():
    cfg = config(external_gateway_mac="")
    flows = compiled(cfg, [FIP_VM, PAT_VM])
    assert not [f for f in flows if Output(cfg.uplink_ofport) in f.actions]
    [punt] = [
        f
        for f in flows
        if any(isinstance(a, Controller) for a in f.actions)
        and f.cookie >> 56 == COOKIE_HOST
        and f.table == CLASSIFY
        and f.match.get("proto") == "arp"
    ]
    assert punt.table == CLASSIFY and punt.match.get("in_port") == str(cfg.uplink_ofport)
    assert punt.match.get("proto") == "arp" and punt.match.get("arp_spa") == "203.0.113.1"
    # A copy for the controller (only the copy metered, with the uplink's claims), then
    # normal processing.
    assert punt.actions == (Controller(meter=CLAIM_METER), Goto(UPLINK_ARP))


def test_known_gateway_mac_means_uplink_output_and_no_punt():
    cfg = config()
    flows = compiled(cfg, [FIP_VM, PAT_VM])
    [out] = [f for f in flows if Output(cfg.uplink_ofport) in f.actions]
    assert SetField("eth_dst", "02:00:00:00:00:fe") in out.actions
    # The only packet-ins, all metered: ARP claiming the active FIP from elsewhere, ICMP
    # errors to or from the FIP VM (their quoted header needs translating), DHCP requests.
    punts = [f for f in flows if any(isinstance(a, Controller) for a in f.actions)]

    def meter(f):  # each source its own meter: the uplink's never starve the VMs'
        if f.table == UPLINK_ARP:
            return CLAIM_METER
        if f.match.get("tp_dst") == "67":
            return DHCP_METER
        return UPLINK_METER if f.table in (INGRESS, DELIVER) else PACKET_IN_METER

    assert all(f.actions[0] == Meter(meter(f)) for f in punts)
    assert len([f for f in punts if f.match.get("tp_dst") == "67"]) == 1
    watches = sorted(f.match.get("arp_spa") for f in punts if f.table == UPLINK_ARP)
    assert watches == ["203.0.113.10", "203.0.113.11"]  # the FIP and the SNAT IP
    errors = [f for f in punts if f.match.get("proto") == "icmp"]
    assert sorted(f.match.get("icmp_type") for f in errors) == [
        "11",
        "11",
        "11",
        "12",
        "12",
        "12",
        "3",
        "3",
        "3",
    ]
    # ICMP-error punts are host-level: any FIP-translated error (the FIP flag in reg5), and
    # the first fragment of an error arriving in pieces.
    assert all(f.cookie >> 56 == COOKIE_HOST for f in errors)
    assert {f.match.get("reg5") or f.match.get("nw_frag") for f in errors} == {"0x2/0x2", "first"}
    ttl = [f for f in punts if f.match.get("nw_ttl") == "1"]
    assert sorted(f.table for f in ttl) == [EGRESS, INGRESS]  # time exceeded, both ways


# --- networks ----------------------------------------------------------------------------------


def test_a_networks_flows_exist_while_it_has_a_vm_here():
    cfg = config(**FABRIC)
    a1, a2 = port(11, net=NET_A, ofport=21), port(12, net=NET_A, ofport=22)
    mine = set(network_flows(cfg, a1.network))
    assert mine <= set(compiled(cfg, [a1])) and mine <= set(compiled(cfg, [a1, a2]))
    assert not mine & set(compiled(cfg, [PAT_VM]))


def test_fabric_output_is_tagged_with_the_networks_vlan_and_comes_last():
    cfg = config(**FABRIC)
    a = port(11, net=NET_A, ofport=21)
    to_fabric = [
        f
        for f in compiled(cfg, [a])
        if Output(cfg.fabric_ofport) in f.actions and f.match.get("reg6") != "0"
    ]
    assert to_fabric
    for f in to_fabric:
        i = f.actions.index(Output(cfg.fabric_ofport))
        assert f.actions[i - 1] == PushVlan(101) and f.match.get("reg6") == "0x65"
        assert f.actions[i + 1 : i + 2] in ((), (PopVlan(),))  # the tag goes again
    default_out = [f for f in compiled(cfg, [PAT_VM]) if Output(cfg.fabric_ofport) in f.actions]
    assert default_out and not [
        f for f in default_out if any(isinstance(x, PushVlan) for x in f.actions)
    ]


def test_routed_traffic_never_goes_to_the_fabric():
    cfg = config(**FABRIC)
    flows = compiled(cfg, [port(11, net=NET_A, ofport=21), FIP_VM])
    [routed] = [f for f in flows if f.table == DELIVER and f.priority == 100]
    assert Load("reg5", 1, pipeline.ROUTED) in routed.actions
    for f in flows:
        if f.table == VM_L2 and Output(cfg.fabric_ofport) in f.actions:
            assert f.match.get("reg5") == "0/0x8"  # only when not routed
        if f.table == VM_ARP and Output(cfg.fabric_ofport) in f.actions:
            assert f.match.get("reg5") == "0/0x4"  # not back to the fabric


# --- every packet-in is metered ---------------------------------------------------------------
def _metered(f) -> bool:
    """A flow's packet-ins go through a meter: a meter instruction, or a controller action
    with a meter of its own (a copy whose frame goes on)."""
    controllers = [a for a in f.actions if isinstance(a, Controller)]
    return all(a.meter is not None for a in controllers) or Meter in map(type, f.actions)


@pytest.mark.parametrize("copies", ["all", "arp", "none"])
@pytest.mark.parametrize("overrides", [{}, FABRIC, {"external_gateway_mac": ""}])
def test_every_packet_in_path_is_metered_pending_fips_and_the_gateways_arp_included(
    overrides, copies
):
    cfg = config(**overrides)
    flows = host_flows(cfg) + vmflows.vm_flows(
        cfg, FIP_VM, FIP_VM.net(cfg), active=False, copies=copies
    )
    punts = [f for f in flows if any(isinstance(a, Controller) for a in f.actions)]
    assert punts and all(_metered(f) for f in punts), [f.text() for f in punts if not _metered(f)]


def test_a_dark_fip_copies_what_can_still_prove_its_vm_and_nothing_once_heard():
    cfg = config()

    def copying(copies):
        flows = vmflows.vm_flows(cfg, FIP_VM, FIP_VM.net(cfg), active=False, copies=copies)
        return sorted(
            f.match.get("proto") or "any"
            for f in flows
            if any(isinstance(a, Controller) for a in f.actions) and f.table == CLASSIFY
        )

    assert copying("all") == ["any", "arp", "ip"]
    assert copying("arp") == ["any", "arp"]  # yielded: back on a RARP or GARP only
    assert copying("none") == []


@pytest.mark.parametrize("kind", ["dhcp", "presence", "rarp", "ttl", "icmp"])
def test_quarantine_flows_drop_only_that_port_and_fit_the_pipeline(kind):
    flows = quarantine_flows(kind, 7)
    assert flows and all(f.match.get("in_port") == "7" and f.actions == () for f in flows)
    for f in flows:
        check_flow(f)


def test_a_vlan_vms_own_pat_block_commits_below_the_handoff_and_above_its_network():
    """net_pat_out: a session that began on another host (the handoff's flow) must win over
    the VM's own block commit, which must win over its network's; equal priorities with
    overlapping matches leave the choice to OVS."""
    cfg = config(**FABRIC, handoff_vlan=4000, pat_ports_per_vm=64)
    vlan_vm = port(11, net=NET_A, ofport=21)
    commits = {
        name: {f.priority for f in flows if f.table == pipeline.NET_PAT_OUT and f.actions}
        for name, flows in (
            ("handoff", host_flows(cfg)),
            ("network", network_flows(cfg, vlan_vm.net(cfg))),
            ("vm", vmflows.vm_flows(cfg, vlan_vm, vlan_vm.net(cfg))),
        )
    }
    [handoff] = commits["handoff"] - {100}  # 100: established and related go on
    [network], [own] = commits["network"], commits["vm"]
    assert network < own < handoff
