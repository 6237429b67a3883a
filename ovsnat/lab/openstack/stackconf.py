"""Configuration of the OpenStack lab's own services (issue 27): Keystone, Placement, Glance,
Nova (API, metadata API, conductor, scheduler, one nova-compute per hypervisor) and what
Neutron needs beside the lab's usual files to sit behind Keystone and tell Nova about ports.

Everything listens on the services namespace's loopback, as RabbitMQ and Neutron do
(config.py); MariaDB too (127.0.0.1:3306 in that namespace), so every database URL, the
cell mappings Nova stores in its API database among them, is the same in every lab: the
migrated databases can be cached and reused as they are (stackdb.py). Nova's files are
novaconf.py's.

Options are those devstack writes for the same services, cut to what a single-cell cloud
with one conductor needs; whatever is not written is the service's own default, notably
Nova's `vif_plugging_timeout` (300 s) and `[compute] live_migration_wait_for_vif_plug`
(true). Nova's services reconnect to RabbitMQ every second, as Neutron's and the agents do
(config.RABBIT_RECONNECT): with oslo.messaging's backoff, up to 30 s, a test right after a
broker outage would wait that long for the conductor. `vif_plugging_is_fatal` is written as
true although it is the default: the lab's boot must fail, not go on, when Neutron's event
does not come.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ovsnat.lab.openstack import config as cfg

KEYSTONE_PORT = 5000
PLACEMENT_PORT = 8778
GLANCE_PORT = 9292
NOVA_PORT = 8774
METADATA_PORT = 8775
MYSQL_PORT = 3306
REGION = "RegionOne"
KEYSTONE_URL = f"http://127.0.0.1:{KEYSTONE_PORT}/v3"
SERVICE_PROJECT = "service"
ADMIN_USER = "admin"
DEMO = "demo"  # the tenant: project and user of that name, role member
SERVICE_USERS = ("nova", "neutron", "placement", "glance")
# database -> the user that owns it (Nova's three databases belong to one user)
DATABASES = {
    "keystone": "keystone",
    "placement": "placement",
    "glance": "glance",
    "nova_api": "nova",
    "nova": "nova",
    "nova_cell0": "nova",
    "neutron": "neutron",
}
# The catalog: service name -> (type, URL); every interface (public, internal, admin) the
# same URL, as on a single-node devstack.
CATALOG = {
    "keystone": ("identity", KEYSTONE_URL),
    "placement": ("placement", f"http://127.0.0.1:{PLACEMENT_PORT}"),
    "glance": ("image", f"http://127.0.0.1:{GLANCE_PORT}"),
    "nova": ("compute", f"http://127.0.0.1:{NOVA_PORT}/v2.1"),
    "neutron": ("network", f"http://127.0.0.1:{cfg.API_PORT}"),
}
METADATA_SECRET = "ovsnat-lab-metadata-secret"
TRANSPORT_URL = f"rabbit://guest:guest@127.0.0.1:{cfg.RABBIT_PORT}/"
LAB_DRIVER = "ovsnat_lab.LabDriver"  # nova.virt.<this>: see virt/compute.py


def password(user: str) -> str:
    """The lab's passwords: no secret, a lab lives in namespaces of its own machine."""
    return f"lab-{user}"


def db_url(database: str) -> str:
    user = DATABASES[database]
    return (
        f"mysql+pymysql://{user}:{password(user)}@127.0.0.1:{MYSQL_PORT}/{database}?charset=utf8mb4"
    )


@dataclass(frozen=True)
class StackPaths:
    """Where the services' files live, under the lab's OpenStack directory (cfg.Paths)."""

    base: cfg.Paths

    @property
    def etc(self) -> str:
        return self.base.etc

    @property
    def log(self) -> str:
        return self.base.log

    def state(self, *parts: str) -> str:
        return os.path.join(self.base.state, *parts)

    @property
    def datadir(self) -> str:
        return os.path.join(self.base.mysql, "data")

    @property
    def keystone_keys(self) -> str:
        return self.state("keystone")

    @property
    def guests(self) -> str:
        """The lab virt driver's records of its guests (virt/guest.py)."""
        return self.state("guests")

    def make(self) -> None:
        self.base.make()
        for d in (
            self.guests,
            self.state("glance", "images"),
            self.state("glance", "staging"),
            self.state("glance", "tasks"),
            self.state("nova"),
        ):
            os.makedirs(d, exist_ok=True)


