"""ovs-vswitchd's control socket in the host controller (ovsnat.core.vswitchd, ovsnat.core.failures,
connlimit's retries) and in the shim's plumbing that is plain Python (ovsnat.runtime.dpctl's
finding of the socket, ovsnat.core.conntrack's tally): which calls are due, what a failure
means, that none goes unsaid. The lab tests (tests/test_runtime_lab.py) make real calls."""

from __future__ import annotations

import logging
import os

import pytest

from ovsnat.core.connlimit import Zones
from ovsnat.core.conntrack import tally
from ovsnat.core.effects import Probe, Probed, ReadConntrack, ZoneLimits
from ovsnat.core.failures import Failures
from ovsnat.core.status import Stats
from ovsnat.core.vswitchd import PROBE_EVERY
from ovsnat.runtime import dpctl
from tests.hostsim import SimHost, vm_row

SOCKET = "/run/ovs/ovs-vswitchd.42.ctl"
NO_PID = "no pid in /var/run/openvswitch/ovs-vswitchd.pid (No such file or directory)"


def probes(calls) -> list:
    return [c for c in calls if isinstance(c, Probe)]


# --- the probe at start --------------------------------------------------------------------
def test_the_socket_is_probed_at_start_and_a_failure_names_what_cannot_work(caplog):
    sim = SimHost(conn_limit=10, fabric_port="", handoff_vlan="0").start()
    with caplog.at_level(logging.INFO, logger="ovsnat"):
        [probe] = probes(sim.chores())
        assert probe.bridge == sim.cfg.bridge
        sim.answer(Probed(False, "/var/run/openvswitch", NO_PID))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and NO_PID in errors[0] and "conn_limit" in errors[0], errors
    st = sim.ctl.status(sim.now)
    assert st["vswitchd"] == {
        "target": "/var/run/openvswitch",
        "reachable": False,
        "needed_by": ["conn_limit"],
    }
    assert st["failures"]["vswitchd"]["error"].startswith(NO_PID)


def test_while_it_does_not_answer_it_is_probed_again_and_logged_once(caplog):
    sim = SimHost(conn_limit=10).start()
    probes(sim.chores())
    with caplog.at_level(logging.INFO, logger="ovsnat"):
        sim.answer(Probed(False, "/x", NO_PID))
        sim.now += 1
        assert not probes(sim.chores())  # not every second
        sim.now += PROBE_EVERY
        [_] = probes(sim.chores())
        sim.answer(Probed(False, "/x", NO_PID))  # the same failure: counted, quiet
        sim.now += PROBE_EVERY
        [_] = probes(sim.chores())
        sim.answer(Probed(True, SOCKET))  # it answers now: said once
        sim.now += PROBE_EVERY
        assert not probes(sim.chores())  # and no more probes
    lines = [r.getMessage() for r in caplog.records]
    assert sum(NO_PID in line for line in lines) == 1
    assert sum("works again" in line for line in lines) == 1
    st = sim.ctl.status(sim.now)
    assert st["stats"]["vswitchd_call_failures"] == 2 and st["vswitchd"]["reachable"]
    assert st["failures"] == {}


def test_without_a_feature_that_needs_it_a_failed_probe_is_not_repeated():
    sim = SimHost().start()
    [_] = probes(sim.chores())
    sim.answer(Probed(False, "/x", NO_PID))
    sim.now += 5 * PROBE_EVERY
    assert not probes(sim.chores())
    assert (
        "nothing configured needs it" in sim.ctl.status(sim.now)["failures"]["vswitchd"]["meaning"]
    )


# --- zone limits ----------------------------------------------------------------------------
def test_a_zone_limit_that_fails_is_not_counted_as_set_and_is_applied_again():
    sim = SimHost(conn_limit=10).start()
    sim.zone_limit_error = "dpctl/ct-set-limits on /x: permission denied"
    sim.plug(vm_row(2), vm_row(3))
    st = sim.ctl.status(sim.now)["conn_limit"]
    assert st == {"zones": 2, "not_applied": 2, "error": sim.zone_limit_error}
    sim.now += Zones.RETRY
    sim.chores()  # retried: fails again
    assert sim.zone_limits[-1] == ZoneLimits(set=((20002, 10), (20003, 10)))
    sim.unplug("tapvm3")  # meanwhile its VM left
    sim.zone_limit_error = ""  # and ovs-vswitchd is back
    sim.now += Zones.RETRY
    sim.chores()
    assert sim.zone_limits[-1] == ZoneLimits(set=((20002, 10),), delete=(20003,))
    assert sim.ctl.status(sim.now)["conn_limit"] == {"zones": 1, "not_applied": 0, "error": ""}
    count = len(sim.zone_limits)
    sim.now += 3 * Zones.RETRY
    sim.chores()
    assert len(sim.zone_limits) == count  # nothing left to retry


