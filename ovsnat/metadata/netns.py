"""The proxy's own network namespace, its veth to the bridge, and its listening socket.

Layout (the contract with the flows, ovsnat.compile.metadata_flows): namespace `NS` holds
`meta0` (MAC META_MAC, address PROXY_IP/32, ARP off, route ENCODED dev meta0); its veth
peer `PORT` stays in the hypervisor's namespace (or --bridge-namespace, where Open vSwitch
is when that is not the proxy's own) and is a port of the bridge. With ARP off
the kernel sends every reply to meta0's own MAC without asking; the flows rewrite the MACs
both ways, so the namespace needs no neighbour table and the VM no ARP answer from here.

`setup` is idempotent: a restart reuses what is there and fixes what differs (a pair that
is not each other's peer is recreated), so restarting the proxy costs the VMs nothing.
The process itself stays in the hypervisor's namespace, where Nova is reachable; only
its listening socket is made inside `NS` (setns there and back, before any thread).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass

from ovsnat.model.metadata import ENCODED, META_MAC, PROXY_IP
from ovsnat.runtime.netns import NETNS_DIR, socket_in

LOG = logging.getLogger("ovsnat.metadata")
META_IFACE = "meta0"


class SetupError(RuntimeError):
    """The namespace, veth or bridge port could not be made as the contract says."""


@dataclass(frozen=True)
class Layout:
    namespace: str
    port: str  # the veth end on the bridge
    bridge: str | None  # None: leave the bridge alone (--no-bridge)
    db: str  # ovs-vsctl's --db
    bridge_ns: str | None = None  # where `port` lives (Open vSwitch's); None: the proxy's

    @property
    def netns_path(self) -> str:
        return os.path.join(NETNS_DIR, self.namespace)


def setup(layout: Layout) -> list[str]:
    """Make the layout true; returns what had to change (empty on a clean restart)."""
    changed = []
    if os.path.exists(layout.netns_path) and not _holds_namespace(layout.netns_path):
        os.unlink(layout.netns_path)
        changed.append(f"stale {layout.netns_path} removed")
    if not os.path.exists(layout.netns_path):
        _ip("netns", "add", layout.namespace)
        changed.append(f"namespace {layout.namespace} created")
    _ip("link", "set", "lo", "up", ns=layout.namespace)
    if not _paired(layout):
        _recreate_pair(layout)
        changed.append(f"veth {layout.port} <-> {layout.namespace}/{META_IFACE} created")
    changed += _configure_meta(layout.namespace)
    _checksum_offload_off(layout)
    if layout.bridge:
        _vsctl(layout, "--may-exist", "add-port", layout.bridge, layout.port)
    _ip("link", "set", layout.port, "up", ns=layout.bridge_ns)
    return changed


def teardown(layout: Layout) -> list[str]:
    """Remove the bridge port, the veth and the namespace; returns what went."""
    gone = []
    if layout.bridge:
        _vsctl(layout, "--if-exists", "del-port", layout.bridge, layout.port)
        gone.append(f"port {layout.port} of {layout.bridge} (if it was there)")
    port = _link(layout.port, layout.bridge_ns)
    if port:
        _require_veth(layout, port)
        _ip("link", "del", layout.port, ns=layout.bridge_ns)
        gone.append(f"veth {layout.port}")
    if os.path.exists(layout.netns_path):
        _ip("netns", "del", layout.namespace)
        gone.append(f"namespace {layout.namespace}")
    return gone


def listen_in(namespace: str, port: int, backlog: int = 128) -> socket.socket:
    """A TCP socket listening on PROXY_IP:port inside `namespace` (made there by this
    thread, which comes back). Must run before any other thread exists: a thread started
    meanwhile would begin life in the proxy's namespace."""
    if threading.active_count() != 1:
        raise RuntimeError("listen_in must run before any thread is started")
    sock = socket_in(namespace, socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(PROXY_IP), port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _holds_namespace(path: str) -> bool:
    """The file is a namespace (on nsfs, as /proc/self/ns/net is), not the plain file left
    behind when the mount that made it one went away (say, with the private mount
    namespace of an `ip netns exec` that created it)."""
    return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev


def _paired(layout: Layout) -> bool:
    """True when PORT and META_IFACE in the namespace are each other's veth peer."""
    port, meta = _link(layout.port, layout.bridge_ns), _link(META_IFACE, layout.namespace)
    if port:
        _require_veth(layout, port)
    if not port or not meta:
        return False
    ids = {n["name"]: n.get("id") for n in _ip_json("netns", "list", ns=layout.bridge_ns)}
    return (
        port.get("link_index") == meta["ifindex"]
        and ids.get(layout.namespace) is not None
        and port.get("link_netnsid") == ids[layout.namespace]
    )


def _require_veth(layout: Layout, port: dict) -> None:
    """Never touch a device of that name that is not a veth: it is someone else's."""
    if port.get("linkinfo", {}).get("info_kind") != "veth":
        raise SetupError(
            f"{layout.port} exists and is not a veth: remove it or choose another --port"
        )


def _recreate_pair(layout: Layout) -> None:
    if _link(layout.port, layout.bridge_ns):
        _ip("link", "del", layout.port, ns=layout.bridge_ns)
    if _link(META_IFACE, layout.namespace):
        _ip("link", "del", META_IFACE, ns=layout.namespace)
    _ip(
        "link", "add", layout.port, "type", "veth",
        "peer", "name", META_IFACE, "netns", layout.namespace,
        ns=layout.bridge_ns,
    )  # fmt: skip


def _configure_meta(ns: str) -> list[str]:
    """META_IFACE as the contract says; returns what differed."""
    meta = _link(META_IFACE, ns) or {}
    flags = meta.get("flags", [])
    changed = [
        what
        for what, wrong in (
            (f"MAC {META_MAC}", meta.get("address") != META_MAC),
            ("ARP off", "NOARP" not in flags),
            ("link up", "UP" not in flags),
        )
        if wrong
    ]
    if os.path.exists("/proc/sys/net/ipv6"):  # no IPv6 chatter (DAD, RS, MLD) onto the bridge
        _run(_in(ns, ["sysctl", "-qw", f"net.ipv6.conf.{META_IFACE}.disable_ipv6=1"]))
    _ip("link", "set", META_IFACE, "address", META_MAC, "arp", "off", ns=ns)
    want = f"{PROXY_IP}/32"
    have = [
        f"{a['local']}/{a['prefixlen']}"
        for link in _ip_json("addr", "show", "dev", META_IFACE, ns=ns)
        for a in link.get("addr_info", [])
        if a.get("family") == "inet"
    ]
    for other in set(have) - {want}:
        _ip("addr", "del", other, "dev", META_IFACE, ns=ns)
        changed.append(f"address {other} removed")
    if want not in have:
        _ip("addr", "add", want, "dev", META_IFACE, ns=ns)
        changed.append(f"address {want}")
    _ip("link", "set", META_IFACE, "up", ns=ns)
    _ip("route", "replace", str(ENCODED), "dev", META_IFACE, ns=ns)
    return [f"{ns}/{META_IFACE}: {c}" for c in changed]


def _checksum_offload_off(layout: Layout) -> None:
    """Both ends compute their own checksums: with offload on, TCP leaves Open vSwitch's
    userspace datapath with bad checksums (docs: facts measured on this machine)."""
    if shutil.which("ethtool") is None:
        LOG.warning(
            "ethtool not found: TX checksum offload stays on for %s (a userspace "
            "datapath then sends the proxy's replies with bad checksums)",
            layout.port,
        )
        return
    _run(_in(layout.namespace, ["ethtool", "-K", META_IFACE, "tx", "off"]))
    _run(_in(layout.bridge_ns, ["ethtool", "-K", layout.port, "tx", "off"]))


def _link(name: str, ns: str | None = None) -> dict | None:
    done = _run(_ip_argv("-j", "-d", "link", "show", "dev", name, ns=ns), check=False)
    return json.loads(done.stdout)[0] if done.returncode == 0 and done.stdout.strip() else None


def _ip_json(*args: str, ns: str | None = None) -> list[dict]:
    out = _run(_ip_argv("-j", *args, ns=ns)).stdout
    return json.loads(out) if out.strip() else []


def _ip(*args: str, ns: str | None = None) -> None:
    _run(_ip_argv(*args, ns=ns))


def _in(ns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv] if ns else argv


def _ip_argv(*args: str, ns: str | None) -> list[str]:
    return ["ip", *(["-n", ns] if ns else []), *args]


def _vsctl(layout: Layout, *args: str) -> None:
    _run(["ovs-vsctl", f"--db={layout.db}", "--timeout=10", *args])


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SetupError(f"{' '.join(argv)}: {e}") from None
    if check and done.returncode != 0:
        raise SetupError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done
