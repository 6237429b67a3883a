"""Nova's configuration in the OpenStack lab: the control plane's files (API, metadata API,
conductor, scheduler: nova.conf and one file per WSGI application and for the databases)
and each hypervisor's nova-compute (no database, the lab's virt driver, os-vif on that
host's OVSDB). stackconf.py's module doc says which options are written and which are left
at Nova's defaults, and why.
"""

from __future__ import annotations

import os

from ovsnat.lab.openstack import config as cfg
from ovsnat.lab.openstack.stackconf import (
    LAB_DRIVER,
    METADATA_SECRET,
    REGION,
    TRANSPORT_URL,
    StackPaths,
    authtoken,
    credentials,
    db_url,
    write_file,
)


def write_nova(p: StackPaths) -> None:
    """nova.conf, shared by every Nova service; nova-db.conf adds the databases for all but
    nova-compute (one cell, one conductor: devstack's `singleconductor`); nova-compute adds
    its host's file."""
    write_file(
        os.path.join(p.etc, "nova.conf"),
        f"""[DEFAULT]
transport_url = {TRANSPORT_URL}
my_ip = 127.0.0.1
state_path = {p.state("nova")}
graceful_shutdown_timeout = 5
vif_plugging_is_fatal = true
[api]
auth_strategy = keystone
[scheduler]
# a new nova-compute is mapped to the cell within 2 s (devstack runs
# `nova-manage cell_v2 discover_hosts` once instead)
discover_hosts_in_cells_interval = 2
workers = 1
[conductor]
workers = 1
[oslo_concurrency]
lock_path = {p.state("lock")}
[vnc]
enabled = false
[os_vif_ovs]
# only nova-compute plugs; its own file names its host's OVSDB
ovsdb_connection = unix:/nonexistent
{cfg.RABBIT_RECONNECT}"""
        + authtoken("nova", "compute")
        + credentials("placement", "nova")
        + credentials(
            "neutron",
            "nova",
            service_metadata_proxy="true",
            metadata_proxy_shared_secret=METADATA_SECRET,
        )
        + credentials("service_user", "nova", send_service_user_token="true")
        + f"[glance]\nregion_name = {REGION}\n",
    )
    # Not for nova-compute, which reaches the databases only through the conductor (a
    # compute with database options tries them, and Nova logs that it may not)
    write_file(
        os.path.join(p.etc, "nova-db.conf"),
        f"""[DEFAULT]
# The scheduler's periodic tasks (the host discovery above) start at once: Nova's default
# delays their start by a random 0-60 s against stampedes, and a bring-up waited 3-47 s
# for its hypervisors to be mapped (computes and their records long ready).
periodic_fuzzy_delay = 0
[api_database]
connection = {db_url("nova_api")}
[database]
connection = {db_url("nova")}
""",
    )
    for name, log in (
        ("nova-api.conf", "nova-api.log"),
        ("nova-metadata.conf", "nova-metadata.log"),
    ):
        write_file(os.path.join(p.etc, name), f"[DEFAULT]\nlog_file = {p.log}/{log}\n")
    src = cfg.neutron_venv() / "etc" / "nova" / "api-paste.ini"
    write_file(os.path.join(p.etc, "nova-api-paste.ini"), src.read_text())


def write_compute(
    p: StackPaths,
    host: str,
    lab_id: str,
    host_ns: str,
    db_sock: str,
    options: dict[str, str] | None = None,
) -> str:
    """nova-compute of lab hypervisor `host`: its name (Nova's host and node, Neutron's
    binding host, the ovsnat agent's host), the lab's virt driver, os-vif toward the host's
    OVSDB. os-vif's privileged helper runs without sudo (the lab runs as root). `options`:
    more [DEFAULT] options for this compute only (the lab sets none of Nova's vif options
    but where a test says why)."""
    extra = "".join(f"{k} = {v}\n" for k, v in (options or {}).items())
    state = p.state(f"nova-{host}")
    os.makedirs(os.path.join(state, "instances"), exist_ok=True)
    helper = cfg.venv_bin("privsep-helper")
    return write_file(
        os.path.join(p.etc, f"nova-compute-{host}.conf"),
        f"""[DEFAULT]
host = {host}
compute_driver = {LAB_DRIVER}
state_path = {state}
instances_path = {state}/instances
log_file = {p.log}/nova-compute-{host}.log
{extra}[os_vif_ovs]
ovsdb_connection = unix:{db_sock}
[vif_plug_ovs_privileged]
helper_command = {helper}
[ovsnat_lab]
lab_id = {lab_id}
host_namespace = {host_ns}
guests_dir = {p.guests}
""",
    )
