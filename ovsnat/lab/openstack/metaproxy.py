"""Each lab hypervisor's metadata proxy (ovsnat-metadata-proxy, docs/metadata.md), started
as a real hypervisor would run it under systemd, with Nova's own metadata API behind it.

The proxy runs in the services namespace beside the agents, for the same reason (services.py):
Nova's metadata API listens on that namespace's loopback, and the host's OVSDB is a unix
socket. Its namespace is the lab's (`ovsnat-<labid>-meta-<host>`, so the lab's teardown
removes it), and the bridge end of its veth is put into the hypervisor's namespace, where
the host's Open vSwitch is: on a real hypervisor both are the root namespace.
"""

from __future__ import annotations

import json
import os
import sys

from ovsnat.lab.openstack import stackconf as sc
from ovsnat.lab.openstack.virt.guest import host_namespace
from ovsnat.lab.sh import wait_for
from ovsnat.lab.topology import BRIDGE
from ovsnat.model.metadata import encode

PORT = "ovsnat-meta"  # the bridge end: the controller's metadata_port
OPTIONS = {"metadata_port": PORT}  # the controllers' [ovsnat] options in the OpenStack lab


def proc_name(host: str) -> str:
    return f"metadata-proxy-{host}"


def status_path(stack, host: str) -> str:
    return os.path.join(stack.lab.dir, f"metadata-{host}.json")


def start(stack, host: str, timeout: float = 30.0) -> str:
    """Start `host`'s proxy and wait until its port is on the bridge with an OpenFlow port
    (the controller's flows steer to it from then on)."""
    lab, h = stack.lab, stack.lab.hosts[host]
    secret = os.path.join(stack.paths.etc, "metadata-secret")
    with open(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(sc.METADATA_SECRET)
    argv = [
        "nsenter",  # not `ip netns exec`: its private mount namespace would hide ours
        f"--net=/run/netns/{stack.ns}",
        sys.executable,
        "-m",
        "ovsnat.metadata.main",
        "--namespace",
        lab.ns_name(f"meta-{host}"),
        "--bridge-namespace",
        host_namespace(lab.id, host),
        "--port",
        PORT,
        "--bridge",
        BRIDGE,
        "--db",
        f"unix:{h.ovs.db_sock}",
        "--nova-metadata-host",
        "127.0.0.1",
        "--nova-metadata-port",
        str(sc.METADATA_PORT),
        "--shared-secret-file",
        secret,
        "--status-file",
        status_path(stack, host),
    ]
    name = proc_name(host)
    lab.spawn(name, argv)
    wait_for(lambda: ofport(stack, host) > 0, timeout, interval=0.1, what=f"{host}'s {PORT}")
    return name


def stop(stack, host: str) -> None:
    stack.stop(proc_name(host))


def ofport(stack, host: str, name: str = PORT) -> int:
    """Interface `name`'s OpenFlow port on `host`'s bridge, 0 while it has none."""
    h = stack.lab.hosts[host]
    out = h.vsctl("--if-exists", "get", "Interface", name, "ofport", check=False).strip()
    return int(out) if out.lstrip("-").isdigit() else 0


def encoded(stack, host: str, tap: str):
    """The address a request from `tap` reaches the proxy with (its ofport encoded)."""
    return encode(ofport(stack, host, tap))


def read_status(path) -> dict:
    """A proxy's status file (ovsnat.metadata.counters.StatusFile: `counters`, and
    `updated`, when it was written); {} before its first write."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def counters(stack, host: str) -> dict:
    """The proxy's counters (its status file, rewritten every second)."""
    return read_status(status_path(stack, host)).get("counters", {})


def counters_since(stack, host: str, since: float, timeout: float = 5.0) -> dict:
    """The proxy's counters as it wrote them after `since` (time.time()): all it counted
    until then."""
    path = status_path(stack, host)
    status = wait_for(
        lambda: (s := read_status(path)) and s.get("updated", 0) > since and s,
        timeout,
        what=f"{host}'s proxy to write its counters",
    )
    return status.get("counters", {})
