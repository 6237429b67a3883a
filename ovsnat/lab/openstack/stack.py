"""OpenStack's own services in the lab (issue 27): Keystone, Placement, Glance, Nova (API and
metadata API under uWSGI, conductor, scheduler, one nova-compute per hypervisor with the
lab's virt driver), Neutron behind Keystone with its Nova notifier on, RabbitMQ, MariaDB.

`Stack` is the lab's `OpenStack` (services.py: RabbitMQ, Neutron's API and RPC server, the
ovsnat agents) with the other services beside it, in the same services namespace and under
the same rules: every listener on that namespace's loopback, every process spawned through
Lab.spawn (recorded by pid, the lab's id in its environment) and stopped by its session.

Bring-up: RabbitMQ starts while MariaDB gets its databases (from the cache, or migrated
from nothing and then cached: stackdb.py); then every API and service starts at once and
the bring-up waits until each answers (APIs: any HTTP answer; RPC services: a consumer on
their queue). Hypervisors' nova-computes are added by `add_compute`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field

from ovsnat.lab.openstack import config as cfg
from ovsnat.lab.openstack import keystone, novaconf, stackdb
from ovsnat.lab.openstack import stackconf as sc
from ovsnat.lab.openstack.services import (
    NEUTRON_ENV,
    OpenStack,
    _session_members,
    cfg_topic,
    require_services,
)
from ovsnat.lab.openstack.virt.guest import destroy_all, host_namespace
from ovsnat.lab.sh import LabError, run, wait_for

# Stopped first to last (the agents, Neutron, RabbitMQ and MariaDB by OpenStack.down after).
SERVICES = (
    "nova-scheduler",
    "nova-conductor",
    "nova-metadata",
    "nova-api",
    "glance-api",
    "placement",
    "keystone",
)


@dataclass
class Stack(OpenStack):
    """The services of one lab; `cached`: the databases came from the cache."""

    sp: sc.StackPaths | None = None
    cached: bool = False
    computes: list[str] = field(default_factory=list)

    @property
    def service_env(self) -> dict[str, str]:
        """Every OpenStack process: setproctitle must not hide the lab's id (services.py)."""
        return dict(NEUTRON_ENV)

    # --- bring-up ------------------------------------------------------------------------
    def up(self) -> Stack:
        require_services()
        missing = [
            c
            for c in (
                "nova-manage",
                "keystone-manage",
                "glance-manage",
                "placement-manage",
                "openstack",
            )
            if not os.path.exists(cfg.venv_bin(c))
        ]
        if missing:
            raise LabError(
                f"Neutron's virtualenv lacks {missing} (extra `lab`): run `make install`"
            )
        t0 = time.monotonic()
        self.ns = self.lab._add_ns("os")
        self.paths = cfg.Paths(os.path.join(self.lab.dir, "openstack"))
        self.sp = sc.StackPaths(self.paths)
        self.sp.make()
        cfg.write_neutron(self.paths)
        cfg.write_uwsgi(self.paths)
        sc.write_all(self.sp)
        self.start_rabbit()
        t1 = time.monotonic()
        self.databases()
        t2 = time.monotonic()
        self.wait_rabbit()
        t3 = time.monotonic()
        self.start_services()
        self.wait_services()
        t4 = time.monotonic()
        self.timings.update(databases=t2 - t1, rabbit_wait=t3 - t2, services=t4 - t3, total=t4 - t0)
        return self

    def databases(self) -> None:
        """From the cache, or made and cached (stackdb.py's doc); with
        OVSNAT_OPENSTACK_FRESH_DB=1 made from nothing and not cached (every service's own
        migrations run: `make test-openstack-mariadb`)."""
        fresh = stackdb.fresh()
        key = "" if fresh else stackdb.cache_key()
        if not fresh and stackdb.restore(self, key):
            self.cached = True
            stackdb.start(self)
            return
        t0 = time.monotonic()
        stackdb.initialize(self)
        took = stackdb.migrate(self)
        self.start_wsgi("keystone")
        self.wait_http("keystone", sc.KEYSTONE_PORT)
        keystone.create_identities(self.ns)
        if not fresh:
            stackdb.shutdown(self)
            stackdb.save(self, key)
            stackdb.start(self)
        self.timings.update({f"migrate {k}": v for k, v in took.items()})
        self.timings["databases made" + ("" if fresh else " and cached")] = time.monotonic() - t0

    def start_services(self) -> None:
        for name in sc.wsgi_apps(self.sp):
            if name not in self.lab.procs:
                self.start_wsgi(name)
        self.start_api()
        self.start_rpc(wait=False)
        nova = [
            a
            for f in ("nova.conf", "nova-db.conf")
            for a in ("--config-file", os.path.join(self.paths.etc, f))
        ]
        for name in ("nova-conductor", "nova-scheduler"):
            self.lab.spawn(
                name,
                [
                    cfg.venv_bin(name),
                    *nova,
                    "--log-file",
                    os.path.join(self.paths.log, f"{name}.log"),
                ],
                ns=self.ns,
                env=self.service_env,
            )

    def wait_services(self, timeout: float = 180) -> None:
        for name, (port, _module, _env) in sc.wsgi_apps(self.sp).items():
            self.wait_http(name, port, timeout)
        self.wait_api(timeout)
        self.wait_consumers([cfg_topic(), "conductor", "scheduler"], timeout)

    def start_wsgi(self, name: str) -> None:
        _port, _module, env = sc.wsgi_apps(self.sp)[name]
        ini = os.path.join(self.paths.etc, f"{name}-uwsgi.ini")
        self.lab.spawn(
            name,
            [cfg.venv_bin("uwsgi"), "--ini", ini],
            ns=self.ns,
            env={**env, **self.service_env, "TMPDIR": self.paths.state},
        )

    def wait_http(self, name: str, port: int, timeout: float = 180) -> None:
        wait_for(
            self.alive(name, lambda: self.http_answers(port), f"{name}.log"),
            timeout,
            interval=0.25,
            what=f"{name} on port {port} (see {self.paths.log}/{name}*.log)",
        )

    def wait_consumers(self, topics: list[str], timeout: float = 180) -> None:
        """RPC servers are ready when their queue has a consumer (one rabbitmqctl call for
        all of them: each call starts an Erlang VM)."""

        def missing() -> list[str]:
            out = self.rabbitmqctl("list_queues", "name", "consumers")
            ready = {
                f[0]
                for f in (line.split() for line in out.splitlines())
                if len(f) == 2 and f[1] != "0"
            }
            return [t for t in topics if t not in ready]

        wait_for(
            lambda: not missing(),
            timeout,
            interval=0.5,
            what=f"consumers on {topics} (see {self.paths.log})",
        )

    # --- nova-compute ---------------------------------------------------------------------
    def add_compute(self, host: str, **nova_options: str) -> str:
        """nova-compute for lab hypervisor `host` (its namespace and OVSDB must exist), in
        this namespace beside the agents: it reaches RabbitMQ and the APIs here, its host's
        OVSDB through the socket, and makes its guests' taps in the host's namespace.
        `nova_options`: [DEFAULT] options of this compute only (Nova's defaults otherwise)."""
        h = self.lab.hosts[host]
        conf = novaconf.write_compute(
            self.sp,
            host,
            self.lab.id,
            host_namespace(self.lab.id, host),
            h.ovs.db_sock,
            nova_options,
        )
        name = f"nova-compute-{host}"
        # nsenter --net, not `ip netns exec`: that gives the process a mount namespace of
        # its own, where the guests' namespaces (`ip netns add`, a bind mount under
        # /run/netns) would be invisible to everyone else
        self.lab.spawn(
            name,
            [
                "nsenter",
                f"--net=/run/netns/{self.ns}",
                cfg.venv_bin("python"),
                "-m",
                "ovsnat.lab.openstack.virt.compute",
                "--config-file",
                os.path.join(self.paths.etc, "nova.conf"),
                "--config-file",
                conf,
            ],
            env=self.service_env,
        )
        if host not in self.computes:
            self.computes.append(host)
        return name

    def wait_computes(self, hosts: list[str], timeout: float = 180) -> None:
        """Each nova-compute consumes its queue and its host is mapped to the cell (the
        scheduler's periodic discovery, stackconf): Nova can then schedule to it."""
        self.wait_consumers([f"compute.{h}" for h in hosts], timeout)

        def mapped() -> bool:
            rows = stackdb.sql(self, "SELECT host FROM host_mappings", "nova_api")
            return set(hosts) <= set(rows.split())

        wait_for(mapped, timeout, interval=0.25, what=f"{hosts} mapped to Nova's cell")

    # --- the `openstack` command ----------------------------------------------------------
    def openstack(
        self, *args: str, user: str = sc.DEMO, project: str = sc.DEMO, timeout: float = 600
    ) -> str:
        """python-openstackclient from the lab's environment, in this namespace, as `user`."""
        return run(
            [cfg.venv_bin("openstack"), *args],
            ns=self.ns,
            timeout=timeout,
            env=keystone.cli_env(user, project),
        ).stdout

    # --- teardown and measurement ---------------------------------------------------------
    def down(self) -> None:
        """Every service at once (each may take its graceful shutdown's seconds; the
        guests' processes go with their nova-compute, guest.py), then the guests, then
        OpenStack.down (the logs kept, if asked)."""
        self.stop_all(
            [
                *(f"nova-compute-{h}" for h in self.computes),
                *(n for n in self.lab.procs if n.startswith("metadata-proxy-")),
                *SERVICES,
                *self.agents,
                "neutron-rpc",
                "neutron-api",
                "rabbitmq",
                "epmd",
                "mariadbd",
            ]
        )
        if self.sp is not None:
            destroy_all(self.sp.guests)
        self.keep_logs()

    def stop_all(self, names: list[str], grace: float = 5.0) -> None:
        """OpenStack.stop for several services side by side: SIGTERM to every process of
        their sessions, SIGKILL to what is left after `grace` seconds."""
        sessions = [self.lab.procs[n]["pid"] for n in names if n in self.lab.procs]
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            pids = [p for sid in sessions for p in _session_members(sid, self.lab.id)]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(
                _session_members(sid, self.lab.id) for sid in sessions
            ):
                time.sleep(0.05)
        for name in names:
            self.lab.stop_proc(name)

    def memory(self) -> dict[str, float]:
        """Proportional set size (MiB) of each service with everything in its session
        (workers, helpers): what the services cost the machine's memory."""
        out = {}
        for name, info in self.lab.procs.items():
            pids = _session_members(info["pid"], self.lab.id)
            out[name] = sum(_pss_kib(p) for p in pids) / 1024
        return out


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