def write_file(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


def credentials(section: str, user: str, **extra: str) -> str:
    """A keystoneauth password section: how one service calls another."""
    lines = [
        f"[{section}]",
        "auth_type = password",
        f"auth_url = {KEYSTONE_URL}",
        f"username = {user}",
        f"password = {password(user)}",
        f"project_name = {SERVICE_PROJECT}",
        "user_domain_name = Default",
        "project_domain_name = Default",
        f"region_name = {REGION}",
    ]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def authtoken(user: str, service_type: str) -> str:
    """keystonemiddleware in front of a service's API: it validates tokens as `user`."""
    return credentials(
        "keystone_authtoken", user, www_authenticate_uri=KEYSTONE_URL, service_type=service_type
    )


def write_keystone(p: StackPaths) -> None:
    write_file(
        os.path.join(p.etc, "keystone.conf"),
        f"""[DEFAULT]
log_file = {p.log}/keystone.log
[database]
connection = {db_url("keystone")}
[token]
provider = fernet
[fernet_tokens]
key_repository = {p.keystone_keys}/fernet-keys
[fernet_receipts]
key_repository = {p.keystone_keys}/fernet-keys
[credential]
key_repository = {p.keystone_keys}/credential-keys
""",
    )


def write_placement(p: StackPaths) -> None:
    write_file(
        os.path.join(p.etc, "placement.conf"),
        f"""[DEFAULT]
log_file = {p.log}/placement.log
[api]
auth_strategy = keystone
[placement_database]
connection = {db_url("placement")}
"""
        + authtoken("placement", "placement"),
    )


def write_glance(p: StackPaths) -> None:
    """A file store in the lab's directory; images are uploaded with a PUT of their data."""
    write_file(
        os.path.join(p.etc, "glance-api.conf"),
        f"""[DEFAULT]
log_file = {p.log}/glance-api.log
enabled_backends = fs:file
worker_self_reference_url = {CATALOG["glance"][1]}
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = {p.state("glance", "images")}
[os_glance_staging_store]
filesystem_store_datadir = {p.state("glance", "staging")}
[os_glance_tasks_store]
filesystem_store_datadir = {p.state("glance", "tasks")}
[database]
connection = {db_url("glance")}
[paste_deploy]
flavor = keystone
[oslo_concurrency]
lock_path = {p.state("lock")}
"""
        + authtoken("glance", "image"),
    )
    src = cfg.neutron_venv() / "etc" / "glance" / "glance-api-paste.ini"
    write_file(os.path.join(p.etc, "glance-api-paste.ini"), src.read_text())


def write_neutron(p: StackPaths) -> str:
    """neutron.conf, shared by Neutron's API and RPC server (config.write_neutron writes
    ML2's file and each one's log options): behind keystonemiddleware, on MariaDB, and its
    Nova notifier on (network-vif-plugged and -unplugged, sent every
    `send_events_interval`, 2 s by default, to Nova's API found in the catalog, as the
    `neutron` service user)."""
    return write_file(
        os.path.join(p.etc, "neutron.conf"),
        f"""[DEFAULT]
host = neutron-server
core_plugin = ml2
service_plugins = ovsnat-router
auth_strategy = keystone
transport_url = {TRANSPORT_URL}
state_path = {p.base.state}
notify_nova_on_port_status_changes = true
notify_nova_on_port_data_changes = true
agent_down_time = {cfg.AGENT_DOWN_TIME}
rpc_workers = 1
rpc_state_report_workers = 1
# workers stop within 5 s of SIGTERM (default 60 s), also under the generic lab teardown
graceful_shutdown_timeout = 5
{cfg.RABBIT_RECONNECT}
[database]
connection = {db_url("neutron")}
[oslo_concurrency]
lock_path = {p.state("lock")}
[quotas]
quota_network = -1
quota_subnet = -1
quota_port = -1
quota_router = -1
quota_floatingip = -1
"""
        + authtoken("neutron", "network")
        + credentials("nova", "neutron"),
    )


# --- uWSGI ------------------------------------------------------------------------------
# name -> (port, WSGI module, environment telling the application where its files are)
def wsgi_apps(p: StackPaths) -> dict[str, tuple[int, str, dict[str, str]]]:
    # Nova's WSGI loader takes its paste file from the first of these
    nova_files = "nova-api-paste.ini;nova.conf;nova-db.conf;{}"
    return {
        "keystone": (
            KEYSTONE_PORT,
            "keystone.wsgi.api",
            {"OS_KEYSTONE_CONFIG_DIR": p.etc, "OS_KEYSTONE_CONFIG_FILES": "keystone.conf"},
        ),
        "placement": (PLACEMENT_PORT, "placement.wsgi.api", {"OS_PLACEMENT_CONFIG_DIR": p.etc}),
        "glance-api": (GLANCE_PORT, "glance.wsgi.api", {"OS_GLANCE_CONFIG_DIR": p.etc}),
        "nova-api": (
            NOVA_PORT,
            "nova.wsgi.osapi_compute",
            {
                "OS_NOVA_CONFIG_DIR": p.etc,
                "OS_NOVA_CONFIG_FILES": nova_files.format("nova-api.conf"),
            },
        ),
        "nova-metadata": (
            METADATA_PORT,
            "nova.wsgi.metadata",
            {
                "OS_NOVA_CONFIG_DIR": p.etc,
                "OS_NOVA_CONFIG_FILES": nova_files.format("nova-metadata.conf"),
            },
        ),
    }


def write_uwsgi(p: StackPaths, name: str, port: int, module: str) -> str:
    """As Neutron's API runs in the lab (config.write_uwsgi): one process, a few threads,
    no daemonizing; the lab spawns it and stops it by pid."""
    return write_file(
        os.path.join(p.etc, f"{name}-uwsgi.ini"),
        f"""[uwsgi]
http-socket = 127.0.0.1:{port}
module = {module}:application
master = true
processes = 1
threads = 4
enable-threads = true
lazy-apps = true
need-app = true
die-on-term = true
buffer-size = 65535
add-header = Connection: close
logto = {p.log}/{name}-uwsgi.log
""",
    )


def write_all(p: StackPaths) -> None:
    from ovsnat.lab.openstack.novaconf import write_nova  # it builds on this module

    write_keystone(p)
    write_placement(p)
    write_glance(p)
    write_nova(p)
    write_neutron(p)
    for name, (port, module, _env) in wsgi_apps(p).items():
        write_uwsgi(p, name, port, module)
