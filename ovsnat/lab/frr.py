"""FRR in the lab's namespaces: a hypervisor's speaker (configured by `ovsnat bgp render`)
and the ToRs it peers with (docs/bgp.md, sections 1 and 8).

Each node runs Debian's zebra, bfdd and bgpd in its namespace with its own paths under a
run directory (never the system's `frr` service, never /etc/frr), is configured by
`vtysh -f` with one integrated file, is read through `vtysh ... json`, and is stopped by
the pids its daemons wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from ovsnat.lab.sh import kill_pid, pid_cmdline, run, wait_for

DAEMONS = ("zebra", "bfdd", "bgpd")
FRR_BIN = "/usr/lib/frr"
NETNS_DIR = "/run/netns"
RUNDIR = re.compile(r"/ovsnat-[0-9a-f]{6}-frr-[^/ ]+")  # what make_rundir names


def make_rundir(lab_id: str) -> str:
    """A lab's FRR directory: one per lab, readable by the daemons' user (frr)."""
    path = tempfile.mkdtemp(prefix=f"ovsnat-{lab_id}-frr-")
    os.chmod(path, 0o755)
    return path


def stop_orphans() -> list[str]:
    """FRR daemons of a lab whose namespace is gone (a test killed before its teardown, or
    `ovsnat lab down --all`): a lab's run directory in their command line and a network
    namespace no longer under /run/netns. Stopped by pid; a live lab's are left alone.
    Returns the pids stopped."""
    gone = []
    for entry in _listdir("/proc"):
        if not entry.isdigit():
            continue
        cmdline = pid_cmdline(int(entry))
        match = RUNDIR.search(cmdline) if cmdline.startswith(FRR_BIN) else None
        if match is None:
            continue
        # the namespaces read per daemon: one made meanwhile is a live lab's
        live = {_inode(os.path.join(NETNS_DIR, n)) for n in _listdir(NETNS_DIR)}
        if _inode(f"/proc/{entry}/ns/net") not in live:
            kill_pid(int(entry), match.group(0))
            gone.append(entry)
    return gone


def stop_nodes(nodes: list[tuple[str, str]]) -> list[str]:
    """Stop each (namespace, FRR directory) node by the pids it wrote; returns what failed
    (a lab's teardown goes on regardless)."""
    errors = []
    for ns, rundir in nodes:
        try:
            FrrNode(ns, rundir).stop()
        except Exception as e:
            errors.append(f"FRR in {ns}: {type(e).__name__}: {e}")
    return errors


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


@dataclass
class FrrNode:
    ns: str
    rundir: str

    def start(self) -> None:
        """Start the three daemons, each with an empty file of its own (so none reads the
        system's), and wait until each answers on its vty socket."""
        os.makedirs(self.rundir, exist_ok=True)
        shutil.chown(self.rundir, "frr", "frr")
        for daemon in DAEMONS:
            conf = self._path(f"{daemon}.conf")
            open(conf, "w").close()
            shutil.chown(conf, "frr", "frr")
            extra = ["--bfdctl", self._path("bfdd.sock")] if daemon == "bfdd" else []
            run(
                [
                    f"{FRR_BIN}/{daemon}", "-d", "--vty_socket", self.rundir,
                    "-z", self._path("zserv.api"), "-f", conf,
                    "-i", self._path(f"{daemon}.pid"), *extra,
                ],
                ns=self.ns,
                timeout=30,
            )  # fmt: skip
            wait_for(
                lambda d=daemon: os.path.exists(self._path(f"{d}.vty")),
                10,
                what=f"{daemon} of {self.ns} on its vty socket",
            )

    def configure(self, text: str) -> None:
        """Apply one integrated configuration (every daemon's part) through vtysh."""
        path = self._path("frr.conf")
        with open(path, "w") as f:
            f.write(text)
        done = self._vtysh("-f", path)
        if done.returncode != 0 or "% " in done.stdout:
            raise RuntimeError(f"vtysh -f {path} for {self.ns}: {done.stdout}{done.stderr}")

    def show(self, command: str) -> dict:
        """One `show ... json` command's answer."""
        done = self._vtysh("-c", command)
        if done.returncode != 0:
            raise RuntimeError(f"vtysh -c {command!r} for {self.ns}: {done.stderr}")
        return json.loads(done.stdout or "{}")

    def command(self, *lines: str) -> str:
        return self._vtysh(*[arg for line in lines for arg in ("-c", line)]).stdout

    def stop(self) -> None:
        """Each daemon by the pid it wrote (only ours: its command line is checked)."""
        for daemon in reversed(DAEMONS):
            pid = self._pid(daemon)
            if pid is not None:
                kill_pid(pid, self.rundir)

    def _pid(self, daemon: str) -> int | None:
        try:
            with open(self._path(f"{daemon}.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _vtysh(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["vtysh", "--vty_socket", self.rundir, *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def _path(self, name: str) -> str:
        return os.path.join(self.rundir, name)


class ReadsFrr:
    """What a lab's tests read of its FRR nodes (`self.nodes`: role -> FrrNode), from FRR's
    own JSON: sessions up, a prefix's paths and the best of them."""

    nodes: dict

    def established(self, node: str) -> int:
        summary = self.nodes[node].show("show bgp ipv4 unicast summary json")
        return sum(1 for p in summary.get("peers", {}).values() if p.get("state") == "Established")

    def paths(self, node: str, prefix: str) -> list[dict]:
        return self.nodes[node].show(f"show bgp ipv4 unicast {prefix}/32 json").get("paths", [])

    def best(self, node: str, prefix: str) -> dict | None:
        return next(
            (p for p in self.paths(node, prefix) if p.get("bestpath", {}).get("overall")), None
        )


@dataclass(frozen=True)
class TorPeer:
    """One hypervisor as a ToR sees it: its address on their link and its ASN."""

    address: str
    asn: int


def tor_conf(
    name: str,
    asn: int,
    router_id: str,
    hosts: list[TorPeer],
    announce: list[str],
    community_asn: int = 64999,
    max_prefix: int = 1010,
    bfd_interval: int = 200,
    upstream: TorPeer | None = None,
) -> str:
    """A ToR's side of docs/bgp.md section 1: from each host only /32s inside the announced
    ranges, the MOVED community mapped to local preference 200, a default route sent,
    graceful restart as a helper only, BFD, and a prefix cap above the hosts' own.
    `upstream`: an outside router, which gets the hosts' /32s (their communities with them)
    and gives the default the hosts get (instead of the ToR's own), so a ToR cut off from
    it stops being the hosts' way out."""
    lines = [
        "frr defaults traditional",
        f"hostname {name}",
        *[f"ip prefix-list HOSTS seq {5 * i} permit {r} ge 32" for i, r in enumerate(announce, 1)],
        f"bgp community-list standard MOVED seq 5 permit {community_asn}:200",
        "route-map FROM-HOST permit 10",
        " match ip address prefix-list HOSTS",
        " match community MOVED",
        " set local-preference 200",
        "exit",
        "route-map FROM-HOST permit 20",
        " match ip address prefix-list HOSTS",
        "exit",
        "route-map TO-HOST permit 10",
        "exit",
        "route-map UP-IN permit 10",
        "exit",
        "route-map UP-OUT permit 10",
        " match ip address prefix-list HOSTS",
        "exit",
        # The hosts' BFD timers on this side too: a session's detection time is the other
        # side's multiplier times the slower of the two sides' intervals.
        "bfd",
        " profile hosts",
        f"  transmit-interval {bfd_interval}",
        f"  receive-interval {bfd_interval}",
        " exit",
        "exit",
        f"router bgp {asn}",
        f" bgp router-id {router_id}",
        " no bgp default ipv4-unicast",
    ]
    for host in hosts:
        lines += [
            f" neighbor {host.address} remote-as {host.asn}",
            f" neighbor {host.address} bfd profile hosts",
            f" neighbor {host.address} graceful-restart-helper",
            f" neighbor {host.address} advertisement-interval 0",
        ]
    if upstream is not None:
        lines += [
            f" neighbor {upstream.address} remote-as {upstream.asn}",
            f" neighbor {upstream.address} bfd profile hosts",
            f" neighbor {upstream.address} advertisement-interval 0",
        ]
    lines += [" address-family ipv4 unicast"]
    if upstream is not None:
        lines += [
            f"  neighbor {upstream.address} activate",
            f"  neighbor {upstream.address} route-map UP-IN in",
            f"  neighbor {upstream.address} route-map UP-OUT out",
        ]
    for host in hosts:
        lines += [
            f"  neighbor {host.address} activate",
            f"  neighbor {host.address} route-map FROM-HOST in",
            f"  neighbor {host.address} route-map TO-HOST out",
            # with an upstream, its default passes on (and goes when the upstream does)
            *([f"  neighbor {host.address} default-originate"] if upstream is None else []),
            f"  neighbor {host.address} maximum-prefix {max_prefix}",
        ]
    lines += [" exit-address-family", "exit", "end"]
    return "\n".join(lines) + "\n"
