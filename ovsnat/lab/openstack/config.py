"""Configuration files of the OpenStack lab shared by every service: where a lab's files
live, Neutron's virtualenv, RabbitMQ, Neutron's ML2 and uWSGI files, and each host's
ovsnat-neutron-agent (neutron.conf itself, behind Keystone, is stackconf.write_neutron).

What ovsnat needs from Neutron shapes ML2: tenant networks are segments of one physical L2
fabric (physnet `fabric`), reached through each bridge's fabric port, one VLAN each (100-199)
or untagged (flat); the external network is the uplink (flat physnet `external`). Agents
report only `fabric`, so a port on the external network itself never binds to ovsnat (ovsnat
puts no VM directly on the uplink).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
API_PORT = 9696
RABBIT_PORT = 5672
TENANT_PHYSNET = "fabric"
EXTERNAL_PHYSNET = "external"
# A physnet no lab host reaches (no VLAN range: provider networks only): the second segment
# of a multi-segment network, which ovsnat binds on its fabric segment.
ELSEWHERE_PHYSNET = "elsewhere"
# The external physnet's VLANs are provider networks only (no range): an admin's second
# external network, tagged on the uplink (docs/routers.md item 3).
VLAN_RANGE = (100, 199)
REPORT_INTERVAL = 5  # s, the agents' heartbeat in the lab (Neutron's default is 30)
# s, Neutron's default: an agent is counted dead this long after its last heartbeat, and
# Neutron binds no port to its host then. 20 s (4 heartbeats) was too short for this loaded
# machine: an agent whose heartbeats were late after the rpc-server's restart was dead for
# a moment and Nova's boot there failed (PortBindingFailed).
AGENT_DOWN_TIME = 75


# oslo.messaging's defaults reconnect to a returning RabbitMQ with a backoff that grows to
# 30 s, plus 1 s per attempt: after a 30 s outage, a pushed change could wait 10 s and more
# for a connection to come back. Retrying every second (Neutron's processes and the agents
# alike) brings them back within about a second of the broker's return. The cost: one
# connection attempt per second per connection while the broker is away.
RABBIT_RECONNECT = """[oslo_messaging_rabbit]
rabbit_interval_max = 1
kombu_reconnect_delay = 0
"""


# Neutron's Nova notifier batches its events (send_events_interval, its default: the first at
# once, later ones within 2 s of the last send wait for the batch); the lab does not set it.
SEND_EVENTS_INTERVAL = 2  # s


def neutron_venv() -> Path:
    """Neutron's virtualenv, made by scripts/install-neutron.sh (VENV_NEUTRON overrides)."""
    return Path(os.environ.get("VENV_NEUTRON", REPO / ".venv-neutron"))


def venv_bin(name: str) -> str:
    return str(neutron_venv() / "bin" / name)


@dataclass(frozen=True)
class Paths:
    """Where one lab's OpenStack files live (all under the lab's own directory)."""

    root: str

    @property
    def etc(self) -> str:
        return os.path.join(self.root, "etc")

    @property
    def state(self) -> str:
        return os.path.join(self.root, "state")

    @property
    def log(self) -> str:
        return os.path.join(self.root, "log")

    @property
    def rabbit(self) -> str:
        return os.path.join(self.root, "rabbitmq")

    @property
    def mysql(self) -> str:
        return os.path.join(self.root, "mysql")

    @property
    def mysql_sock(self) -> str:
        return os.path.join(self.mysql, "sock")

    def make(self) -> None:
        for d in (
            self.etc,
            self.state,
            self.log,
            self.rabbit,
            self.mysql,
            os.path.join(self.state, "lock"),
        ):
            os.makedirs(d, exist_ok=True)


