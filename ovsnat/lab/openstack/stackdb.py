"""The OpenStack lab's MariaDB: one private server for Keystone, Placement, Glance, Nova's
three databases and Neutron, and a cache of the migrated databases.

The server listens on 127.0.0.1:3306 of the services namespace (and on a unix socket in the
lab's directory, for the lab's own commands): the services connect over TCP, so every
database URL, those Nova keeps in its cell mappings included, is the same in every lab.

Why a cache: migrating the seven databases from nothing (neutron-db-manage, nova-manage
four times, keystone-manage, placement-manage, glance-manage), bootstrapping Keystone and
creating the lab's identities costs about a minute of two cores. Their result depends only
on the installed packages, MariaDB's version and the lab's code that writes it, so it is
kept, after a clean shutdown of the server, as a tarball of the data directory and of
Keystone's key repositories, named by a digest of those inputs. A lab whose digest has a
tarball unpacks it and starts the server on it (about a second); any change of a package or
of this code makes a new digest, and the tarball is made again by the next bring-up.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from ovsnat.lab.openstack import config as cfg
from ovsnat.lab.openstack import stackconf as sc
from ovsnat.lab.sh import LabError, run, wait_for

CACHE_DIR = os.environ.get("OVSNAT_OPENSTACK_CACHE", "/var/cache/ovsnat/openstack")
# The lab's modules whose code decides what the cached databases hold, and the values of
# stackconf that end up in them (URLs in Nova's cell mappings, the catalog, the users).
_CODE = ("stackdb.py", "keystone.py")
_VALUES = (
    sc.DATABASES,
    sc.CATALOG,
    sc.SERVICE_USERS,
    sc.REGION,
    sc.KEYSTONE_URL,
    sc.TRANSPORT_URL,
    sc.DEMO,
    sc.ADMIN_USER,
    sc.SERVICE_PROJECT,
    sc.password("x"),
    sc.db_url("nova"),
)


def fresh() -> bool:
    """OVSNAT_OPENSTACK_FRESH_DB=1: every database migrated from nothing, nothing cached
    (`make test-openstack-mariadb`: each service's own migrations run in every bring-up)."""
    return os.environ.get("OVSNAT_OPENSTACK_FRESH_DB", "") not in ("", "0")


def cache_key() -> str:
    """Digest of everything the migrated databases depend on: every package of Neutron's
    virtualenv (names and versions), MariaDB's version, the lab code that writes them."""
    h = hashlib.sha256()
    site = glob.glob(str(cfg.neutron_venv() / "lib" / "python3*" / "site-packages"))
    for d in sorted(n for s in site for n in os.listdir(s) if n.endswith(".dist-info")):
        h.update(d.encode() + b"\n")
    h.update(run(["/usr/sbin/mariadbd", "--version"]).stdout.encode())
    h.update(repr(_VALUES).encode())
    here = Path(__file__).parent
    for name in _CODE:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def cache_path(key: str) -> str:
    return os.path.join(CACHE_DIR, f"databases-{key}.tar.gz")


def mariadbd_argv(stack) -> list[str]:
    p = stack.paths
    return [
        "/usr/sbin/mariadbd",
        "--no-defaults",
        "--user=mysql",
        f"--datadir={stack.sp.datadir}",
        f"--socket={p.mysql_sock}",
        f"--pid-file={p.mysql}/pid",
        "--bind-address=127.0.0.1",
        f"--port={sc.MYSQL_PORT}",
        "--skip-name-resolve",
        "--max-connections=1000",
        "--innodb-buffer-pool-size=128M",
        "--innodb-log-file-size=16M",
        "--innodb-flush-log-at-trx-commit=2",
        "--innodb-doublewrite=0",
        f"--log-error={p.log}/mariadb.log",
    ]


def sql(stack, statements: str, database: str = "") -> str:
    """Run SQL as MariaDB's root through the unix socket (the lab's own commands only)."""
    argv = [
        "mariadb",
        "--no-defaults",
        "-S",
        stack.paths.mysql_sock,
        "-uroot",
        "-N",
        "-B",
        "-e",
        statements,
    ]
    return run(argv + ([database] if database else []), timeout=60).stdout


def start(stack) -> None:
    """Start mariadbd on the data directory in place; returns once it answers."""
    shutil.chown(stack.paths.mysql, "mysql", "mysql")  # its socket and pid file
    proc = stack.lab.spawn("mariadbd", mariadbd_argv(stack), ns=stack.ns)
    admin = ["mariadb-admin", "--no-defaults", "-S", stack.paths.mysql_sock, "-uroot"]

    def answers() -> bool:
        if proc.poll() is not None:
            raise LabError(
                f"mariadbd exited ({proc.returncode}); see {stack.paths.log}/mariadb.log"
            )
        return run([*admin, "ping"], check=False).returncode == 0

    wait_for(answers, 60, interval=0.1, what=f"mariadbd (see {stack.paths.log}/mariadb.log)")


def shutdown(stack) -> None:
    """A clean shutdown (InnoDB flushed): the data directory can then be copied as it is."""
    run(
        ["mariadb-admin", "--no-defaults", "-S", stack.paths.mysql_sock, "-uroot", "shutdown"],
        timeout=60,
    )
    pid = stack.lab.procs.get("mariadbd", {}).get("pid")
    if pid:
        wait_for(
            lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid),
            60,
            interval=0.05,
            what="mariadbd to shut down",
        )
    stack.lab.stop_proc("mariadbd")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def restore(stack, key: str) -> bool:
    """Unpack the cached databases and keys into this lab, if there are any for `key`."""
    path = cache_path(key)
    if not os.path.exists(path):
        return False
    run(["tar", "-xzf", path, "-C", stack.paths.root], timeout=120)
    os.utime(path)  # in use: save() keeps it
    return True


