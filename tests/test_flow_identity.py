"""Flow identity as Open vSwitch has it (ovsnat/compile/flowident.py), event by event against the
model switch, which keeps one flow per (table, priority, match) as OVS does: two owners that
want one flow leave exactly one on the switch, the one of the owner that sorts first, and
the controller's view stays the switch's; a digest collision inside one owner loses no flow
and gives the same cookies after a restart. tests/test_flow_identity_lab.py shows the first
case on a real switch."""

from __future__ import annotations

import logging

import pytest

from ovsnat.cli.golden import NET_A, NET_B
from ovsnat.compile import flows
from ovsnat.compile.actions import Output
from ovsnat.compile.pipeline import CLASSIFY, HANDOFF_IN
from ovsnat.model.rows import IfaceRow
from ovsnat.openflow import codec, messages
from tests.hostsim import SimHost, vm_row
from tests.switchmodel import ModelSwitch, flow_identity, flow_key

TWIN_MAC, TWIN_IP = "02:00:0a:01:00:07", "10.1.0.7"
FABRIC = IfaceRow("fabric", 2, {}, "up")


def twin(name: str, ofport: int, net: dict) -> IfaceRow:
    """A PAT VM of a VLAN network; the twins of tenant-a and tenant-b have one MAC and one
    fixed IP (allowed: addresses are claimed per network)."""
    return IfaceRow(
        name,
        ofport,
        {"iface-id": name, "attached-mac": TWIN_MAC, "ovsnat-fixed-ip": TWIN_IP, **net},
        "up",
    )


def handoff_host(switch: ModelSwitch | None = None) -> SimHost:
    h = SimHost(switch, fabric_port="fabric", handoff_vlan="4000", handoff_grace="30")
    h.rows["fabric"] = FABRIC
    return h.start()


def arrival_flows(h: SimHost) -> dict:
    """The switch's handoff_in flows for the twins' address: (table, priority, match) ->
    the owner bits of the cookie that holds it."""
    dl_dst = b"\x80\x00\x06\x06" + bytes.fromhex(TWIN_MAC.replace(":", ""))
    return {
        i: flow_key(m)[1] >> 24
        for i, m in h.switch.with_identity(HANDOFF_IN, 100).items()
        if dl_dst in i[2]
    }


def owner_bits(h: SimHost, name: str) -> int:
    return h.ctl.host.owner_keys(name)[0][1] >> 24


def in_step(h: SimHost) -> bool:
    """The controller believes what the switch holds, and desires it."""
    return h.switch.flow_keys() == h.ctl.sw.session.installed == h.ctl.host.all_keys()


@pytest.mark.parametrize("order", [("tap-a", "tap-b"), ("tap-b", "tap-a")])
def test_two_owners_with_one_match_leave_one_flow_the_first_owners(order, caplog):
    """Two PAT VMs in their arrival grace (handoff), in two VLAN networks with one MAC and
    one fixed IP: both compile handoff_in priority 100 ip,dl_dst=MAC,nw_dst=IP (the handoff
    VLAN carries no network). Whatever the order they come in, tap-a keeps it."""
    h = handoff_host()
    rows = {"tap-a": twin("tap-a", 10, NET_A), "tap-b": twin("tap-b", 11, NET_B)}
    with caplog.at_level(logging.ERROR, logger="ovsnat"):
        for name in order:
            h.plug(rows[name])
    assert list(arrival_flows(h).values()) == [owner_bits(h, "tap-a")]
    assert in_step(h)
    [left_out] = h.ctl.status(h.now)["duplicate_flows"]
    assert left_out["owner"] == "port tap-b" and left_out["kept_by"] == "port tap-a"
    assert left_out["flow"] == f"table=25, priority=100,ip,dl_dst={TWIN_MAC},nw_dst={TWIN_IP}"
    [line] = [r.getMessage() for r in caplog.records if "both want" in r.getMessage()]
    assert "port tap-a and port tap-b" in line or "port tap-b and port tap-a" in line
    assert left_out["flow"] in line and "port tap-b's is left out" in line

    h.unplug("tap-a")  # the winner leaves: the other's flow goes in
    assert list(arrival_flows(h).values()) == [owner_bits(h, "tap-b")]
    assert in_step(h) and h.ctl.status(h.now)["duplicate_flows"] == []


@pytest.fixture
def shared(monkeypatch):
    """Every VM also compiles one flow that is the same for all (a made-up case: in the
    compiler only handoff states make one, and a restart forgets those)."""
    from ovsnat.core import state

    real = state.vm_flows

    def with_shared(cfg, vm, net, **kw):
        out = real(cfg, vm, net, **kw)
        return out + [flows.make_flow(out[0].owner_cookie, 70, 5, flows.Match.of(reg7="0x1"), [])]

    monkeypatch.setattr(state, "vm_flows", with_shared)


