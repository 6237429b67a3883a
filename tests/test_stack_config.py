"""The OpenStack lab's service configuration (ovsnat/lab/openstack/stackconf.py, stackdb.py)
without running anything: where the services listen, what nova-compute may reach, which of
Nova's defaults the lab keeps, and when the cached databases must be made again."""

from __future__ import annotations

import configparser
import glob
import os
import re
import subprocess
from pathlib import Path

from ovsnat.lab.openstack import config as cfg
from ovsnat.lab.openstack import novaconf, stackdb
from ovsnat.lab.openstack import stackconf as sc


def _written(tmp_path) -> sc.StackPaths:
    paths = sc.StackPaths(cfg.Paths(str(tmp_path / "openstack")))
    paths.make()
    cfg.write_neutron(paths.base)
    cfg.write_uwsgi(paths.base)
    sc.write_all(paths)
    novaconf.write_compute(paths, "hv1", "abc123", "ovsnat-abc123-hv1", "/run/x/db.sock")
    novaconf.write_compute(
        paths,
        "hv4",
        "abc123",
        "ovsnat-abc123-hv4",
        "/run/y/db.sock",
        {"vif_plugging_timeout": "10"},
    )
    return paths


def test_every_listener_and_every_url_is_on_the_loopback(tmp_path):
    paths = _written(tmp_path)
    files = glob.glob(os.path.join(paths.etc, "*"))
    text = "".join(Path(f).read_text() for f in files)
    sockets = re.findall(r"^http-socket = (\S+)$", text, re.M)
    assert len(sockets) == len(sc.wsgi_apps(paths)) + 1 and all(
        s.startswith("127.0.0.1:") for s in sockets
    )
    neutron = configparser.ConfigParser(interpolation=None)
    neutron.read([os.path.join(paths.etc, f) for f in ("neutron.conf", "ml2_conf.ini")])
    assert neutron.get("database", "connection") == sc.db_url("neutron")
    assert neutron.get("DEFAULT", "auth_strategy") == "keystone"
    # Neutron tells Nova's API (found in Keystone's catalog) about its ports, as `neutron`
    assert neutron.get("DEFAULT", "notify_nova_on_port_status_changes") == "true"
    assert neutron.get("nova", "username") == "neutron"
    assert not neutron.has_option("nova", "endpoint")
    hosts = set(re.findall(r"(?:https?|rabbit|mysql\+pymysql)://(?:[^@/\s]*@)?([^:/\s?]+)", text))
    assert hosts == {"127.0.0.1"}
    argv = stackdb.mariadbd_argv(type("S", (), {"paths": paths.base, "sp": paths})())
    assert "--bind-address=127.0.0.1" in argv


def test_nova_compute_gets_no_database_and_nova_keeps_its_vif_defaults(tmp_path):
    paths = _written(tmp_path)
    compute = configparser.ConfigParser(interpolation=None)
    compute.read(
        [os.path.join(paths.etc, "nova.conf"), os.path.join(paths.etc, "nova-compute-hv1.conf")]
    )
    assert not compute.has_section("database") and not compute.has_section("api_database")
    assert compute.get("DEFAULT", "host") == "hv1"
    assert compute.get("DEFAULT", "compute_driver") == sc.LAB_DRIVER
    assert compute.get("os_vif_ovs", "ovsdb_connection") == "unix:/run/x/db.sock"
    assert compute.get("DEFAULT", "vif_plugging_is_fatal") == "true"
    nova_text = "".join(
        Path(f).read_text()
        for f in glob.glob(os.path.join(paths.etc, "nova*"))
        if not f.endswith("-hv4.conf")
    )
    assert "vif_plugging_timeout" not in nova_text  # Nova's 300 s
    assert "live_migration_wait_for_vif_plug" not in nova_text  # Nova's true
    # a compute's own options (the rejected-destination test's source) are its alone
    hv4 = configparser.ConfigParser(interpolation=None)
    hv4.read(
        [os.path.join(paths.etc, "nova.conf"), os.path.join(paths.etc, "nova-compute-hv4.conf")]
    )
    assert hv4.get("DEFAULT", "vif_plugging_timeout") == "10"
    assert hv4.get("DEFAULT", "host") == "hv4"
    apps = sc.wsgi_apps(paths)
    for name in ("nova-api", "nova-metadata"):
        files = apps[name][2]["OS_NOVA_CONFIG_FILES"].split(";")
        assert files[0] == "nova-api-paste.ini" and "nova-db.conf" in files


def test_the_cache_digest_changes_with_any_package_and_with_the_lab_code(tmp_path, monkeypatch):
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    (site / "nova-34.0.0.dist-info").mkdir(parents=True)
    monkeypatch.setattr(cfg, "neutron_venv", lambda: tmp_path / "venv")
    monkeypatch.setattr(
        stackdb,
        "run",
        lambda argv, **kw: subprocess.CompletedProcess(
            argv, 0, "mariadbd  Ver 10.11.19-MariaDB\n", ""
        ),
    )
    first = stackdb.cache_key()
    assert stackdb.cache_key() == first
    (site / "oslo.db-18.1.1.dist-info").mkdir()
    second = stackdb.cache_key()
    assert second != first
    monkeypatch.setattr(sc, "REGION", "RegionTwo")
    monkeypatch.setattr(stackdb, "_VALUES", (sc.REGION,))
    assert stackdb.cache_key() not in (first, second)
