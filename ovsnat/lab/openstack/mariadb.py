"""MariaDB for the OpenStack lab (the option that runs Neutron's real alembic migrations).

A private server per lab: its own datadir under the lab directory, started by hand (no
systemd), listening on no address at all (--skip-networking): Neutron reaches it through its
unix socket, so it cannot collide with another lab or a system database.
"""

from __future__ import annotations

import os
import shutil

from ovsnat.lab.sh import run, wait_for


def start_mariadb(services) -> None:
    """Create the datadir, start mariadbd in the services namespace, create Neutron's
    database and user."""
    paths = services.paths
    data = os.path.join(paths.mysql, "data")
    shutil.chown(paths.mysql, "mysql", "mysql")
    run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=mysql",
         "--skip-test-db", "--auth-root-authentication-method=normal"], timeout=120)
    services.lab.spawn("mariadbd", [
        "/usr/sbin/mariadbd", "--no-defaults", "--user=mysql", f"--datadir={data}",
        f"--socket={paths.mysql_sock}", f"--pid-file={paths.mysql}/pid", "--skip-networking",
        "--skip-name-resolve", "--innodb-buffer-pool-size=128M",
        "--innodb-flush-log-at-trx-commit=2", f"--log-error={paths.log}/mariadb.log"],
        ns=services.ns)
    admin = ["mariadb-admin", "--no-defaults", "-S", paths.mysql_sock, "-uroot"]
    wait_for(lambda: run([*admin, "ping"], check=False).returncode == 0, 60, interval=0.2,
             what=f"mariadbd (see {paths.log}/mariadb.log)")
    run(["mariadb", "--no-defaults", "-S", paths.mysql_sock, "-uroot", "-e",
         "CREATE DATABASE neutron CHARACTER SET utf8mb4; "
         "CREATE USER 'neutron'@'localhost' IDENTIFIED BY 'neutron'; "
         "GRANT ALL ON neutron.* TO 'neutron'@'localhost';"])
