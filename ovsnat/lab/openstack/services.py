"""The OpenStack lab's processes that ovsnat talks to directly: RabbitMQ, Neutron (API under
uWSGI, neutron-rpc-server) and each host's ovsnat-neutron-agent, in the lab's services
namespace; stack.py's Stack adds Keystone, Placement, Glance, Nova and MariaDB beside them.

Everything listens on the loopback of the namespace `ovsnat-<labid>-os`; nothing listens in
or touches the root namespace. Every process is started through Lab.spawn, so it is recorded
by pid with the lab's id in its environment and the lab's teardown (even `ovsnat lab down
--all` after a crash) stops it.

Why the agents run here and not in the hypervisor namespaces: an agent talks to exactly two
things, RabbitMQ and its host's OVSDB. OVSDB is a unix socket, reachable from any namespace;
RabbitMQ is on this namespace's loopback. Running the agents here (each with its own `host`)
needs no management network, addresses or routes, and changes nothing the agent does: on a
real hypervisor it reaches RabbitMQ over the management network instead. The controller and
the VMs' plugging stay in the hypervisor namespaces, where the datapath is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from ovsnat.lab.openstack import config as cfg
from ovsnat.lab.openstack.netns import inside
from ovsnat.lab.sh import LabError, run, wait_for
from ovsnat.lab.topology import BRIDGE, Lab

RABBIT_BIN = "/usr/lib/rabbitmq/bin"
# setproctitle (neutron's workers, cotyledon's master) otherwise overwrites the memory that
# /proc/PID/environ shows, and the lab's teardown, which stops only processes whose
# environment carries the lab's id, would leave neutron-rpc-server running.
NEUTRON_ENV = {"PYTHONWARNINGS": "ignore", "SPT_NOENV": "1"}


@dataclass
class OpenStack:
    """RabbitMQ, Neutron and the agents of one lab (Stack brings them up with the rest)."""

    lab: Lab
    ns: str = ""
    paths: cfg.Paths | None = None
    rabbit_env: dict = field(default_factory=dict)
    agents: list[str] = field(default_factory=list)
    limits_reported: set[str] = field(default_factory=set)  # hosts whose agent reports them
    timings: dict = field(default_factory=dict)

    @property
    def neutron_env(self) -> dict[str, str]:
        return dict(NEUTRON_ENV)

    def start_rabbit(self) -> None:
        """epmd first, in the foreground and on loopback: RabbitMQ would otherwise start
        its own as a daemon, which would outlive the lab and listen on every address."""
        self.rabbit_env = cfg.write_rabbit(self.paths, self.lab.id)
        self.lab.spawn("epmd", ["epmd", "-address", "127.0.0.1"], ns=self.ns, env=self.rabbit_env)
        self.lab.spawn(
            "rabbitmq", [f"{RABBIT_BIN}/rabbitmq-server"], ns=self.ns, env=self.rabbit_env
        )

    def wait_rabbit(self, timeout: float = 60, interval: float = 0.2) -> float:
        """RabbitMQ opens its AMQP listener last, once it is ready for clients. Returns the
        wall clock time the listener was first seen open (at most `interval` late)."""
        wait_for(
            lambda: self._port_open(cfg.RABBIT_PORT),
            timeout,
            interval=interval,
            what="RabbitMQ to listen (see rabbitmq.log in the lab dir)",
        )
        return time.time()

    def stop_rabbit(self) -> None:
        self.stop("rabbitmq")

    def restart_rabbit(self) -> float:
        """Same node, same database: users and durable objects survive as after a broker
        restart (the RPC queues, not durable, are declared again by their consumers).
        Returns when RabbitMQ was back: its listener first seen open (polled every 20 ms)."""
        self.lab.spawn(
            "rabbitmq", [f"{RABBIT_BIN}/rabbitmq-server"], ns=self.ns, env=self.rabbit_env
        )
        return self.wait_rabbit(interval=0.02)

    def rabbitmqctl(self, *args: str, timeout: float = 60) -> str:
        return run(
            [f"{RABBIT_BIN}/rabbitmqctl", "-q", *args],
            ns=self.ns,
            env=self.rabbit_env,
            timeout=timeout,
        ).stdout

    def start_neutron(self) -> None:
        self.start_api()
        self.start_rpc(wait=False)
        self.wait_api()
        self.wait_rpc()

    def start_api(self) -> None:
        ini = os.path.join(self.paths.etc, "neutron-api-uwsgi.ini")
        self.lab.spawn(
            "neutron-api",
            [cfg.venv_bin("uwsgi"), "--ini", ini],
            ns=self.ns,
            env={**cfg.api_env(self.paths), **self.neutron_env},
        )

    def start_rpc(self, wait: bool = True) -> None:
        self.lab.spawn("neutron-rpc", cfg.rpc_argv(self.paths), ns=self.ns, env=self.neutron_env)
        if wait:
            self.wait_rpc()

    def stop_api(self) -> None:
        self.stop("neutron-api")

    def wait_api(self, timeout: float = 120) -> None:
        wait_for(
            self.alive("neutron-api", self.api_answers, "neutron-api.log"),
            timeout,
            interval=0.25,
            what=f"the Neutron API (see {self.paths.log}/uwsgi.log)",
        )

    def alive(self, name: str, ready, log: str):
        """`ready`, failing at once, with the last ERROR line of the service's `log`, when
        the process `name` ended: a broken install (a plugin's entry point missing, an
        import error) fails the bring-up in seconds instead of at the wait's timeout."""

        def check() -> bool:
            if ready():
                return True
            if self.lab.exited(name):
                path = os.path.join(self.paths.log, log)
                errors = [ln for ln in _read(path).splitlines() if " ERROR " in ln]
                last = errors[-1].split(" ERROR ", 1)[1] if errors else "no ERROR line"
                raise LabError(f"{name} exited while starting: {last} (see {path})")
            return False

        return check

    def api_answers(self) -> bool:
        return self.http_answers(cfg.API_PORT)

    def http_answers(self, port: int, path: str = "/") -> bool:
        """Any HTTP answer: the application is loaded (uWSGI's need-app) and serving (an
        API behind Keystone answers 401 to a request without a token)."""
        try:
            with (
                inside(self.ns),
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5),
            ):
                return True
        except urllib.error.HTTPError as e:
            return e.code < 500
        except OSError:
            return False

    def wait_rpc(self, timeout: float = 120) -> None:
        """neutron-rpc-server is ready when ovsnat's endpoint (started last, by the
        mechanism driver) consumes its queue."""

        def ready() -> bool:
            out = self.rabbitmqctl("list_queues", "name", "consumers")
            return any(
                line.split()[:1] == [cfg_topic()] and line.split()[1] != "0"
                for line in out.splitlines()
                if len(line.split()) == 2
            )

        wait_for(
            self.alive("neutron-rpc", ready, "neutron-rpc.log"),
            timeout,
            interval=0.5,
            what=f"neutron-rpc-server (see {self.paths.log}/neutron-rpc.log)",
        )

    # --- agents ----------------------------------------------------------------------------
    def start_agent(
        self, host: str, external_network: str = "public", report_limits: bool | None = None
    ) -> str:
        """ovsnat-neutron-agent for lab host `host`, in this namespace (see module doc).
        report_limits: it reports what the host's controller reserves (its config file);
        None: as the host's agent did before (a restarted agent keeps reporting them)."""
        if report_limits is None:
            report_limits = host in self.limits_reported
        (self.limits_reported.add if report_limits else self.limits_reported.discard)(host)
        h = self.lab.hosts[host]
        controller = os.path.join(h.rundir, "ovsnat.conf") if report_limits else ""
        conf = cfg.write_agent(
            self.paths, host, h.ovs.db_sock, BRIDGE, external_network, controller
        )
        name = f"agent-{host}"
        self.lab.spawn(
            name,
            [cfg.venv_bin("ovsnat-neutron-agent"), "--config-file", conf],
            ns=self.ns,
            env=NEUTRON_ENV,
        )
        if name not in self.agents:
            self.agents.append(name)
        return name

    def stop_agent(self, host: str) -> None:
        self.stop(f"agent-{host}")

    def agent_log(self, host: str) -> str:
        return _read(os.path.join(self.paths.log, f"ovsnat-agent-{host}.log"))

    def api_requests(self) -> int:
        """REST requests the API has served so far (uWSGI logs one line per request)."""
        return len(self.api_request_lines())

    def api_request_lines(self) -> list[str]:
        """uWSGI's line for each REST request served (written once the answer went out)."""
        return [
            line
            for line in _read(os.path.join(self.paths.log, "uwsgi.log")).splitlines()
            if "=> generated" in line
        ]

    def rpc_log(self) -> str:
        return _read(os.path.join(self.paths.log, "neutron-rpc.log"))

    # --- teardown ------------------------------------------------------------------------
    def keep_logs(self) -> None:
        """The lab's directory goes at teardown: with OVSNAT_OPENSTACK_LOGS set, its logs
        are copied there first (per lab id)."""
        keep = os.environ.get("OVSNAT_OPENSTACK_LOGS")
        if keep and self.paths:  # the lab's directory goes at teardown; keep the logs
            dest = os.path.join(keep, self.lab.id)
            shutil.copytree(self.paths.log, dest, dirs_exist_ok=True)
            for name in os.listdir(self.lab.dir):  # the processes' stdout/stderr
                if name.endswith(".log"):
                    shutil.copy(
                        os.path.join(self.lab.dir, name), os.path.join(dest, f"stdout-{name}")
                    )

    def stop(self, name: str, grace: float = 5.0) -> None:
        """Stop a spawned service and every process of its session. Services fork workers
        (neutron-rpc-server, uWSGI, RabbitMQ's helpers) that may outlive their parent while
        they shut down gracefully (Neutron's rpc workers wait up to 60 s): SIGTERM to the
        session, then SIGKILL to whatever of it is left after `grace` seconds."""
        info = self.lab.procs.get(name)
        if info:
            _stop_session(info["pid"], self.lab.id, grace)
        self.lab.stop_proc(name)

    # --- helpers -------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{cfg.API_PORT}"

    def _port_open(self, port: int) -> bool:
        with inside(self.ns):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False