def test_owners_that_come_and_go_leave_the_flow_to_the_first_one_left(shared):
    h = SimHost().start()
    h.plug(vm_row(7), vm_row(5), vm_row(6))
    [shared_flow] = h.switch.with_identity(70, 5).values()
    assert flow_key(shared_flow)[1] >> 24 == owner_bits(h, "tapvm5") and in_step(h)
    assert len(h.ctl.status(h.now)["duplicate_flows"]) == 2
    h.unplug("tapvm5")
    [shared_flow] = h.switch.with_identity(70, 5).values()
    assert flow_key(shared_flow)[1] >> 24 == owner_bits(h, "tapvm6") and in_step(h)
    h.plug(vm_row(5))
    [shared_flow] = h.switch.with_identity(70, 5).values()
    assert flow_key(shared_flow)[1] >> 24 == owner_bits(h, "tapvm5") and in_step(h)


def test_a_restart_with_flows_left_out_sends_nothing(shared):
    h = SimHost()
    h.rows.update({r.name: r for r in (vm_row(5), vm_row(6), vm_row(7))})
    h.start()
    again = SimHost(h.switch)
    again.rows = dict(h.rows)
    mods = h.switch.flow_mods
    again.start()
    assert h.switch.flow_mods == mods and in_step(again)


@pytest.fixture
def colliding(monkeypatch):
    """VM 5's two classify flows (IP and ARP, one table) get one digest, so one cookie."""
    real = flows.body_digest

    def digest(body: str, salt: int = 0) -> int:
        if not salt and "in_port=5," in body:
            return 0x5A5A5A
        return real(body, salt)

    monkeypatch.setattr(flows, "body_digest", digest)


def vm5_identities(h: SimHost) -> set:
    """(table, priority, match) of every flow VM 5 should have, as the switch keys them."""
    return {flow_identity(messages.flow_add(f, 0)) for f in h.ctl.host._compile("tapvm5")}


@pytest.mark.parametrize("plugged", ["before the switch connects", "later"])
def test_a_digest_collision_inside_one_owner_loses_no_flow(colliding, plugged, caplog):
    h = SimHost()
    if plugged == "later":
        h.start()
        with caplog.at_level(logging.INFO, logger="ovsnat"):
            h.plug(vm_row(5))
    else:
        h.rows["tapvm5"] = vm_row(5)
        with caplog.at_level(logging.INFO, logger="ovsnat"):
            h.start()
    classify = [i for i in h.switch.with_identity(CLASSIFY, 100) if i in vm5_identities(h)]
    assert len(classify) == 2  # the IP and the ARP flow
    assert vm5_identities(h) <= set(h.switch.entries)  # and every other flow of VM 5
    assert in_step(h)
    recompiled = h.ctl.host.owner_flows("tapvm5")  # (what errors and resyncs read)
    assert sorted((f.table, f.cookie) for f in recompiled) == sorted(
        h.ctl.host.owner_keys("tapvm5")
    )
    assert "is taken by another of its flows (digest collision)" in caplog.text


def test_a_digest_collision_gives_the_same_cookies_after_a_restart(colliding):
    h = SimHost()
    h.rows["tapvm5"] = vm_row(5)
    h.start()
    again = SimHost(h.switch)
    again.rows = dict(h.rows)
    mods = h.switch.flow_mods
    again.start()
    assert h.switch.flow_mods == mods and in_step(again)


def test_two_flows_of_one_owner_with_one_match_keep_the_first_and_say_so(monkeypatch, caplog):
    """A compiler bug: VM 5 would emit its L2 delivery flow twice, with other actions."""
    from ovsnat.core import state

    real = state.vm_flows

    def doubled(cfg, vm, net, **kw):
        out = real(cfg, vm, net, **kw)
        l2 = next(f for f in out if f.table == 70)
        return out + [flows.make_flow(l2.owner_cookie, 70, l2.priority, l2.match, [])]

    monkeypatch.setattr(state, "vm_flows", doubled)
    h = SimHost().start()
    with caplog.at_level(logging.ERROR, logger="ovsnat"):
        h.plug(vm_row(5))
        h.plug(vm_row(6))
    vm5 = {i: m for i, m in h.switch.with_identity(70, 100).items() if i in vm5_identities(h)}
    [msg] = vm5.values()
    l2 = [f for f in h.ctl.host._compile("tapvm5") if f.table == 70]
    first = min(l2, key=lambda f: f.body())  # the drop: "actions=drop" < "set_..."
    assert len(l2) == 2 and msg[8:] == messages.flow_add(first, 0)[8:]
    assert in_step(h)
    assert caplog.text.count("compiles two flows table=70, priority=100") == 2  # 5 and 6
    assert {d["owner"] for d in h.ctl.status(h.now)["duplicate_flows"]} == {
        "port tapvm5",
        "port tapvm6",
    }


def test_a_port_named_host_keeps_the_host_level_flows():
    h = SimHost().start()
    host_level = {k for k in h.switch.flow_keys() if k[1] >> 56 == flows.COOKIE_HOST}
    h.plug(IfaceRow("host", 5, vm_row(5).external_ids, "up"))
    assert host_level <= h.switch.flow_keys() and in_step(h)
    assert h.ctl.host.accepted_port("host") is not None


