"""One Open vSwitch instance (ovsdb-server + ovs-vswitchd) with a private rundir, whose
datapath runs inside a network namespace: one lab hypervisor.

The daemons are started by hand, not through systemd: each lab host has its own database,
sockets and logs under its rundir, so several labs and test runs share a machine safely.
The control tools talk over unix sockets in the rundir and need not enter the namespace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ovsnat.lab.sh import LabError, kill_pid, pid_alive, pid_cmdline, run, wait_for

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
DAEMONS = ("ovs-vswitchd", "ovsdb-server")  # stop order


@dataclass
class Ovs:
    """Handles to a running OVS whose files live in `rundir` and datapath in netns `ns`."""

    rundir: str
    ns: str

    @property
    def db_sock(self) -> str:
        return os.path.join(self.rundir, "db.sock")

    @property
    def env(self) -> dict:
        return {"OVS_RUNDIR": self.rundir, "OVS_LOGDIR": self.rundir, "OVS_DBDIR": self.rundir}

    def ctl(self, daemon: str) -> str:
        """The daemon's control socket, where ovs-appctl looks for it by default
        ($OVS_RUNDIR/<daemon>.<pid>.ctl), so operators' tools work unchanged."""
        return os.path.join(self.rundir, f"{daemon}.{self.pid(daemon)}.ctl")

    def pidfile(self, daemon: str) -> str:
        return os.path.join(self.rundir, f"{daemon}.pid")

    def pid(self, daemon: str) -> int | None:
        try:
            with open(self.pidfile(daemon)) as f:
                return int(f.read().strip())
        except (FileNotFoundError, ValueError):
            return None

    # --- tools -------------------------------------------------------------------------
    def vsctl(self, *args: str, check: bool = True) -> str:
        return run(
            ["ovs-vsctl", f"--db=unix:{self.db_sock}", "--timeout=20", *args],
            env=self.env,
            check=check,
        ).stdout

    def ofctl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        """ovs-ofctl on OpenFlow 1.3; bridge names resolve to the mgmt socket in the rundir."""
        return run(
            ["ovs-ofctl", "-O", "OpenFlow13", *args], env=self.env, check=check, input=input
        ).stdout

    def appctl(
        self, *args: str, daemon: str = "ovs-vswitchd", check: bool = True, timeout: float = 20
    ) -> str:
        return run(
            ["ovs-appctl", "-t", self.ctl(daemon), *args],
            env=self.env,
            check=check,
            timeout=timeout,
        ).stdout

    def alive(self, daemon: str = "ovs-vswitchd") -> bool:
        """Liveness by asking the daemon, not by its pidfile (zombies keep pidfiles). A
        daemon too busy to answer within 5 s counts as not answering (teardown then stops
        it by pid)."""
        if not os.path.exists(self.ctl(daemon)):
            return False
        try:
            return (
                run(
                    ["ovs-appctl", "-t", self.ctl(daemon), "version"],
                    env=self.env,
                    check=False,
                    timeout=5,
                ).returncode
                == 0
            )
        except LabError:
            return False

    # --- lifecycle -----------------------------------------------------------------------
    def start_db(self) -> None:
        os.makedirs(self.rundir, exist_ok=True)
        db = os.path.join(self.rundir, "conf.db")
        if not os.path.exists(db):
            run(["ovsdb-tool", "create", db, SCHEMA])
        self._daemon("ovsdb-server", [db, f"--remote=punix:{self.db_sock}"])
        self.vsctl("--no-wait", "init")

    def start_vswitchd(self, dummy: bool = False) -> None:
        extra = ["--enable-dummy=system"] if dummy else []
        self._daemon("ovs-vswitchd", [f"unix:{self.db_sock}", *extra])

    def start(self, dummy: bool = False) -> None:
        self.start_db()
        self.start_vswitchd(dummy)

    def _daemon(self, name: str, args: list[str]) -> None:
        run(
            [
                name,
                *args,
                f"--pidfile={self.pidfile(name)}",
                f"--log-file={os.path.join(self.rundir, name + '.log')}",
                "--detach",
                "--no-chdir",
            ],
            ns=self.ns,
            env=self.env,
        )
        wait_for(lambda: self.alive(name), 10, what=f"{name} in {self.rundir}")

    def stop_daemon(self, name: str, kill: bool = False) -> None:
        """Stop one daemon. kill=True simulates a crash (SIGKILL, no cleanup)."""
        pid = self.pid(name)
        if kill and pid and pid_alive(pid) and self.rundir in pid_cmdline(pid):
            os.kill(pid, 9)
        elif self.alive(name):
            run(["ovs-appctl", "-t", self.ctl(name), "exit"], env=self.env, check=False, timeout=10)
        if pid:
            kill_pid(pid, self.rundir)
        for path in (self.ctl(name), self.pidfile(name)):
            if os.path.exists(path):
                os.unlink(path)

    def stop(self) -> None:
        for name in DAEMONS:
            self.stop_daemon(name)

    def add_bridge(self, bridge: str, uplink: str | None = None) -> None:
        """A secure-fail-mode, OpenFlow 1.3, netdev bridge: no flows means no traffic."""
        args = [
            "--may-exist",
            "add-br",
            bridge,
            "--",
            "set",
            "bridge",
            bridge,
            "datapath_type=netdev",
            "fail_mode=secure",
            "protocols=OpenFlow13",
            "other_config:disable-in-band=true",
        ]
        if uplink:
            args += ["--", "--may-exist", "add-port", bridge, uplink]
        self.vsctl(*args)

    def ofport(self, iface: str, timeout: float = 10) -> int:
        """The OpenFlow port number OVS assigned to `iface` (waits until it has one)."""

        def get():
            out = self.vsctl("--if-exists", "get", "Interface", iface, "ofport").strip()
            return int(out) if out.lstrip("-").isdigit() and int(out) > 0 else None

        return wait_for(get, timeout, what=f"ofport of {iface}")


def require_ovs() -> None:
    """Fail loudly (never skip) when Open vSwitch is missing: the install path should have
    installed it."""
    for tool in ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ovsdb-tool"):
        if run(["sh", "-c", f"command -v {tool}"], check=False).returncode != 0:
            raise LabError(
                f"{tool} not found: run `make install` (scripts/install.sh installs "
                "the Debian package openvswitch-switch)"
            )
    if not os.path.exists(SCHEMA):
        raise LabError(f"{SCHEMA} missing: reinstall openvswitch-common")