def test_zone_limits_that_take_are_not_retried():
    sim = SimHost(conn_limit=10).start()
    sim.plug(vm_row(2))
    count = len(sim.zone_limits)
    sim.now += 3 * Zones.RETRY
    sim.chores()
    assert len(sim.zone_limits) == count and count >= 1


# --- failures -------------------------------------------------------------------------------
def test_a_failure_is_logged_once_per_distinct_error_and_its_end_once(caplog):
    stats = Stats()
    f = Failures(stats)
    with caplog.at_level(logging.INFO, logger="ovsnat"):
        for _ in range(3):
            f.failed("status_file", "/x: read-only", "status is old", 1.0)
        f.failed("status_file", "/x: disk full", "status is old", 2.0)
        f.ok("status_file")
        f.ok("status_file")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "ovsnat: writing the status file failed: /x: read-only; status is old",
        "ovsnat: writing the status file failed: /x: disk full; status is old",
        "ovsnat: writing the status file works again (it failed 1 times since 1970-01-01T00:00:02)",
    ]
    assert stats.counts["status_write_failures"] == 4 and f.status() == {}


def test_the_status_file_failure_is_reported_and_its_recovery_too(tmp_path):
    from ovsnat.runtime.outside import write_status

    f = Failures(Stats())
    blocked = tmp_path / "file"
    blocked.write_text("")
    write_status(str(blocked / "status.json"), {"a": 1}, f, 1.0)  # a file as a directory
    assert "status.json" in f.status()["status_file"]["error"]
    write_status(str(tmp_path / "status.json"), {"a": 1}, f, 2.0)
    assert f.status() == {} and (tmp_path / "status.json").read_text().startswith("{")


# --- finding the control socket (dpctl.Target) ---------------------------------------------
@pytest.fixture
def rundir(tmp_path):
    (tmp_path / "ovs-vswitchd.pid").write_text("4242\n")
    (tmp_path / "ovs-vswitchd.4242.ctl").write_text("")  # stands for the socket
    return tmp_path


def test_the_socket_is_found_as_ovs_appctl_finds_it(rundir, tmp_path_factory):
    want = str(rundir / "ovs-vswitchd.4242.ctl")
    assert dpctl.Target("", {"OVS_RUNDIR": str(rundir)}).resolve() == (want, "")
    assert dpctl.Target(str(rundir), {}).resolve() == (want, "")
    assert dpctl.Target(str(rundir / "ovs-vswitchd.pid"), {}).resolve() == (want, "")
    assert dpctl.Target(want, {}).resolve() == (want, "")
    empty = tmp_path_factory.mktemp("empty")
    path, why = dpctl.Target("", {"OVS_RUNDIR": str(empty)}).resolve()
    assert path is None and f"no pid in {empty}/ovs-vswitchd.pid" in why
    assert "$OVS_RUNDIR" in why


def test_without_ovs_rundir_the_default_rundir_is_named(monkeypatch):
    target = dpctl.Target("", {})
    assert target.describe() == "/var/run/openvswitch (OVS_RUNDIR is not set)"
    if not os.path.exists("/var/run/openvswitch/ovs-vswitchd.pid"):
        path, why = target.resolve()
        assert path is None and "OVS_RUNDIR is not set" in why


def test_a_stale_pidfile_is_named(rundir):
    os.unlink(rundir / "ovs-vswitchd.4242.ctl")
    path, why = dpctl.Target(str(rundir), {}).resolve()
    assert path is None and "ovs-vswitchd.4242.ctl does not exist" in why


class FakeDaemon:
    """A unix socket that answers ovs-appctl's JSON-RPC requests as `answer(method, params)`
    says (a reply dict, or None: say nothing), split into small writes."""

    def __init__(self, path, answer):
        import socket
        import threading

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.answer, self.requests = answer, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import json

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            request = json.loads(conn.recv(65536))
            self.requests.append((request["method"], request["params"]))
            reply = self.answer(request["method"], request["params"])
            if reply is not None:
                data = json.dumps({**reply, "id": request["id"]}).encode()
                for i in range(0, len(data), 1000):
                    conn.sendall(data[i : i + 1000])
                conn.close()

    def close(self):
        self.sock.close()


