"""The metadata proxy without a network (ovsnat-metadata-proxy, issue 29; the real process,
namespace and sockets are in tests/test_metadata_proxy_lab.py): the port encoding it reads,
who it vouches for, its command line and its systemd unit; and the fakes the other unit
modules share. By topic: test_metadata_proxy_http.py (the request a VM may send, what Nova
is told, checked by Nova's own handler), test_metadata_proxy_limits.py (the pure limits,
with a clock the test moves), test_metadata_proxy_handler.py (one connection, in order),
test_metadata_proxy_backend.py (Nova and OVSDB on stand-ins)."""

from __future__ import annotations

import asyncio
import configparser
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ovsnat.metadata import main, server
from ovsnat.metadata.backend import Backend
from ovsnat.metadata.identity import Instance, Refusal, identify, still_holds
from ovsnat.model.metadata import MAX_OFPORT, PROXY_IP, decode, encode
from ovsnat.ovsdb.lookup import PortRow, Remote

SECRET = b"a shared secret"
A = Instance(7, "tapa", "row-a", "10.0.0.7", "0a0a0a0a-0000-4000-8000-000000000007", "proj-a")
VM_ROW = PortRow(
    "tapa",
    {
        "iface-id": "port-a",
        "ovsnat-fixed-ip": "10.0.0.7",
        "ovsnat-device-id": A.device_id,
        "ovsnat-project": A.project,
    },
    uuid="row-a",
    ofport=7,
)
CLOUD_INIT = (
    b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: 169.254.169.254\r\n"
    b"User-Agent: Cloud-Init/23.1\r\nAccept: */*\r\n\r\n"
)
NOVA_SAYS = b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nmeta"


def head(*fields: str, line: str = "GET / HTTP/1.1") -> bytes:
    return "\r\n".join([line, *fields, "", ""]).encode("latin-1")


