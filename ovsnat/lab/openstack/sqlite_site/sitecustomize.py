"""Lab only: let several Neutron processes share one SQLite file without "database is
locked" errors.

Loaded (as sitecustomize) only by the lab's Neutron processes when the lab runs on SQLite:
the lab puts this directory on their PYTHONPATH. Neutron's API (uWSGI) and neutron-rpc-server
(two worker processes) write concurrently: agents' heartbeats, port status, ports. oslo.db
opens SQLite transactions with a plain (deferred) BEGIN; when two of them read and then both
try to write, SQLite refuses one at once (SQLITE_BUSY: waiting could deadlock), and Neutron
returns a 500. BEGIN IMMEDIATE takes the write lock up front, so transactions queue on the
busy timeout instead of failing. The MariaDB option needs none of this.
"""

from sqlalchemy import event
from sqlalchemy.engine import Engine


@event.listens_for(Engine, "before_cursor_execute", retval=True)
def _begin_immediate(conn, cursor, statement, parameters, context, executemany):
    if conn.dialect.name == "sqlite" and statement.strip().upper() == "BEGIN":
        statement = "BEGIN IMMEDIATE"
    return statement, parameters


@event.listens_for(Engine, "connect")
def _busy_timeout(dbapi_con, record):
    if type(dbapi_con).__module__.startswith("sqlite3"):
        dbapi_con.execute("PRAGMA busy_timeout = 30000")
