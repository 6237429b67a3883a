"""The lab topology: hypervisors, VMs, an external L2 segment and the outside world.

    vm namespaces ──veth── hypervisor namespace (OVS br-int) ──uplink── ext namespace (Linux
    bridge) ── out namespace (router 203.0.113.1) ──MTU 1400── srv namespace (198.51.100.10)

Every switch, VM and outside host lives in a namespace named `ovsnat-<labid>-<role>`; nothing is
created in or changed in the root namespace, and veth pairs are created directly between lab
namespaces. A JSON record under /run/ovsnat-lab/<labid>/ lists what exists, so `ovsnat lab down`
can remove a lab whose creator crashed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from dataclasses import asdict

from ovsnat.lab import frr
from ovsnat.lab.cleanup import kill_recorded as _kill_recorded
from ovsnat.lab.nodes import (
    BRIDGE,
    EXTERNAL_CIDR,
    INTERNAL_GW,
    INTERNAL_PREFIX,
    NS_PREFIX,
    ROUTER_IP,
    SERVER_GW,
    SERVER_IP,
    SERVER_MTU,
    STATE_ROOT,
    UPLINK,
    Host,
    Vm,
)
from ovsnat.lab.ovs import require_ovs
from ovsnat.lab.sh import LabError, run
from ovsnat.lab.vmplug import VmPlumbing, arp_frame

# Re-exported: the lab's users import the nodes, addresses and frames from here.
__all__ = [
    "BRIDGE",
    "EXTERNAL_CIDR",
    "INTERNAL_GW",
    "INTERNAL_PREFIX",
    "NS_PREFIX",
    "ROUTER_IP",
    "SERVER_GW",
    "SERVER_IP",
    "SERVER_MTU",
    "STATE_ROOT",
    "UPLINK",
    "Host",
    "Lab",
    "LabError",
    "Vm",
    "arp_frame",
    "down_all",
    "list_lab_namespaces",
]


class Lab(VmPlumbing):
    """Create and tear down a lab. Use as a context manager so teardown always runs. The VMs'
    plumbing is in vmplug.py."""

    def __init__(self, lab_id: str | None = None, root: str = STATE_ROOT):
        self.id = lab_id or secrets.token_hex(3)
        self.dir = os.path.join(root, self.id)
        self.namespaces: list[str] = []
        self.hosts: dict[str, Host] = {}
        self.vms: dict[str, Vm] = {}
        self.procs: dict[str, dict] = {}  # name -> {"pid":, "ns":, "argv":, "log":}
        self.frr: dict[str, str] = {}  # role -> its FRR directory (`lab up --bgp`)
        self.frr_root = ""
        self.started = False

    # --- naming and state ---------------------------------------------------------------
    def ns_name(self, role: str) -> str:
        return f"{NS_PREFIX}{self.id}-{role}"

    @property
    def ext_ns(self) -> str:
        return self.ns_name("ext")

    @property
    def out_ns(self) -> str:
        return self.ns_name("out")

    @property
    def srv_ns(self) -> str:
        return self.ns_name("srv")

    def _save(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        state = {
            "id": self.id,
            "namespaces": self.namespaces,
            "hosts": {n: asdict(h) for n, h in self.hosts.items()},
            "vms": {n: asdict(v) for n, v in self.vms.items()},
            "procs": self.procs,
            "frr": self.frr,
            "frr_root": self.frr_root,
        }
        tmp = os.path.join(self.dir, "lab.json.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, os.path.join(self.dir, "lab.json"))

    @classmethod
    def load(cls, lab_id: str, root: str = STATE_ROOT) -> Lab:
        lab = cls(lab_id, root)
        with open(os.path.join(lab.dir, "lab.json")) as f:
            state = json.load(f)
        lab.namespaces = state["namespaces"]
        lab.hosts = {n: Host(**h) for n, h in state["hosts"].items()}
        lab.vms = {n: Vm(**v) for n, v in state["vms"].items()}
        lab.procs = state.get("procs", {})
        lab.frr, lab.frr_root = state.get("frr", {}), state.get("frr_root", "")
        lab.started = True
        return lab

    @staticmethod
    def list_ids(root: str = STATE_ROOT) -> list[str]:
        if not os.path.isdir(root):
            return []
        return sorted(
            d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "lab.json"))
        )

    # --- building blocks ---------------------------------------------------------------
    def _add_ns(self, role: str) -> str:
        ns = self.ns_name(role)
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        self._save()
        run(["ip", "link", "set", "lo", "up"], ns=ns)
        return ns

    @staticmethod
    def _veth(ns_a: str, name_a: str, ns_b: str, name_b: str, mtu: int | None = None) -> None:
        """A veth pair created inside ns_a with its peer placed straight into ns_b (the root
        namespace never holds either end). Checksum offload is off on both ends: with it on,
        TCP/UDP leave the userspace datapath with bad checksums."""
        run(
            [
                "ip",
                "-n",
                ns_a,
                "link",
                "add",
                name_a,
                "type",
                "veth",
                "peer",
                "name",
                name_b,
                "netns",
                ns_b,
            ]
        )
        for ns, name in ((ns_a, name_a), (ns_b, name_b)):
            if mtu:
                run(["ip", "-n", ns, "link", "set", name, "mtu", str(mtu)])
            run(["ethtool", "-K", name, "tx", "off", "rx", "off"], ns=ns, check=False)
            run(["ip", "-n", ns, "link", "set", name, "up"])

    def up(self) -> Lab:
        """The external segment, the outside router and the server behind it."""
        require_ovs()
        os.makedirs(self.dir, exist_ok=True)
        self.started = True
        self._save()
        ext, out, srv = self._add_ns("ext"), self._add_ns("out"), self._add_ns("srv")
        run(["ip", "-n", ext, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", ext, "link", "set", "br0", "up"])
        self._veth(out, "eth0", ext, "out")
        run(["ip", "-n", ext, "link", "set", "out", "master", "br0"])
        run(["ip", "-n", out, "addr", "add", f"{ROUTER_IP}/24", "dev", "eth0"])
        self._veth(out, "eth1", srv, "eth0", mtu=SERVER_MTU)
        run(["ip", "-n", out, "addr", "add", f"{SERVER_GW}/24", "dev", "eth1"])
        run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=out)
        run(["ip", "-n", srv, "addr", "add", f"{SERVER_IP}/24", "dev", "eth0"])
        run(["ip", "-n", srv, "route", "add", "default", "via", SERVER_GW])
        return self

    def add_host(self, name: str, dummy: bool = False, fabric: bool = False) -> Host:
        """A hypervisor: namespace, private OVS, br-int (netdev, secure, OF1.3), uplink;
        with `fabric`, also a `fabric` port cabled to the lab's top-of-rack switch."""
        ns = self._add_ns(name)
        host = Host(name, ns, os.path.join(self.dir, name), dummy, fabric=fabric)
        self.hosts[name] = host
        self._save()
        host.ovs.start(dummy=dummy)
        self._veth(ns, UPLINK, self.ext_ns, name)
        run(["ip", "-n", self.ext_ns, "link", "set", name, "master", "br0"])
        host.ovs.add_bridge(BRIDGE, UPLINK)
        host.ofport(UPLINK)
        if fabric:
            from ovsnat.lab import fabric as tor

            tor.connect(self, host)
        return host

    # --- processes ----------------------------------------------------------------------
    def spawn(
        self, name: str, argv: list[str], ns: str | None = None, env: dict | None = None
    ) -> subprocess.Popen:
        """Start a long-running process (controller, server) inside ns; recorded by pid so
        teardown (even `ovsnat lab down` after a crash) stops it and nothing else."""
        log = os.path.join(self.dir, f"{name}.log")
        full = (["ip", "netns", "exec", ns] if ns else []) + argv
        # The lab id in the environment lets teardown recognise the pid as ours.
        proc_env = dict(os.environ, OVSNAT_LAB_ID=self.id, **(env or {}))
        with open(log, "ab") as logf:
            proc = subprocess.Popen(
                full,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=proc_env,
                start_new_session=True,
            )
        self.procs[name] = {"pid": proc.pid, "ns": ns, "argv": argv, "log": log}
        self._save()
        return proc

    def exited(self, name: str) -> bool:
        """The process recorded as `name` has ended (a zombie not yet reaped counts); False
        for a name never spawned. Reads /proc: reaps nothing."""
        pid = self.procs.get(name, {}).get("pid")
        if pid is None:
            return False
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")

    def stop_proc(self, name: str) -> None:
        info = self.procs.pop(name, None)
        if info:
            _kill_recorded(info, self.id)
            self._save()

    def python(self, *args: str) -> list[str]:
        """argv to run this interpreter (the venv's) with args, e.g. inside a namespace."""
        return [sys.executable, *args]

    # --- teardown -----------------------------------------------------------------------
    def down(self) -> None:
        """Remove everything this lab created; safe to call twice and after partial setup."""
        errors = []
        for name in list(self.procs):
            try:
                _kill_recorded(self.procs.pop(name), self.id)
            except Exception as e:  # keep tearing down
                errors.append(str(e))
        errors += frr.stop_nodes([(self.ns_name(r), d) for r, d in self.frr.items()])
        for host in self.hosts.values():
            try:
                host.ovs.stop()
            except Exception as e:
                errors.append(str(e))
        for ns in reversed(self.namespaces):
            run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()
        # namespaces its own processes made (OpenStack lab guests): unrecorded, same prefix
        for ns in list_lab_namespaces():
            if ns.startswith(self.ns_name("")):
                run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.frr_root:
            shutil.rmtree(self.frr_root, ignore_errors=True)
        if errors:
            raise LabError("lab teardown finished with errors:\n" + "\n".join(errors))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.down()


def down_all(root: str = STATE_ROOT) -> list[str]:
    """Tear down every recorded lab, then any orphan ovsnat-* namespace. Returns what went."""
    gone = []
    for lab_id in Lab.list_ids(root):
        Lab.load(lab_id, root).down()
        gone.append(lab_id)
    for ns in list_lab_namespaces():
        run(["ip", "netns", "del", ns], check=False)
        gone.append(ns)
    return gone + [f"frr pid {pid}" for pid in frr.stop_orphans()]  # FRR left in them


def list_lab_namespaces() -> list[str]:
    """Namespaces of a lab (ovsnat-<its 6 hex id>-<role>): never another ovsnat-* one, such
    as a real host's metadata namespace (ovsnat-meta)."""
    out = run(["ip", "netns", "list"], check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.split()]
    return [n for n in names if re.fullmatch(rf"{re.escape(NS_PREFIX)}[0-9a-f]{{6}}-.+", n)]
