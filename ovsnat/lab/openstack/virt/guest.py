"""The lab's guests, as the lab virt driver (driver.py) runs them: what QEMU and libvirt are
on a real compute node, in the lab's VM model (ovsnat/lab/openstack/instances.py).

A guest is a network namespace (its "machine") whose NICs are veths: the host end, named as
Nova names the tap (`tap` + port id, 14 characters), sits in the hypervisor's namespace;
the other end is the guest's eth0, eth1, ... with the port's MAC and MTU. Creating a guest
is libvirt creating the domain *paused*: the taps exist (Open vSwitch finds the device of
the port os-vif created, so it gets an ofport) but nothing runs inside. Resuming it starts
what the lab's image runs: a DHCP client on eth0 (busybox udhcpc, as cirros runs;
ovsnat.lab.dhcpclient's event script, its lease recorded beside the guest's record) and a
TCP echo server on GUEST_PORT (ovsnat.lab.peer's, which first tells a client the address it
came from: what a NAT test asks). A live
migration moves the taps to the destination hypervisor's namespace while the guest
namespace, with its sockets and processes, stays: the guest keeps running, as QEMU's
memory copy makes it look; then it sends QEMU's RARP announcements.

Every guest has a JSON record in the lab's guests directory, shared by the nova-compute
processes (the destination of a migration takes the guest over) and read by the lab's
teardown and tests. A guest's processes are children of the nova-compute that started it,
in its process group: stopping that nova-compute (or the lab's teardown, which stops it by
its session) stops them too, so nothing a guest started can outlive its lab.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from ovsnat.lab import dhcpclient
from ovsnat.lab.sh import pid_alive, run
from ovsnat.lab.topology import NS_PREFIX, arp_frame

# QEMU's announce-initial / -step / -rounds defaults (as Lab.announce sends them)
RARP_ROUNDS, RARP_INITIAL, RARP_STEP = 5, 0.05, 0.1
GUEST_PORT = 7000  # the image's TCP echo server


def host_namespace(lab_id: str, host: str) -> str:
    """The namespace of lab hypervisor `host` (Lab.ns_name)."""
    return f"{NS_PREFIX}{lab_id}-{host}"


@dataclass
class Nic:
    tap: str  # host end, in the hypervisor's namespace
    dev: str  # guest end: eth0, eth1, ...
    mac: str
    mtu: int
    port_id: str


@dataclass
class Guest:
    """One guest; `host` is the lab hypervisor whose namespace holds its taps."""

    uuid: str
    name: str
    lab_id: str
    ns: str
    host: str
    nics: list[Nic]
    guests_dir: str
    state: str = "paused"  # paused (created, nothing runs) | running
    pids: list[int] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)  # wall clock of each step

    # --- records ------------------------------------------------------------------------
    @staticmethod
    def record_path(guests_dir: str, uuid: str) -> str:
        return os.path.join(guests_dir, f"{uuid}.json")

    @property
    def lease_file(self) -> str:
        return os.path.join(self.guests_dir, f"{self.uuid}.lease")

    def save(self) -> None:
        tmp = self.record_path(self.guests_dir, self.uuid) + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(self), f)
        os.replace(tmp, self.record_path(self.guests_dir, self.uuid))

    @classmethod
    def load(cls, guests_dir: str, uuid: str) -> Guest | None:
        try:
            with open(cls.record_path(guests_dir, uuid)) as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        data["nics"] = [Nic(**n) for n in data["nics"]]
        return cls(**data)

    @classmethod
    def all(cls, guests_dir: str) -> list[Guest]:
        names = sorted(n for n in os.listdir(guests_dir) if n.endswith(".json"))
        guests = [cls.load(guests_dir, n[:-5]) for n in names]
        return [g for g in guests if g is not None]

    @property
    def host_ns(self) -> str:
        return host_namespace(self.lab_id, self.host)

    # --- lifecycle ----------------------------------------------------------------------
    @classmethod
    def create(
        cls, guests_dir: str, lab_id: str, uuid: str, name: str, host: str, nics: list[Nic]
    ) -> Guest:
        """The domain, paused: namespace and taps, nothing running (module doc)."""
        guest = cls(uuid, name, lab_id, f"{NS_PREFIX}{lab_id}-i{uuid[:8]}", host, nics, guests_dir)
        guest.save()  # recorded before it exists: teardown finds it
        run(["ip", "netns", "add", guest.ns])
        run(["ip", "-n", guest.ns, "link", "set", "lo", "up"])
        # a paused guest sends nothing: no IPv6 autoconfiguration until it runs
        run(
            [
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
            ns=guest.ns,
        )
        for nic in nics:
            run(
                [
                    "ip",
                    "-n",
                    guest.host_ns,
                    "link",
                    "add",
                    nic.tap,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    nic.dev,
                    "netns",
                    guest.ns,
                ]
            )
            run(["ip", "-n", guest.ns, "link", "set", nic.dev, "address", nic.mac])
            for ns, dev in ((guest.host_ns, nic.tap), (guest.ns, nic.dev)):
                run(["ip", "-n", ns, "link", "set", dev, "mtu", str(nic.mtu)])
                # checksums in software: the userspace datapath does not fill them in
                run(["ethtool", "-K", dev, "tx", "off", "rx", "off"], ns=ns, check=False)
            # QEMU holds the tap open from the domain's creation on, paused or not: the
            # link is up (OVS, and ovsnat's controller, see a live device)
            run(["ip", "-n", guest.ns, "link", "set", nic.dev, "up"])
            run(["ip", "-n", guest.host_ns, "link", "set", nic.tap, "up"])
        guest.times["created"] = time.time()
        guest.save()
        return guest

    def resume(self) -> None:
        """The guest's CPUs run: its DHCP client starts on eth0 (and IPv6 autoconfigures,
        as a booting guest's kernel does)."""
        run(
            [
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=0",
                "net.ipv6.conf.default.disable_ipv6=0",
                *[f"net.ipv6.conf.{nic.dev}.disable_ipv6=0" for nic in self.nics],
            ],
            ns=self.ns,
        )
        script = os.path.join(self.guests_dir, "udhcpc.script")
        if not os.path.exists(script):
            with open(script + ".tmp", "w") as f:
                f.write(dhcpclient.SCRIPT)
            os.chmod(script + ".tmp", 0o755)
            os.replace(script + ".tmp", script)
        for argv, env in (
            (
                [
                    "udhcpc",
                    "-f",
                    "-i",
                    self.nics[0].dev,
                    "-s",
                    script,
                    "-t",
                    "5",
                    "-T",
                    "1",
                    "-A",
                    "1",
                    "-O",
                    "mtu",
                    "-O",
                    "staticroutes",
                ],
                {"OVSNAT_LEASE_FILE": self.lease_file},
            ),
            (
                [sys.executable, "-m", "ovsnat.lab.peer", "tcp-server", "--port", str(GUEST_PORT)],
                {},
            ),
        ):
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=dict(os.environ, **env),
            )
            self.pids.append(proc.pid)
        self.state = "running"
        self.times["resumed"] = time.time()
        self.save()

    def move(self, dest: str) -> None:
        """Live migration's switch-over: the taps leave the source hypervisor and appear at
        `dest` (where os-vif's port already waits for them); then QEMU's RARPs."""
        dest_ns = host_namespace(self.lab_id, dest)
        for nic in self.nics:
            run(["ip", "-n", self.host_ns, "link", "set", nic.tap, "netns", dest_ns])
            run(["ethtool", "-K", nic.tap, "tx", "off", "rx", "off"], ns=dest_ns, check=False)
            run(["ip", "-n", dest_ns, "link", "set", nic.tap, "up"])
        self.host = dest
        self.times["moved"] = time.time()
        self.save()
        for nic in self.nics:
            self.announce(nic)

    def announce(self, nic: Nic) -> None:
        """QEMU's self-announcement after a migration: RARPs from the NIC's MAC, in the
        background (the guest does not wait for them either)."""
        frame = arp_frame(nic.mac, "0.0.0.0", rarp=True)
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                sys.executable,
                "-m",
                "ovsnat.lab.peer",
                "send",
                "--iface",
                nic.dev,
                "--count",
                str(RARP_ROUNDS),
                "--interval",
                str(RARP_INITIAL),
                "--step",
                str(RARP_STEP),
                frame.hex(),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def destroy(self) -> None:
        """The domain goes: its processes, its namespace (and with it both ends of every
        veth), its record."""
        stop_pids(self.pids, self.lab_id)
        run(["ip", "netns", "del", self.ns], check=False)
        for path in (
            self.record_path(self.guests_dir, self.uuid),
            self.lease_file,
            self.lease_file + ".events",
        ):
            if os.path.exists(path):
                os.remove(path)

    def renew(self) -> None:
        """The DHCP client renews now (busybox udhcpc: SIGUSR1), as it would at T1."""
        os.kill(self.pids[0], signal.SIGUSR1)

    def dhcp_events(self) -> list[str]:
        """The DHCP client's events so far ("bound 10.1.0.5", "renew 10.1.0.5", ...)."""
        try:
            with open(self.lease_file + ".events") as f:
                return [line.strip() for line in f]
        except FileNotFoundError:
            return []

    def bound_at(self) -> float:
        """When the DHCP client last wrote its lease (wall clock)."""
        return os.path.getmtime(self.lease_file)

    def lease(self) -> dict[str, str]:
        """What the guest's DHCP client last got (empty before its first lease)."""
        try:
            with open(self.lease_file) as f:
                return dict(line.rstrip("\n").partition("=")[::2] for line in f if "=" in line)
        except FileNotFoundError:
            return {}


def stop_pids(pids: list[int], lab_id: str, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, each pid that is still this lab's (its environment carries the
    lab's id: a recycled pid is left alone)."""
    ours = [p for p in pids if pid_alive(p) and _is_ours(p, lab_id)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(pid_alive(p) for p in ours):
            time.sleep(0.02)
        ours = [p for p in ours if pid_alive(p)]
        if not ours:
            return


def _is_ours(pid: int, lab_id: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"OVSNAT_LAB_ID={lab_id}".encode() in f.read()
    except OSError:
        return False


def destroy_all(guests_dir: str) -> int:
    """The lab's teardown: every guest still recorded goes. Returns how many."""
    if not os.path.isdir(guests_dir):
        return 0
    guests = Guest.all(guests_dir)
    for guest in guests:
        guest.destroy()
    return len(guests)