# --- the fakes the handler tests share ----------------------------------------------------------
class FakeWriter:
    """The handler's view of a connection: what it wrote, whether it closed or aborted."""

    def __init__(self, peer: str):
        self.peer, self.out, self.closed, self.aborted = peer, b"", False, False
        self.transport = self

    def get_extra_info(self, name):
        return (self.peer, 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        return None

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeReply:
    """Nova's answer once its head is in (backend.NovaReply's interface)."""

    status = 200

    def __init__(self, calls: dict):
        self.calls = calls

    async def relay_to(self, client) -> int:
        client.write(NOVA_SAYS)
        return 200

    def close(self) -> None:
        self.calls["replies_closed"] += 1


def settings(**changes) -> server.Settings:
    base = dict(
        backend=Backend("nova", 8775, None, 5.0),
        secret=SECRET,
        ovsdb=Remote.parse("unix:/nonexistent"),
        bridge="br-int",
        rate=1.0,
        burst=2,
        per_port=4,
        total=16,
        request_timeout=5.0,
        ovsdb_timeout=1.0,
        log_interval=10.0,
    )
    return server.Settings(**{**base, **changes})


def fake_proxy(monkeypatch, **changes) -> server.Proxy:
    """A Proxy whose OVSDB has VM_ROW at ofport 7 (`rows_now` is what a recheck sees) and
    whose Nova answers 200 (the fakes count their calls), on a clock that stands still
    unless a test moves it."""
    calls = {"lookups": 0, "rechecks": 0, "nova": [], "replies_closed": 0}
    rows_now = {VM_ROW.uuid: VM_ROW}

    async def rows(remote, bridge, ofport, timeout):
        calls["lookups"] += 1
        return [VM_ROW] if ofport == 7 else []

    async def row(remote, uuid, timeout):
        calls["rechecks"] += 1
        return rows_now.get(uuid)

    async def ask_nova(backend, request, head_only=False, budget=None):
        calls["nova"].append(request)
        return FakeReply(calls)

    monkeypatch.setattr(server, "bridge_rows_with_ofport", rows)
    monkeypatch.setattr(server, "row_by_uuid", row)
    monkeypatch.setattr(server, "ask", ask_nova)
    p = server.Proxy(settings(**changes), clock=Clock())
    p.calls, p.rows_now = calls, rows_now
    return p


def serve_one(proxy, source: str, sent: bytes = CLOUD_INIT) -> bytes:
    """What the VM at `source` gets for `sent` (all of it, then EOF)."""

    async def one():
        reader = asyncio.StreamReader()
        reader.feed_data(sent)
        reader.feed_eof()
        writer = FakeWriter(source)
        await proxy.handle(reader, writer)
        assert writer.closed or writer.aborted
        return writer.out

    return asyncio.run(one())


# --- the address a request comes from ------------------------------------------------------
def test_a_ports_encoded_address_names_it_and_the_proxys_own_names_no_port():
    assert str(encode(1)) == "169.254.0.1" and str(encode(0x1234)) == "169.254.18.52"
    assert all(decode(encode(p)) == p for p in (1, 255, 256, 43518, MAX_OFPORT))
    assert decode(PROXY_IP) is None and decode("169.254.0.0") is None
    assert decode("10.0.0.7") is None and decode("not an address") is None


# --- who is asking -------------------------------------------------------------------------
def test_the_one_vm_row_with_the_ofport_is_the_instance():
    other_bridge_kind = PortRow("patch", {})  # not a VM port: ignored
    assert identify(7, [VM_ROW, other_bridge_kind]) == A


@pytest.mark.parametrize(
    "rows, reason",
    [
        ([], "no VM port has ofport 7"),
        ([PortRow("uplink", {})], "no VM port has ofport 7"),
        ([VM_ROW, PortRow("tapb", VM_ROW.external_ids)], "ports tapa, tapb share ofport 7"),
        (
            [PortRow("tapa", {"ovsnat-fixed-ip": "10.0.0.7", "iface-id": "p"})],
            "external_ids:ovsnat-device-id and external_ids:ovsnat-project",
        ),
        (
            [PortRow("tapa", {**VM_ROW.external_ids, "ovsnat-project": ""})],
            "no external_ids:ovsnat-project",
        ),
        (
            [PortRow("tapa", {**VM_ROW.external_ids, "ovsnat-fixed-ip": "10.0.0"})],
            "is not an IPv4 address",
        ),
        (
            [PortRow("tapa", {**VM_ROW.external_ids, "ovsnat-device-id": "a\r\nX-Evil: 1"})],
            "ovsnat-device-id is not a printable id",
        ),
    ],
)
def test_a_port_that_cannot_be_vouched_for_is_refused_with_the_reason(rows, reason):
    refused = identify(7, rows)
    assert isinstance(refused, Refusal) and reason in refused.reason, refused


def test_the_row_still_holds_the_port_only_with_its_ofport_and_its_owner_unchanged():
    assert still_holds(A, VM_ROW)  # positive control: the row as it was
    assert not still_holds(A, None)  # deleted
    assert not still_holds(A, PortRow(VM_ROW.name, VM_ROW.external_ids, "row-a", 8))
    assert not still_holds(A, PortRow(VM_ROW.name, VM_ROW.external_ids, "row-a", None))
    other = {**VM_ROW.external_ids, "ovsnat-device-id": "0b0b0b0b-0000-4000-8000-00000000000b"}
    assert not still_holds(A, PortRow(VM_ROW.name, other, "row-a", 7))


# --- the command line ---------------------------------------------------------------------------
def test_the_secret_comes_from_a_file_stripped_and_an_empty_or_open_one_is_told(tmp_path, caplog):
    path = tmp_path / "secret"
    path.write_text("  s3cret\n")
    path.chmod(0o600)
    assert main.read_secret(str(path)) == b"s3cret" and not caplog.records
    path.chmod(0o644)
    main.read_secret(str(path))
    assert "readable by every user" in caplog.text
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        main.read_secret(str(path))
    with pytest.raises(ValueError, match="--shared-secret-file is required"):
        main.read_secret(None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # read, never changed


def test_serving_without_nova_or_with_a_bad_limit_stops_with_one_clear_line(tmp_path, caplog):
    secret = tmp_path / "secret"
    secret.write_text("s")
    assert main.main(["--shared-secret-file", str(secret)]) == 1
    assert "--nova-metadata-host is required" in caplog.text
    argv = ["--nova-metadata-host", "nova", "--shared-secret-file", str(secret), "--rate", "0"]
    assert main.main(argv) == 1
    assert "--rate must be positive" in caplog.text


def test_the_command_runs_as_a_module_too_and_lists_every_option():
    """`python -m ovsnat.metadata.main` (the OpenStack lab's way) and the console script
    share main(); its options are the ones the report and the unit sample name."""
    done = subprocess.run(
        [sys.executable, "-m", "ovsnat.metadata.main", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for option in (
        "--namespace", "--port", "--bridge", "--bridge-namespace", "--db", "--no-bridge",
        "--cleanup", "--nova-metadata-host", "--nova-metadata-port",
        "--nova-metadata-protocol", "--nova-metadata-insecure", "--auth-ca-cert",
        "--nova-client-cert", "--nova-client-priv-key", "--shared-secret-file", "--rate",
        "--burst", "--max-connections-per-port", "--max-connections", "--request-timeout",
        "--backend-timeout", "--ovsdb-timeout", "--max-ovsdb-lookups", "--status-file",
        "--log-interval", "--debug",
    ):  # fmt: skip
        assert f"{option} " in done.stdout or f"{option}\n" in done.stdout, option


def test_the_proxy_loads_none_of_the_controllers_ovsdb_or_openflow_libraries():
    """One proxy per host: its memory is mostly its imports. It reads OVSDB over plain
    JSON-RPC (ovsdb.lookup), so python-ovs, eventlet and the OpenFlow framework stay out
    (60 MB with them, about 25 MB without); the package's other names still resolve."""
    probe = (
        "import sys, ovsnat.metadata.main; "
        "print(sorted(m for m in ('ovs', 'eventlet', 'ryu', 'os_ken') if m in sys.modules)); "
        "from ovsnat import ovsdb; ovsdb.Watcher; print('ovs' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "True"], done.stdout
    from ovsnat import ovsdb

    assert all(getattr(ovsdb, name) for name in ovsdb.__all__)


# --- the systemd unit sample --------------------------------------------------------------------
UNIT = Path(__file__).resolve().parent.parent / "etc" / "systemd" / "ovsnat-metadata-proxy.service"


def test_the_unit_sample_is_one_systemd_accepts_and_runs_the_proxy_with_options_it_has(tmp_path):
    """systemd-analyze verify (with this virtualenv in place of /opt/ovsnat), and the
    ExecStart line parsed by the proxy's own parser: the secret comes from a file."""
    local = tmp_path / UNIT.name
    local.write_text(UNIT.read_text().replace("/opt/ovsnat", sys.prefix))
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(UNIT)
    argv = shlex.split(unit["Service"]["ExecStart"].replace("\\\n", " "))
    assert argv[0] == "/opt/ovsnat/bin/ovsnat-metadata-proxy"
    args = main.parser().parse_args(argv[1:])
    assert args.shared_secret_file and args.nova_metadata_host and args.status_file
    assert "openvswitch-switch.service" in unit["Unit"]["After"].split()
    assert unit["Service"]["Restart"] == "on-failure"


def test_the_unit_runs_it_with_only_the_capabilities_it_uses_and_files_for_its_connections():
    """No new privileges, a bounding set of what setting up the namespace and serving need
    (the lab runs the proxy under exactly this set), no private mounts (they would hide
    `ip netns add`'s namespace), and open files for --max-connections as the unit runs it."""
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.read(UNIT)
    unit = service["Service"]
    assert unit["NoNewPrivileges"] == "yes"
    assert set(unit["CapabilityBoundingSet"].split()) == set(UNIT_CAPABILITIES)
    assert not {"ProtectSystem", "PrivateMounts", "PrivateTmp"} & set(unit)
    args = main.parser().parse_args(shlex.split(unit["ExecStart"].replace("\\\n", " "))[1:])
    needed = 2 * args.max_connections + args.max_ovsdb_lookups + main.FILES_SPARE
    assert int(unit["LimitNOFILE"]) >= needed


UNIT_CAPABILITIES = ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_DAC_OVERRIDE")


def test_the_open_file_limit_is_raised_to_what_the_connections_need_or_startup_refused(
    monkeypatch,
):
    limits = {"now": (1024, 4096)}
    monkeypatch.setattr(main.resource, "getrlimit", lambda which: limits["now"])
    monkeypatch.setattr(main.resource, "setrlimit", lambda which, v: limits.update(now=v))
    main.open_files(600)
    assert limits["now"] == (1024, 4096)  # enough already: untouched
    main.open_files(2000)
    assert limits["now"] == (2000, 4096)
    with pytest.raises(ValueError, match="needs 5000 open files, the limit is 4096"):
        main.open_files(5000)
