"""The periodic audit (ovsnat/core/audit.py), event by event against the model switch: drift made
behind the controller's back is repaired within one audit period, in-flight changes are never
"repaired", foreign flows are never touched. The lab test (test_audit_lab.py) does the same
to a real Open vSwitch with ovs-ofctl and checks traffic."""

from __future__ import annotations

import logging
import struct

from ovsnat.core.audit import KEY, STALLED
from ovsnat.openflow import blobs, codec
from ovsnat.openflow.digest import flow_mod_digest
from tests.hostsim import SimHost, vm_row

FIP = "203.0.113.10"
PERIOD = 60.0
FOREIGN_COOKIE = 0x1234  # another controller's flow: a cookie kind not ovsnat's


def synced_host() -> SimHost:
    host = SimHost(fip_activation="immediate")
    host.rows.update({r.name: r for r in (vm_row(11, FIP), vm_row(12))})
    host.start()
    assert host.switch.flow_keys() == host.desired_keys()
    return host


def vm_key(host: SimHost, n: int, index: int = 0) -> tuple[int, int]:
    """One of VM 10.0.0.n's flows on the switch."""
    return sorted(k for k in host.switch.flow_keys() if k[1] >> 24 == 0xA20A000000 | n)[index]


def changed_in_place(msg: bytes) -> bytes:
    """The same flow_mod (table, cookie, priority, match) with other instructions: a drop,
    as `ovs-ofctl mod-flows ... actions=drop` leaves it."""
    match_len = struct.unpack_from("!H", msg, 50)[0]
    head = msg[: 48 + (match_len + 7) // 8 * 8]
    return head[:2] + struct.pack("!H", len(head)) + head[4:]


def variant(msg: bytes, cookie: int, priority: int) -> bytes:
    """The flow_mod with another cookie and priority: a flow of its own on the switch."""
    return msg[:8] + struct.pack("!Q", cookie) + msg[16:30] + struct.pack("!H", priority) + msg[32:]


def held(host: SimHost) -> dict:
    """The switch's flows, each as its flow_mod without the xid."""
    return {k: m[8:] for k, m in host.switch.held().items()}


def stats(host: SimHost) -> dict:
    return host.ctl.status(host.now)["stats"]


def test_a_deleted_a_changed_and_a_stale_flow_are_repaired_within_one_period(caplog):
    host = synced_host()
    desired = held(host)
    gone, changed = vm_key(host, 11), vm_key(host, 12, 1)
    stale = (gone[0], gone[1] ^ 0x1)  # ovsnat's kind, nobody's flow
    foreign = (gone[0], FOREIGN_COOKIE)
    gone_msg = host.switch.flow(gone)
    host.switch.remove(gone)
    host.switch.install(changed_in_place(host.switch.flow(changed)))
    host.switch.install(variant(gone_msg, stale[1], 1))
    host.switch.install(variant(gone_msg, foreign[1], 2))
    with caplog.at_level(logging.WARNING, logger="ovsnat"):
        host.advance(PERIOD + 0.1)
    assert {k: v for k, v in held(host).items() if k != foreign} == desired
    assert held(host)[foreign] == variant(gone_msg, foreign[1], 2)[8:]  # never touched
    assert stats(host)["audits"] == 1 and stats(host)["flow_repairs"] == 3
    lines = [r.getMessage() for r in caplog.records if "audit: " in r.getMessage()]
    for kind, key in (("missing", gone), ("changed", changed), ("stale", stale)):
        assert any(
            line.startswith(f"ovsnat: audit: {kind} flow table={key[0]} cookie={key[1]:#x} of ")
            for line in lines
        ), lines
    assert any("of port tapvm11 (vm11, 10.0.0.11)" in line for line in lines), lines
    assert host.ctl.sw.session.installed == set(desired)


def test_an_audit_that_finds_nothing_sends_nothing():
    host = synced_host()
    before = host.switch.flow_mods
    host.advance(3 * PERIOD + 0.1)
    assert stats(host)["audits"] == 3 and stats(host)["flow_repairs"] == 0
    assert host.switch.flow_mods == before


def test_the_audit_period_is_the_option_and_zero_turns_it_off():
    fast = SimHost(fip_activation="immediate")
    fast.ctl.audit.interval = 5.0
    fast.start()
    fast.advance(10.1)
    assert stats(fast)["audits"] == 2
    off = SimHost(fip_activation="immediate")
    off.ctl.audit.interval = 0
    off.start()
    off.advance(10 * PERIOD)
    assert stats(off)["audits"] == 0 and not off.ctl.timers.pending(KEY)


def test_no_audit_starts_while_a_bundle_is_in_flight():
    host = synced_host()
    host.now += PERIOD - 1
    held = host.ctl.ovsdb(_changes(vm_row(13)), host.now)  # a bundle, not yet delivered
    host.now += 1.5
    out = host.ctl.tick(host.now)  # audit due, but postponed
    assert not dump_requests(out)
    host.deliver(held)
    host.advance(1.1)  # retried a second later
    assert stats(host)["audits"] == 1 and stats(host)["flow_repairs"] == 0


def test_an_owner_changed_while_the_dump_is_read_is_not_repaired_from_the_old_dump():
    """The dump answers for the moment it was asked; a VM plugged meanwhile is missing from
    it. Repairing from it would resend the new VM's flows; only the untouched owners are
    compared, and drift there (a flow deleted before the dump) is still repaired."""
    host = synced_host()
    gone = vm_key(host, 12)
    desired_gone = host.switch.flow(gone)
    host.switch.remove(gone)
    host.now += PERIOD + 0.1
    requests = host.ctl.tick(host.now)  # the audit's dump requests
    replies = host.switch.receive(b"".join(requests))  # answered now, read later
    host.plug(vm_row(13))  # a bundle meanwhile
    mods = host.switch.flow_mods
    for r in replies:
        host.deliver(host.ctl.flow_stats(r.xid, *r.args, host.now))
    assert stats(host)["flow_repairs"] == 1  # vm12's flow, not vm13's
    assert host.switch.flow(gone)[8:] == desired_gone[8:]
    assert host.switch.flow_mods - mods == 1  # the one add
    assert host.switch.flow_keys() == host.desired_keys()


def test_a_refused_owner_is_left_to_the_reconciler_not_retried_every_period():
    host = SimHost(fip_activation="immediate")
    host.rows.update({r.name: r for r in (vm_row(11, FIP), vm_row(12))})
    host.switch.reject = lambda key: key[1] >> 24 == 0xA20A00000C
    host.start()
    errors = host.switch.flow_mods
    host.advance(2 * PERIOD + 0.1)
    assert stats(host)["audits"] == 2 and stats(host)["flow_repairs"] == 0
    assert host.switch.flow_mods == errors


def test_the_switch_returns_exactly_the_digest_of_the_flow_mod_ovsnat_keeps():
    host = synced_host()
    for blob in host.ctl.host.wire.values():
        for key, packed in blobs.iter_flow_mods(blob):
            assert flow_mod_digest(host.switch.flow(key)) == flow_mod_digest(packed)
    assert flow_mod_digest(changed_in_place(packed)) != flow_mod_digest(packed)


def dump_requests(out) -> list:
    data = b"".join(x for x in out if isinstance(x, bytes))
    return [m for m in blobs.split_messages(data) if m[0] == codec.OFPT_MULTIPART_REQUEST]


def _changes(row):
    from ovsnat.model.rows import Changes

    return Changes({row.name: row})


def test_an_audit_due_before_the_host_is_built_still_runs_once_it_is():
    """The switch connects while the uplink's row is missing (no host state yet) for longer
    than a period: the audit waits for the host instead of being dropped."""
    host = SimHost(fip_activation="immediate")
    host.rows.update({r.name: r for r in (vm_row(11, FIP), vm_row(12))})
    uplink = host.rows.pop("uplink")
    host.start()
    host.advance(2 * PERIOD)
    assert host.ctl.host is None and stats(host).get("audits", 0) == 0
    host.plug(uplink)
    assert host.switch.flow_keys() == host.desired_keys()
    host.advance(PERIOD + 0.1)
    assert stats(host)["audits"] >= 1


def test_a_dump_the_switch_never_answers_is_given_up_and_the_audit_goes_on(caplog):
    host = synced_host()
    receive, swallowed = host.switch.receive, []

    def deaf(data):  # the flow stats replies of one audit never arrive
        replies = receive(data)
        if not swallowed and any(r.kind == "flow_stats" for r in replies):
            swallowed.extend(r for r in replies if r.kind == "flow_stats")
            return [r for r in replies if r.kind != "flow_stats"]
        return replies

    host.switch.receive = deaf
    host.advance(PERIOD + 0.1)
    assert swallowed and stats(host).get("audits", 0) == 0  # the dump hangs
    with caplog.at_level(logging.WARNING, logger="ovsnat"):
        host.advance(STALLED)
    assert "left the flow dump unanswered" in caplog.text
    assert stats(host)["audits"] == 1  # asked again, answered
    host.advance(PERIOD)
    assert stats(host)["audits"] == 2
