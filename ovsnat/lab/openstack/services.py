"""OpenStack services of a lab: RabbitMQ, a real Neutron (API under uWSGI, neutron-rpc-server,
SQLite or MariaDB) and each host's ovsnat-neutron-agent, all inside one lab namespace.

Everything listens on the loopback of the namespace `ovsnat-<labid>-os`; nothing listens in
or touches the root namespace (MariaDB listens nowhere: --skip-networking, unix socket). Every
process is started through Lab.spawn, so it is recorded by pid with the lab's id in its
environment and the lab's teardown (even `ovsnat lab down --all` after a crash) stops it.

Why the agents run here and not in the hypervisor namespaces: an agent talks to exactly two
things, RabbitMQ and its host's OVSDB. OVSDB is a unix socket, reachable from any namespace;
RabbitMQ is on this namespace's loopback. Running the agents here (each with its own `host`)
needs no management network, addresses or routes, and changes nothing the agent does: on a
real hypervisor it reaches RabbitMQ over the management network instead. The controller and
the VMs' plugging stay in the hypervisor namespaces, where the datapath is.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

from ovsnat.lab.openstack import config as cfg, novaapi
from ovsnat.lab.openstack.netns import inside
from ovsnat.lab.sh import LabError, run, wait_for
from ovsnat.lab.topology import BRIDGE, Lab

RABBIT_BIN = "/usr/lib/rabbitmq/bin"
# setproctitle (neutron's workers, cotyledon's master) otherwise overwrites the memory that
# /proc/PID/environ shows, and the lab's teardown, which stops only processes whose
# environment carries the lab's id, would leave neutron-rpc-server running.
NEUTRON_ENV = {"PYTHONWARNINGS": "ignore", "SPT_NOENV": "1"}
# Neutron's schema from its models, then what migration c33da356b165 inserts besides its
# table: the default security group rule templates (egress IPv4 and IPv6 for every group,
# ingress from the group itself for the default group), from the migration's own list, the
# migration's way. Without them every group Neutron makes has no rule at all.
SCHEMA_FROM_MODELS = """import glob, importlib.util, os, sys, sqlalchemy as sa
import neutron
from neutron.db.migration.models import head
engine = sa.create_engine(sys.argv[1])
head.get_metadata().create_all(engine)
path, = glob.glob(os.path.join(os.path.dirname(neutron.__file__), "db", "migration",
                  "alembic_migrations", "versions", "*", "expand",
                  "c33da356b165_security_group_default_rules.py"))
spec = importlib.util.spec_from_file_location("c33da356b165", path)
migration = importlib.util.module_from_spec(spec)
spec.loader.exec_module(migration)
table = sa.Table(migration.table_name, sa.MetaData(), autoload_with=engine)
with engine.begin() as conn:
    for rule in migration.default_template_rules:
        rule = dict(rule)
        res = conn.execute(sa.insert(migration.standardattr).values(
            {"description": rule.pop("description"), "resource_type": migration.table_name}))
        rule["standard_attr_id"] = res.inserted_primary_key[0]
        conn.execute(sa.insert(table).values(rule))
