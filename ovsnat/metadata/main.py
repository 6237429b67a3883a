"""`ovsnat-metadata-proxy`: the command line, the namespace, then the server until SIGTERM.

SIGTERM (systemd's stop) closes the listener, ends the connections being served (a VM
mid-request sees its connection close and retries; waiting for a slow one would make a
stop take as long as it likes) and ends the process with status 0, leaving the
namespace, the veth and the bridge port in place: the next start reuses them, and the
flows never see the port go. `--cleanup` removes all three (after the service is stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import resource
import signal
import stat
import sys

from ovsnat.metadata import netns
from ovsnat.metadata.backend import Backend, tls_context
from ovsnat.metadata.counters import StatusFile
from ovsnat.metadata.limits import DEFAULT_BURST, DEFAULT_RATE
from ovsnat.metadata.request import MAX_HEAD
from ovsnat.metadata.server import LOG, Proxy, Settings
from ovsnat.model.metadata import METADATA_PORT, PROXY_IP
from ovsnat.ovsdb.lookup import Remote


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ovsnat-metadata-proxy",
        description="This hypervisor's metadata proxy: VMs' requests to 169.254.169.254, "
        "steered here by ovsnat's flows, go to Nova's metadata API signed for the port "
        "they came from (docs/metadata.md).",
    )

    def opt(name: str, default=None, text: str = "", **kw) -> None:
        shown = f" (default: {default})" if default not in (None, False) else ""
        p.add_argument(name, default=default, help=text + shown, **kw)

    flag = functools.partial(opt, default=False, action="store_true")
    opt("--namespace", "ovsnat-meta", "the proxy's network namespace")
    opt("--port", "ovsnat-meta", "its veth end on the bridge: ovsnat.conf's metadata_port")
    opt("--bridge", "br-int", "bridge of the VM ports and of --port")
    opt("--bridge-namespace", text="network namespace of --port, where Open vSwitch is "
        "(default: the proxy's own; the OpenStack lab's hosts differ)")  # fmt: skip
    opt("--db", "unix:/var/run/openvswitch/db.sock", "OVSDB: unix:PATH or tcp:HOST:PORT")
    flag("--no-bridge", text="leave --port off the bridge (tests)")
    flag("--cleanup", text="remove the namespace, the veth and the bridge port, and exit")
    opt("--nova-metadata-host", text="Nova's metadata API host (required to serve)")
    opt("--nova-metadata-port", 8775, "its port", type=int)
    opt("--nova-metadata-protocol", "http", "http or https", choices=("http", "https"))
    flag("--nova-metadata-insecure", text="https: do not verify Nova's certificate")
    opt("--auth-ca-cert", text="https: CA file for Nova's certificate (else the system's)")
    opt("--nova-client-cert", text="https: client certificate for Nova")
    opt("--nova-client-priv-key", text="https: its private key")
    opt("--shared-secret-file", text="file holding Nova's metadata_proxy_shared_secret "
        "(required to serve; never on the command line, where ps shows it)")  # fmt: skip
    opt("--rate", DEFAULT_RATE, "requests per second per VM port", type=float)
    opt("--burst", DEFAULT_BURST, "requests a VM port may make at once", type=int)
    opt("--max-connections-per-port", 8, "open connections per VM port", type=int)
    opt("--max-connections", 256, "open connections in all", type=int)
    opt("--request-timeout", 3.0, "seconds from connect for a VM to send its request (408)",
        type=float)  # fmt: skip
    opt("--backend-timeout", 60.0, "seconds for Nova to answer (504) and the answer to reach "
        "the VM in full", type=float)  # fmt: skip
    opt("--ovsdb-timeout", 5.0, "seconds for OVSDB to answer (503)", type=float)
    opt("--max-ovsdb-lookups", 16, "OVSDB lookups at once, all VMs together (more wait "
        "their turn within --ovsdb-timeout)", type=int)  # fmt: skip
    opt("--status-file", text="JSON counters, rewritten every second")
    opt("--log-interval", 10.0, "seconds between log lines per port and kind", type=float)
    flag("--debug", text="debug logging, and every line (no log interval)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    bridge = None if args.no_bridge else args.bridge
    layout = netns.Layout(args.namespace, args.port, bridge, args.db, args.bridge_namespace)
    try:
        if args.cleanup:
            LOG.info("cleanup: removed %s", "; ".join(netns.teardown(layout)) or "nothing")
            return 0
        settings = _settings(args)
        open_files(2 * settings.total + settings.ovsdb_lookups + FILES_SPARE)
        changed = netns.setup(layout)
        LOG.info("namespace %s: %s", layout.namespace, "; ".join(changed) or "already as wanted")
        sock = netns.listen_in(layout.namespace, METADATA_PORT)
    except (ValueError, OSError, netns.SetupError) as e:
        LOG.error("%s", e)
        return 1
    LOG.info(
        "listening on %s:%d in %s, forwarding to %s",
        PROXY_IP,
        METADATA_PORT,
        layout.namespace,
        settings.backend,
    )
    info = {"namespace": layout.namespace, "listen": f"{PROXY_IP}:{METADATA_PORT}"}
    try:
        asyncio.run(serve(Proxy(settings), sock, StatusFile(args.status_file), info))
    except OSError as e:  # serving could not start (status file, listener): say so, exit 1
        LOG.error("%s", e)
        return 1
    LOG.info("stopped (namespace %s left in place for the next start)", layout.namespace)
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    """The serving options, checked; ValueError names the one at fault."""
    if not args.nova_metadata_host:
        raise ValueError("--nova-metadata-host is required (or --cleanup)")
    for name in (
        "rate",
        "burst",
        "max_connections_per_port",
        "max_connections",
        "request_timeout",
        "backend_timeout",
        "ovsdb_timeout",
        "max_ovsdb_lookups",
        "log_interval",
    ):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    tls = None
    if args.nova_metadata_protocol == "https":
        tls = tls_context(
            args.nova_metadata_insecure,
            args.auth_ca_cert,
            args.nova_client_cert,
            args.nova_client_priv_key,
        )
    return Settings(
        backend=Backend(
            args.nova_metadata_host, args.nova_metadata_port, tls, args.backend_timeout
        ),
        secret=read_secret(args.shared_secret_file),
        ovsdb=Remote.parse(args.db),
        bridge=args.bridge,
        rate=args.rate,
        burst=args.burst,
        per_port=args.max_connections_per_port,
        total=args.max_connections,
        request_timeout=args.request_timeout,
        ovsdb_timeout=args.ovsdb_timeout,
        log_interval=0.0 if args.debug else args.log_interval,
        ovsdb_lookups=args.max_ovsdb_lookups,
    )


FILES_SPARE = 64  # listener, status file, logs, ip/ovs-vsctl pipes at start


def open_files(needed: int) -> None:
    """Make sure the process may open `needed` files: two per connection (the VM's and
    Nova's) and one per OVSDB lookup. Past the limit accept() fails with EMFILE and
    asyncio stops accepting for a while, which no VM could tell from an outage: raise
    the soft limit to what is needed (the hard limit allowing), else refuse to start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise ValueError(
                f"--max-connections needs {needed} open files, the limit is {hard} "
                "(systemd: LimitNOFILE=)"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def read_secret(path: str | None) -> bytes:
    """metadata_proxy_shared_secret from its file (surrounding whitespace stripped, as an
    INI value is), utf-8 as Nova encodes it."""
    if not path:
        raise ValueError("--shared-secret-file is required (or --cleanup)")
    with open(path, encoding="utf-8") as f:
        secret = f.read().strip()
    if not secret:
        raise ValueError(f"{path}: the shared secret is empty")
    if os.stat(path).st_mode & stat.S_IROTH:
        LOG.warning("%s is readable by every user: chmod o-r it", path)
    return secret.encode("utf-8")


STOP_WAIT = 1.0  # seconds a stop waits for the connections it ended to close


async def serve(
    proxy: Proxy, sock, status: StatusFile, info: dict, stop: asyncio.Event | None = None
) -> None:
    """Serve on `sock` until SIGTERM or SIGINT (or `stop` is set, when given)."""
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(proxy.handle, sock=sock, limit=MAX_HEAD)
    status.write(proxy.counters, loop.time(), {**info, **proxy.gauges(), "serving": True})
    publisher = asyncio.create_task(_publish(proxy, status, {**info, "serving": True}))
    await stop.wait()
    publisher.cancel()
    await asyncio.wait({publisher})
    if not publisher.cancelled():
        publisher.result()  # it ended on its own before the stop: raise why
    server.close()  # no new connections; then end the ones being served, as on 3.12.1+
    left = await proxy.shutdown(STOP_WAIT)  # wait_closed would wait for each of them
    if left:
        LOG.warning("stopping with %d connections not ended within %gs", left, STOP_WAIT)
    try:
        await asyncio.wait_for(server.wait_closed(), STOP_WAIT)
    except asyncio.TimeoutError:
        LOG.warning("stopping with the listener not closed within %gs", STOP_WAIT)
    status.write(proxy.counters, loop.time(), {**info, **proxy.gauges(), "serving": False})


async def _publish(proxy: Proxy, status: StatusFile, info: dict) -> None:
    """The status file follows the counters, once a second (until cancelled). A file that
    cannot be written is said once, and again once it can: serving goes on meanwhile."""
    loop = asyncio.get_running_loop()
    failing = False
    while True:
        await asyncio.sleep(0.25)
        if not status.due(loop.time()):
            continue
        try:
            status.write(proxy.counters, loop.time(), {**info, **proxy.gauges()})
        except OSError as e:
            if not failing:
                LOG.error("status file %s not written (serving goes on): %s", status.path, e)
            failing = True
            continue
        if failing:
            LOG.info("status file %s written again", status.path)
        failing = False


if __name__ == "__main__":
    sys.exit(main())