def test_a_flow_dump_in_many_parts_is_read_whole():
    """OVS splits a long dump into replies flagged OFPMPF_REPLY_MORE; here every reply
    holds one flow. A restart that read only the first part would resend everything."""
    h = SimHost(ModelSwitch(stats_part=1))
    h.rows.update({r.name: r for r in (vm_row(5, "203.0.113.50"), vm_row(6))})
    h.start()
    again = SimHost(h.switch, fip_activation="immediate")
    again.rows = dict(h.rows)
    mods = h.switch.flow_mods
    again.start()
    assert h.switch.flow_mods == mods and in_step(again)
    again.advance(61)  # an audit reads it whole too
    assert again.ctl.stats.counts["audits"] == 1
    assert again.ctl.stats.counts["flow_repairs"] == 0


def test_the_model_switch_keeps_flows_as_ovs_does():
    """An add with a flow's (table, priority, match) replaces it, cookie and all; a delete
    by (table, cookie) removes every flow of the table with that cookie; a dump comes in
    parts."""
    sw = ModelSwitch(stats_part=2)
    a = flows.make_flow(0xA2 << 56 | 1 << 24, 70, 100, flows.Match.of(reg7="0x5"), [])
    b = flows.make_flow(0xA2 << 56 | 2 << 24, 70, 100, flows.Match.of(reg7="0x5"), [Output(5)])
    c = flows.Flow(70, 90, flows.Match.of(reg7="0x5"), (), 0, b.cookie)
    sw.install(messages.flow_add(a, 0))
    sw.install(messages.flow_add(b, 0))
    assert sw.flow_keys() == {(70, b.cookie)}
    sw.install(messages.flow_add(c, 0))
    assert len(sw.entries) == 2 and sw.flow_keys() == {(70, b.cookie)}
    sw.install(messages.flow_add(a, 0))
    replies = sw.receive(messages.flow_stats_request(9, 0xA2 << 56, 0xFF << 56))
    assert [(len(r.args[0]), r.args[1]) for r in replies] == [(2, False)]
    sw.stats_part = 1
    replies = sw.receive(messages.flow_stats_request(9, 0xA2 << 56, 0xFF << 56))
    assert [(len(r.args[0]), r.args[1]) for r in replies] == [(1, True), (1, False)]
    sw.receive(
        messages.bundle_ctrl(1, codec.BUNDLE_OPEN, 1)
        + messages.bundle_add(1, messages.flow_delete(70, b.cookie, 2))
        + messages.bundle_ctrl(1, codec.BUNDLE_COMMIT, 3)
    )
    assert sw.flow_keys() == {(70, a.cookie)}


def test_a_port_that_changes_address_leaves_no_name_on_its_old_cookies():
    h = SimHost().start()
    h.plug(vm_row(5))
    old = owner_bits(h, "tapvm5")
    h.plug(vm_row(5, **{"ovsnat-fixed-ip": "10.0.0.9"}))
    assert owner_bits(h, "tapvm5") != old and old not in h.ctl.host.owner_names
    assert h.ctl.host.owner_names[owner_bits(h, "tapvm5")] == "tapvm5" and in_step(h)


@pytest.fixture
def uplink_arp_collision(monkeypatch):
    """Every flow of the VM with FIP 203.0.113.50 in uplink_arp gets one digest: live, its
    ARP responder and its claim watcher; dark, the claim and probe watchers, whose plain
    key is then the one the responder would have."""
    real = flows.body_digest
    monkeypatch.setattr(
        flows,
        "body_digest",
        lambda body, salt=0: (
            0x0F1F2F
            if not salt and "table=15" in body and "203.0.113.50" in body
            else real(body, salt)
        ),
    )


def test_a_live_fips_responder_keeps_its_key_through_a_collision(uplink_arp_collision):
    """A restarted controller keeps a FIP live when its responder's key is on the switch."""
    fip = "203.0.113.50"
    h = SimHost(fip_activation="immediate")
    h.rows["tapvm5"] = vm_row(5, fip)
    h.start()
    assert h.fip_live(fip) and in_step(h)
    again = SimHost(h.switch)
    again.rows = dict(h.rows)
    mods = h.switch.flow_mods
    again.start()
    assert again.fip_live(fip) and h.switch.flow_mods == mods and in_step(again)


def test_a_dark_fips_flows_never_take_its_responders_key(uplink_arp_collision):
    """...and only then: the dark FIP's watchers, whose digests are the responder's, get
    other keys (the state a restart sees is the switch's keys)."""
    from ovsnat.cli.golden import BASE, port
    from ovsnat.core.state import HostState
    from ovsnat.model import HostConfig

    host = HostState(HostConfig.parse(BASE))  # probe: dark until proven
    vm = port(5, "203.0.113.50")
    host.update(vm.name, vm)
    dark = set(host.owner_keys(vm.name))
    assert host.adopt_installed(dark) == [] and host.is_pending(vm.name)
    assert len({k for k in dark if k[0] == 15}) == 2  # both watchers, apart
    host.activate(vm.name)
    live = set(host.owner_keys(vm.name))
    host.yield_fip(vm.name)
    assert host.adopt_installed(live) == [vm.name]