def _write(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


def write_neutron(paths: Paths) -> None:
    """The files Neutron's API and RPC server read beside neutron.conf (stackconf: Keystone,
    MariaDB, the Nova notifier): ML2, and each process's own log file (uWSGI gives the API
    no command line of its own)."""
    lo, hi = VLAN_RANGE
    _write(
        os.path.join(paths.etc, "ml2_conf.ini"),
        f"""[ml2]
type_drivers = flat,vlan
tenant_network_types = vlan
mechanism_drivers = ovsnat
extension_drivers = port_security
[ml2_type_flat]
flat_networks = {TENANT_PHYSNET},{EXTERNAL_PHYSNET}
[ml2_type_vlan]
network_vlan_ranges = {TENANT_PHYSNET}:{lo}:{hi},{ELSEWHERE_PHYSNET},{EXTERNAL_PHYSNET}
""",
    )
    _write(
        os.path.join(paths.etc, "api.conf"),
        f"""[DEFAULT]
log_file = {paths.log}/neutron-api.log
""",
    )
    _write(
        os.path.join(paths.etc, "rpc.conf"),
        f"""[DEFAULT]
log_file = {paths.log}/neutron-rpc.log
debug = true
default_log_levels = {RPC_LOG_LEVELS}
""",
    )
    src = neutron_venv() / "etc" / "neutron" / "api-paste.ini"
    _write(os.path.join(paths.etc, "api-paste.ini"), src.read_text())


def api_env(paths: Paths) -> dict[str, str]:
    """Neutron's WSGI app reads its config files from these, which must be in the
    environment before uWSGI starts (uWSGI's `env =` comes too late for Python)."""
    return {
        "OS_NEUTRON_CONFIG_DIR": paths.etc,
        "OS_NEUTRON_CONFIG_FILES": "neutron.conf;ml2_conf.ini;api.conf",
        "PYTHONWARNINGS": "ignore",
        "TMPDIR": paths.state,
    }


def write_uwsgi(paths: Paths) -> str:
    """As devstack runs neutron-api: one process, a few threads. No daemonizing: the lab
    spawns it and stops it by pid (its own session)."""
    return _write(
        os.path.join(paths.etc, "neutron-api-uwsgi.ini"),
        f"""[uwsgi]
http-socket = 127.0.0.1:{API_PORT}
module = neutron.wsgi.api:application
master = true
processes = 1
threads = 4
enable-threads = true
lazy-apps = true
need-app = true
die-on-term = true
buffer-size = 65535
add-header = Connection: close
logto = {paths.log}/uwsgi.log
""",
    )


# oslo.messaging at debug (one 'received message' line per RPC request the server gets: how
# the lab counts what agents ask of Neutron); Neutron itself at info, to keep the log small.
RPC_LOG_LEVELS = (
    "amqp=WARN,amqplib=WARN,sqlalchemy=WARN,oslo.messaging=DEBUG,"
    "oslo_messaging=DEBUG,iso8601=WARN,urllib3.connectionpool=WARN,"
    "stevedore=WARN,keystoneauth=WARN,oslo_policy=INFO,neutron=INFO,"
    "neutron_lib=INFO,ovsnat=DEBUG"
)


def rpc_argv(paths: Paths) -> list[str]:
    """neutron-rpc-server with its own log file and log levels (rpc.conf)."""
    return [venv_bin("neutron-rpc-server")] + [
        arg
        for name in ("neutron.conf", "ml2_conf.ini", "rpc.conf")
        for arg in ("--config-file", os.path.join(paths.etc, name))
    ]


def write_rabbit(paths: Paths, lab_id: str) -> dict[str, str]:
    """RabbitMQ's files and environment: a node of this lab only (own name, cookie via
    HOME, database, logs), listening on the namespace's loopback only, AMQP and Erlang
    distribution alike."""
    conf = _write(
        os.path.join(paths.rabbit, "rabbitmq.conf"),
        f"listeners.tcp.default = 127.0.0.1:{RABBIT_PORT}\n",
    )
    plugins = _write(os.path.join(paths.rabbit, "enabled_plugins"), "[].\n")
    return {
        "HOME": paths.rabbit,
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODENAME": f"ovsnat-{lab_id}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(RABBIT_PORT),
        "RABBITMQ_MNESIA_BASE": os.path.join(paths.rabbit, "mnesia"),
        "RABBITMQ_LOG_BASE": paths.log,
        "RABBITMQ_LOGS": "-",
        "RABBITMQ_CONFIG_FILE": conf,
        "RABBITMQ_ENABLED_PLUGINS_FILE": plugins,
        "RABBITMQ_PID_FILE": os.path.join(paths.rabbit, "pid"),
        "RABBITMQ_CONF_ENV_FILE": "/dev/null",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }


def write_agent(
    paths: Paths,
    host: str,
    db_sock: str,
    bridge: str,
    external_network: str = "",
    controller_config: str = "",
) -> str:
    """One host's ovsnat-neutron-agent.conf. The agent runs in the services namespace
    (RabbitMQ on its loopback) and reaches the host's OVSDB through its unix socket.
    `controller_config`: the host's controller's file, whose reserved ranges the agent
    reports to Neutron (empty: none reported, so the controller judges them)."""
    return _write(
        os.path.join(paths.etc, f"ovsnat-agent-{host}.conf"),
        f"""[DEFAULT]
host = {host}
transport_url = rabbit://guest:guest@127.0.0.1:{RABBIT_PORT}/
log_file = {paths.log}/ovsnat-agent-{host}.log
{RABBIT_RECONNECT}
[AGENT]
report_interval = {REPORT_INTERVAL}
log_agent_heartbeats = true
[ovs]
integration_bridge = {bridge}
ovsdb_connection = unix:{db_sock}
[ovsnat]
physical_networks = {TENANT_PHYSNET}
external_network = {external_network}
controller_config = {controller_config}
""",
    )