def test_a_call_reads_the_daemons_answer_or_its_error(rundir):
    os.unlink(rundir / "ovs-vswitchd.4242.ctl")
    big = "".join(f"{line}\n" for line in ENTRIES[:5] * 2000)  # 10,000 entries
    daemon = FakeDaemon(
        rundir / "ovs-vswitchd.4242.ctl",
        lambda method, params: (
            {"result": big, "error": None}
            if method == "dpctl/dump-conntrack"
            else {"result": None, "error": "ovs-vswitchd: failed to parse field zone"}
        ),
    )
    try:
        target = dpctl.Target(str(rundir), {})
        answer = dpctl.appctl(target, "dpctl/dump-conntrack")
        assert answer.ok and answer.out == big
        answer = dpctl.appctl(target, "dpctl/ct-set-limits", "zone=70000,limit=5")
        assert not answer.ok and answer.error.endswith(": ovs-vswitchd: failed to parse field zone")
        failed, error = dpctl.set_zone_limits(target, ZoneLimits(set=((1, 5), (2, 5)), delete=(3,)))
        assert failed == (1, 2, 3) and "failed to parse" in error
        assert ("dpctl/ct-set-limits", ["zone=1,limit=5", "zone=2,limit=5"]) in daemon.requests
    finally:
        daemon.close()


def test_a_daemon_that_does_not_answer_is_given_up_in_time(rundir):
    os.unlink(rundir / "ovs-vswitchd.4242.ctl")
    daemon = FakeDaemon(rundir / "ovs-vswitchd.4242.ctl", lambda method, params: None)
    try:
        answer = dpctl.appctl(dpctl.Target(str(rundir), {}), "dpctl/dump-conntrack", timeout=0.5)
        assert not answer.ok and "no answer from" in answer.error
    finally:
        daemon.close()


# --- the tally ------------------------------------------------------------------------------
ENTRIES = [
    "tcp,orig=(src=10.0.0.5,dst=198.51.100.10,sport=45000,dport=8080),reply=(src=198.51.100.10,"
    "dst=203.0.113.11,sport=8080,dport=20001),zone=65000,mark=1,protoinfo=(state=ESTABLISHED)",
    "tcp,orig=(src=10.0.0.5,dst=198.51.100.10,sport=45001,dport=8080),reply=(src=198.51.100.10,"
    "dst=203.0.113.11,sport=8080,dport=20002),zone=65000,protoinfo=(state=TIME_WAIT)",
    "udp,orig=(src=10.0.0.6,dst=198.51.100.10,sport=30000,dport=9),reply=(src=198.51.100.10,"
    "dst=203.0.113.11,sport=9,dport=20001),zone=65000",
    "icmp,orig=(src=10.0.0.6,dst=198.51.100.10,id=7,type=8,code=0),reply=(src=198.51.100.10,"
    "dst=203.0.113.11,id=7,type=0,code=0),zone=65000",
    "tcp,orig=(src=10.0.0.5,dst=198.51.100.10,sport=1,dport=2),reply=(src=198.51.100.10,"
    "dst=10.0.0.5,sport=2,dport=1),zone=20005,mark=1,protoinfo=(state=SYN_SENT)",
    "not a conntrack line",
]


def test_one_dump_is_tallied_for_every_reader():
    r = tally("\n".join(ENTRIES), 65000, "203.0.113.11")
    assert r.ok and r.entries == 5
    assert r.sessions == {(65000, "10.0.0.5"): 1, (20005, "10.0.0.5"): 1}
    assert r.pat_ports == {"10.0.0.5": 2, "10.0.0.6": 1} and r.pat_in_use == 2


def test_a_reading_in_chunks_equals_one_in_a_piece():
    from ovsnat.core.conntrack import Tally

    lines = ENTRIES * 50
    t = Tally(65000, "203.0.113.11")
    for i in range(0, len(lines), 7):
        t.feed(lines[i : i + 7])
    whole = tally("\n".join(lines), 65000, "203.0.113.11")
    assert t.reading() == whole


def test_pat_usage_reads_are_asked_for_only_with_the_metrics_on():
    sim = SimHost().start()
    assert not [c for c in sim.chores() if isinstance(c, ReadConntrack)]
    sim.ctl.vswitchd.pat_usage = True
    [_] = [c for c in sim.chores() if isinstance(c, ReadConntrack)]
