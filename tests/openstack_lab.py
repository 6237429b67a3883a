"""Helpers shared by the OpenStack lab test modules: the bring-up as a module fixture, and
questions about Interface rows and Neutron's state. Not a test module itself."""

from __future__ import annotations

import json
import time
import uuid
from contextlib import contextmanager

from ovsnat.lab.openstack import cloudlab, servers
from ovsnat.lab.openstack.cloudlab import CloudLab
from ovsnat.lab.sh import wait_for
from ovsnat.lab.traffic import tcp_connect

HOSTS = ("hv1", "hv2")


@contextmanager
def cloud_lab(
    request,
    times: dict,
    hosts: tuple[str, ...] = HOSTS,
    open_default: bool = True,
    report_limits: bool = False,
):
    """One bring-up for a module: OpenStack's services, topology, hosts with controller,
    agent and nova-compute, every agent alive, every SNAT address on its bridge, every
    compute mapped. `open_default`: the tenant's default group lets ICMP, TCP and UDP in
    (the security-group modules keep Neutron's own default). `report_limits`: the agents
    report their controllers' limits from the start (cloudlab.bring_up). Torn down pass or fail; the
    module's measurements are printed at the end."""
    from tests.conftest import _require_lab_prerequisites

    _require_lab_prerequisites(request)
    cl = cloudlab.bring_up(hosts, report_limits)
    times.update(cl.timings)
    times["databases from the cache"] = float(cl.stack.cached)
    try:
        if open_default:
            cl.open_default_group()
        yield cl
    finally:
        t = time.monotonic()
        cl.down()
        times["teardown"] = time.monotonic() - t
        print("\nOpenStack lab times (s): " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:4]}"


def row_ids(cl: CloudLab, host: str, iface: str) -> dict[str, str]:
    out = cl.lab.hosts[host].vsctl(
        "--if-exists", "--format=json", "--columns=external_ids", "list", "Interface", iface
    )
    data = json.loads(out)["data"] if out.strip() else []
    return dict(data[0][0][1]) if data else {}


def all_rows(cl: CloudLab, host: str) -> dict[str, dict[str, str]]:
    """Every Interface row of the host: name -> external_ids (one ovs-vsctl call)."""
    out = cl.lab.hosts[host].vsctl(
        "--format=json", "--columns=name,external_ids", "list", "Interface"
    )
    return {name: dict(ids[1]) for name, ids in json.loads(out)["data"]}


def wait_key(
    cl: CloudLab, server: servers.Server, key: str, value: str | None, timeout: float = 10
) -> float:
    """Poll the server's Interface row until `key` has `value` (None: absent); returns the
    wall clock time it was first seen so."""
    host, tap = server.host, server.tap
    wait_for(
        lambda: row_ids(cl, host, tap).get(key) == value,
        timeout,
        interval=0.01,
        what=f"{key}={value} on {tap}",
    )
    return time.time()


def pushed(cl: CloudLab, server: servers.Server, call, key: str, value: str | None) -> float:
    """Make an API call and return how long after Neutron answered it the row showed
    key=value: the push (cast, the agent's RPC for the keys, the OVSDB write), without the
    API call's own time, which depends on Neutron and the machine's load."""
    call()
    answered = time.time()
    return wait_key(cl, server, key, value) - answered


def port_status(cl: CloudLab, port_id: str) -> str:
    return cl.admin.network.get_port(port_id).status


def wait_active(cl: CloudLab, port_id: str, timeout: float = 20) -> None:
    wait_for(
        lambda: port_status(cl, port_id) == "ACTIVE",
        timeout,
        interval=0.1,
        what=f"port {port_id} ACTIVE",
    )


def new_fip(cl: CloudLab, port_id: str | None = None):
    """A floating IP of the tenant's (associated with `port_id` if given)."""
    return cl.tenant.network.create_ip(
        floating_network_id=cl.topo.external_net, **({"port_id": port_id} if port_id else {})
    )


def boot(cl: CloudLab, host: str, name: str | None = None, **kwargs) -> servers.Server:
    """A server booted by Nova on `host`, with its DHCP lease."""
    return servers.boot(cl, name or unique("vm"), host, **kwargs)


def fresh_reports(cl, *hosts: str) -> None:
    """These hosts' nova-computes (default: all) reported within their last two report
    intervals (Nova's 10 s): Nova counts them up for a good while yet, and a live migration
    to them is not refused."""
    cl.computes_reported(time.time() - 20, *hosts)


def answers(cl, address: str) -> None:
    """The outside server opens a TCP connection to `address`'s guest echo port."""
    wait_for(
        lambda: tcp_connect(cl.lab, cl.lab.srv_ns, address, servers.GUEST_PORT).ok,
        10,
        what=f"{address}:{servers.GUEST_PORT} to answer",
    )