def _session_members(sid: int, lab_id: str) -> list[int]:
    """Live processes of session `sid` whose environment carries this lab's id."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        ours = f"OVSNAT_LAB_ID={lab_id}".encode() in env
        if fields[0] != "Z" and int(fields[3]) == sid and ours:
            members.append(int(entry))
    return members


def _stop_session(sid: int, lab_id: str, grace: float) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = _session_members(sid, lab_id)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _session_members(sid, lab_id):
            time.sleep(0.05)


def cfg_topic() -> str:
    from ovsnat.neutron.constants import SERVER_TOPIC

    return SERVER_TOPIC


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def require_services() -> None:
    """Fail loudly (never skip) when a part is missing: the install path installs them."""
    needs = {
        "rabbitmq-server (Debian package rabbitmq-server)": f"{RABBIT_BIN}/rabbitmq-server",
        "epmd (Debian package erlang-base)": shutil.which("epmd") or "/nonexistent",
        "Neutron's virtualenv (scripts/install-neutron.sh)": cfg.venv_bin("uwsgi"),
        "mariadbd (Debian package mariadb-server; `make install` installs it)": (
            "/usr/sbin/mariadbd"
        ),
    }
    missing = [what for what, path in needs.items() if not os.path.exists(path)]
    if missing:
        raise LabError("OpenStack lab needs: " + ", ".join(missing) + "; run `make install`")