def save(stack, key: str) -> None:
    """Tarball of the data directory and Keystone's keys (the server must be shut down);
    written under a temporary name and renamed, so a concurrent lab never reads half of
    one. Tarballs of other digests unused for a week go (another checkout of other code
    may still use a recent one)."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    path = cache_path(key)
    tmp = f"{path}.{os.getpid()}.tmp"
    root = stack.paths.root
    run(
        [
            "tar",
            "--use-compress-program=gzip -1",
            "-cf",
            tmp,
            "-C",
            root,
            os.path.relpath(stack.sp.datadir, root),
            os.path.relpath(stack.sp.keystone_keys, root),
        ],
        timeout=300,
    )
    os.replace(tmp, path)
    for old in glob.glob(os.path.join(CACHE_DIR, "databases-*.tar.gz")):
        if old != path and time.time() - os.path.getmtime(old) > 7 * 86400:
            os.remove(old)


def initialize(stack) -> None:
    """A new data directory, the server, the databases and their users."""
    shutil.chown(stack.paths.mysql, "mysql", "mysql")
    run(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={stack.sp.datadir}",
            "--user=mysql",
            "--skip-test-db",
            "--auth-root-authentication-method=normal",
        ],
        timeout=120,
    )
    start(stack)
    stmts = []
    for db in sc.DATABASES:
        stmts.append(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
    for user in sorted(set(sc.DATABASES.values())):
        stmts.append(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{sc.password(user)}'")
    for db, user in sc.DATABASES.items():
        stmts.append(f"GRANT ALL ON {db}.* TO '{user}'@'%'")
    sql(stack, "; ".join(stmts) + ";")


def migrations(stack) -> dict[str, list[list[str]]]:
    """Each service's schema commands, in order; the chains are independent of each other.
    Nova's: the API database, cell0's mapping (a URL without anything per-lab in it), the
    cell (its database and transport from nova.conf), then the cell databases."""
    etc, bin_ = stack.paths.etc, cfg.venv_bin
    nova = [
        bin_("nova-manage"),
        "--config-file",
        f"{etc}/nova.conf",
        "--config-file",
        f"{etc}/nova-db.conf",
    ]
    neutron = [
        bin_("neutron-db-manage"),
        *[a for f in ("neutron.conf", "ml2_conf.ini") for a in ("--config-file", f"{etc}/{f}")],
    ]
    keystone = [bin_("keystone-manage"), "--config-file", f"{etc}/keystone.conf"]
    return {
        "nova": [
            nova + ["api_db", "sync"],
            nova + ["cell_v2", "map_cell0", "--database_connection", sc.db_url("nova_cell0")],
            nova + ["cell_v2", "create_cell", "--name", "cell1"],
            nova + ["db", "sync"],
        ],
        "neutron": [neutron + ["upgrade", "heads"]],
        "keystone": [
            keystone + ["db_sync"],
            keystone + ["fernet_setup", "--keystone-user", "root", "--keystone-group", "root"],
            keystone + ["credential_setup", "--keystone-user", "root", "--keystone-group", "root"],
            keystone
            + [
                "bootstrap",
                "--bootstrap-password",
                sc.password(sc.ADMIN_USER),
                "--bootstrap-region-id",
                sc.REGION,
                *[
                    a
                    for i in ("admin", "internal", "public")
                    for a in (f"--bootstrap-{i}-url", sc.KEYSTONE_URL)
                ],
            ],
        ],
        "placement": [
            [bin_("placement-manage"), "--config-file", f"{etc}/placement.conf", "db", "sync"]
        ],
        "glance": [[bin_("glance-manage"), "--config-file", f"{etc}/glance-api.conf", "db_sync"]],
    }


def migrate(stack) -> dict[str, float]:
    """Run the chains side by side (two cores: a chain mostly waits for MariaDB or for its
    own Python start); each command's output goes to the log directory. Returns each
    chain's time."""
    env = dict(os.environ, **stack.service_env)
    chains = {name: list(cmds) for name, cmds in migrations(stack).items()}
    running: dict[str, tuple[subprocess.Popen, object, float, float]] = {}
    took: dict[str, float] = {}
    t0 = time.monotonic()
    while chains or running:
        for name in [n for n in chains if n not in running]:
            argv = chains[name].pop(0)
            # closed when the chain's command ends (below): it outlives this loop
            log = open(os.path.join(stack.paths.log, f"db-{name}.log"), "a")  # noqa: SIM115
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            proc = subprocess.Popen(
                ["ip", "netns", "exec", stack.ns, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            running[name] = (proc, log, time.monotonic(), t0)
            if not chains[name]:
                del chains[name]
        for name, (proc, log, _started, _) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            if proc.returncode:
                for _other, (p, f, _s, _t) in running.items():
                    p.kill()
                    p.wait()
                    f.close()
                raise LabError(
                    f"{name}'s schema command failed ({proc.returncode}); see "
                    f"{stack.paths.log}/db-{name}.log"
                )
            if name not in chains:
                took[name] = time.monotonic() - t0
        time.sleep(0.05)
    return took