"""


@dataclass
class OpenStack:
    """The services of one lab. `db`: "sqlite" (schema from Neutron's models: alembic
    migrations cannot run on SQLite) or "mariadb" (Neutron's real migrations)."""

    lab: Lab
    db: str = "sqlite"
    ns: str = ""
    paths: cfg.Paths | None = None
    rabbit_env: dict = field(default_factory=dict)
    agents: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    schema: str = ""        # MariaDB: `neutron-db-manage current` after the migrations

    @property
    def neutron_env(self) -> dict[str, str]:
        """On SQLite, Neutron's processes load the lab's sqlite_site/sitecustomize.py."""
        if self.db != "sqlite":
            return dict(NEUTRON_ENV)
        return {**NEUTRON_ENV, "PYTHONPATH": os.path.join(os.path.dirname(__file__),
                                                          "sqlite_site")}

    # --- bring-up ------------------------------------------------------------------------
    def up(self) -> "OpenStack":
        """Start everything; RabbitMQ boots while the database schema is made."""
        require_services(self.db)
        t0 = time.monotonic()
        self.ns = self.lab._add_ns("os")
        self.paths = cfg.Paths(os.path.join(self.lab.dir, "openstack"))
        self.paths.make()
        cfg.write_neutron(self.paths, self.db)
        cfg.write_uwsgi(self.paths)
        self.start_rabbit()
        self.start_nova_api()
        t1 = time.monotonic()
        self.make_schema()
        t2 = time.monotonic()
        self.wait_rabbit()
        t3 = time.monotonic()
        self.start_neutron()
        t4 = time.monotonic()
        self.timings.update(schema=t2 - t1, rabbit_wait=t3 - t2, neutron=t4 - t3,
                            total=t4 - t0)
        return self

    def start_rabbit(self) -> None:
        """epmd first, in the foreground and on loopback: RabbitMQ would otherwise start
        its own as a daemon, which would outlive the lab and listen on every address."""
        self.rabbit_env = cfg.write_rabbit(self.paths, self.lab.id)
        self.lab.spawn("epmd", ["epmd", "-address", "127.0.0.1"], ns=self.ns,
                       env=self.rabbit_env)
        self.lab.spawn("rabbitmq", [f"{RABBIT_BIN}/rabbitmq-server"], ns=self.ns,
                       env=self.rabbit_env)

    def wait_rabbit(self, timeout: float = 60, interval: float = 0.2) -> float:
        """RabbitMQ opens its AMQP listener last, once it is ready for clients. Returns the
        wall clock time the listener was first seen open (at most `interval` late)."""
        wait_for(lambda: self._port_open(cfg.RABBIT_PORT), timeout, interval=interval,
                 what="RabbitMQ to listen (see rabbitmq.log in the lab dir)")
        return time.time()

    def stop_rabbit(self) -> None:
        self.stop("rabbitmq")

    def restart_rabbit(self) -> float:
        """Same node, same database: users and durable objects survive as after a broker
        restart (the RPC queues, not durable, are declared again by their consumers).
        Returns when RabbitMQ was back: its listener first seen open (polled every 20 ms)."""
        self.lab.spawn("rabbitmq", [f"{RABBIT_BIN}/rabbitmq-server"], ns=self.ns,
                       env=self.rabbit_env)
        return self.wait_rabbit(interval=0.02)

    def rabbitmqctl(self, *args: str, timeout: float = 60) -> str:
        return run([f"{RABBIT_BIN}/rabbitmqctl", "-q", *args], ns=self.ns,
                   env=self.rabbit_env, timeout=timeout).stdout

    def make_schema(self) -> None:
        if self.db == "sqlite":
            run([cfg.venv_bin("python"), "-c", SCHEMA_FROM_MODELS,
                 cfg.db_url(self.paths, "sqlite")], timeout=120)
            return
        from ovsnat.lab.openstack.mariadb import start_mariadb
        start_mariadb(self)
        etc = self.paths.etc
        log = os.path.join(self.paths.log, "db-manage.log")
        with open(log, "w") as f:
            proc = subprocess.run([cfg.venv_bin("neutron-db-manage"),
                                   "--config-file", f"{etc}/neutron.conf",
                                   "--config-file", f"{etc}/ml2_conf.ini", "upgrade", "heads"],
                                  stdout=f, stderr=subprocess.STDOUT, timeout=600)
        if proc.returncode:
            raise LabError(f"neutron-db-manage upgrade heads failed; see {log}")
        self.schema = run([cfg.venv_bin("neutron-db-manage"), "--config-file",
                           f"{etc}/neutron.conf", "--config-file", f"{etc}/ml2_conf.ini",
                           "current"], timeout=120).stdout

    def start_nova_api(self) -> None:
        """The stand-in of Nova's API that Neutron's Nova notifier posts events to
        (novaapi.py); it listens long before Neutron sends its first event."""
        self.lab.spawn("nova-api", [sys.executable, "-m", "ovsnat.lab.openstack.novaapi",
                                    "--listen", f"127.0.0.1:{novaapi.PORT}",
                                    "--dir", self.paths.nova], ns=self.ns)

    @property
    def nova_api(self) -> novaapi.Records:
        """What Nova's API knows: its instances, the events Neutron sent it."""
        return novaapi.Records(self.paths.nova)

    def start_neutron(self) -> None:
        self.start_api()
        self.start_rpc(wait=False)
        self.wait_api()
        self.wait_rpc()
        wait_for(lambda: self._port_open(novaapi.PORT), 10, interval=0.05,
                 what=f"the stand-in of Nova's API (see {self.lab.dir}/nova-api.log)")

    def start_rpc(self, wait: bool = True) -> None:
        self.lab.spawn("neutron-rpc", cfg.rpc_argv(self.paths), ns=self.ns,
                       env=self.neutron_env)
        if wait:
            self.wait_rpc()

    def start_api(self) -> None:
        ini = os.path.join(self.paths.etc, "neutron-api-uwsgi.ini")
        self.lab.spawn("neutron-api", [cfg.venv_bin("uwsgi"), "--ini", ini], ns=self.ns,
                       env={**cfg.api_env(self.paths), **self.neutron_env})

    def stop_api(self) -> None:
        self.stop("neutron-api")

    def wait_api(self, timeout: float = 120) -> None:
        wait_for(self.api_answers, timeout, interval=0.25,
                 what=f"the Neutron API (see {self.paths.log}/uwsgi.log)")

    def api_answers(self) -> bool:
        try:
            with inside(self.ns):
                with urllib.request.urlopen(f"{self.endpoint}/v2.0/networks",
                                            timeout=5) as r:
                    return r.status == 200
        except OSError:
            return False

    def wait_rpc(self, timeout: float = 120) -> None:
        """neutron-rpc-server is ready when ovsnat's endpoint (started last, by the
        mechanism driver) consumes its queue."""
        def ready() -> bool:
            out = self.rabbitmqctl("list_queues", "name", "consumers")
            return any(line.split()[:1] == [cfg_topic()] and line.split()[1] != "0"
                       for line in out.splitlines() if len(line.split()) == 2)
        wait_for(ready, timeout, interval=0.5,
                 what=f"neutron-rpc-server (see {self.paths.log}/neutron-rpc.log)")

    # --- agents ----------------------------------------------------------------------------
    def start_agent(self, host: str, external_network: str = "",
                    report_limits: bool = False) -> str:
        """ovsnat-neutron-agent for lab host `host`, in this namespace (see module doc).
        report_limits: it reports what the host's controller reserves (its config file)."""
        h = self.lab.hosts[host]
        controller = os.path.join(h.rundir, "ovsnat.conf") if report_limits else ""
        conf = cfg.write_agent(self.paths, host, h.ovs.db_sock, BRIDGE, external_network,
                               controller)
        name = f"agent-{host}"
        self.lab.spawn(name, [cfg.venv_bin("ovsnat-neutron-agent"), "--config-file", conf],
                       ns=self.ns, env=NEUTRON_ENV)
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
        return [line for line in _read(os.path.join(self.paths.log, "uwsgi.log")).splitlines()
                if "=> generated" in line]

    def rpc_log(self) -> str:
        return _read(os.path.join(self.paths.log, "neutron-rpc.log"))

    # --- teardown ------------------------------------------------------------------------
    def down(self) -> None:
        """Stop in reverse order of dependence (agents, Neutron, broker, database); the
        lab's own teardown then removes the namespace and files and catches stragglers."""
        for name in [*reversed(self.agents), "neutron-rpc", "neutron-api", "nova-api",
                     "rabbitmq", "epmd", "mariadbd"]:
            self.stop(name)
        keep = os.environ.get("OVSNAT_OPENSTACK_LOGS")
        if keep and self.paths:     # the lab's directory goes at teardown; keep the logs
            dest = os.path.join(keep, self.lab.id)
            shutil.copytree(self.paths.log, dest, dirs_exist_ok=True)
            for name in os.listdir(self.lab.dir):       # the processes' stdout/stderr
                if name.endswith(".log"):
                    shutil.copy(os.path.join(self.lab.dir, name),
                                os.path.join(dest, f"stdout-{name}"))

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
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
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


def require_services(db: str) -> None:
    """Fail loudly (never skip) when a part is missing: the install path installs them."""
    needs = {"rabbitmq-server (Debian package rabbitmq-server)": f"{RABBIT_BIN}/rabbitmq-server",
             "epmd (Debian package erlang-base)": shutil.which("epmd") or "/nonexistent",
             "Neutron's virtualenv (scripts/install-neutron.sh)": cfg.venv_bin("uwsgi")}
    if db == "mariadb":
        needs["mariadbd (Debian package mariadb-server; `make install` installs it)"] = \
            "/usr/sbin/mariadbd"
    missing = [what for what, path in needs.items() if not os.path.exists(path)]
    if missing:
        raise LabError("OpenStack lab needs: " + ", ".join(missing) + "; run `make install`")
