"""OpenStack's own services drive ovsnat (issue 27): Keystone, Placement, Glance, Nova (API,
metadata API, conductor, scheduler, a nova-compute per hypervisor) and Neutron behind
Keystone with its Nova notifier on, RabbitMQ and MariaDB, all in the lab's services
namespace (ovsnat/lab/openstack/stack.py). The lab's only part is Nova's virt driver
(ovsnat/lab/openstack/virt): Nova's fake driver with the libvirt driver's network steps.

A user boots and deletes a server with the `openstack` command, as in a cloud; Nova, with
`vif_plugging_is_fatal` and its default `vif_plugging_timeout` (300 s), waits for Neutron's
`network-vif-plugged`, which ovsnat's agent causes once ovsnat's controller has the port's
flows in place. One bring-up serves the module.
"""

from __future__ import annotations

import configparser
import glob
import json
import os
import re
import time
import urllib.request
from datetime import datetime

import pytest

from ovsnat.lab.openstack import novacloud
from ovsnat.lab.openstack import stackconf as sc
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.openstack.cloudlab import SERVER_PORT
from ovsnat.lab.topology import SERVER_IP
from ovsnat.lab.traffic import tcp_connect
from tests.openstack_lab import row_ids, unique

pytestmark = [pytest.mark.lab, pytest.mark.openstack, pytest.mark.nova]

HOSTS = ("hv1", "hv2")
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def cl(request):
    from tests.conftest import _require_lab_prerequisites
    _require_lab_prerequisites(request)
    cloud = novacloud.bring_up(HOSTS)
    TIMES.update(cloud.timings)
    memory = cloud.stack.memory()
    try:
        yield cloud
    finally:
        t = time.monotonic()
        cloud.down()
        TIMES["teardown"] = time.monotonic() - t
        print("\nNova lab times (s): " + ", ".join(f"{k} {v:.2f}" for k, v in TIMES.items()))
        print(f"Nova lab memory (PSS, MiB): total {sum(memory.values()):.0f}; " +
              ", ".join(f"{k} {v:.0f}" for k, v in sorted(memory.items(),
                                                          key=lambda kv: -kv[1])))


def nova_event_at(cl, name: str, port_id: str, server_id: str) -> float:
    """When Nova's API received Neutron's event (its log line, local time, milliseconds
    truncated: never later than the event)."""
    log = open(os.path.join(cl.stack.paths.log, "nova-api.log")).read()
    m = re.search(rf"^(\S+ \S+) .*Creating event {name}:{port_id} for instance {server_id}",
                  log, re.M)
    assert m, f"Nova's API never received {name} for port {port_id}"
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()


def test_the_services_answer_and_nova_knows_both_hypervisors(cl):
    with cl.inside():
        admin = cl.as_admin()
        catalog = {s.type for s in admin.identity.services()}
        computes = {s.host: s for s in admin.compute.services() if s.binary == "nova-compute"}
        binaries = {s.binary for s in admin.compute.services() if s.state == "up"}
        hypervisors = {h.name for h in admin.compute.hypervisors()}
        agents = {a.host for a in admin.network.agents() if a.is_alive}
        image = admin.image.get_image(cl.image)
    assert {"identity", "compute", "placement", "image", "network"} <= catalog
    assert set(HOSTS) <= set(computes) and set(HOSTS) <= hypervisors
    assert {"nova-conductor", "nova-scheduler", "nova-compute"} <= binaries
    assert set(HOSTS) <= agents
    assert image.status == "active" and image.size == len(novacloud.IMAGE_DATA)
    # the metadata API (nova.wsgi.metadata under uWSGI) lists its versions
    with cl.inside():
        with urllib.request.urlopen(f"http://127.0.0.1:{sc.METADATA_PORT}/", timeout=10) as r:
            versions = r.read().decode()
    assert "latest" in versions.split()


def test_nova_boots_a_server_to_active_with_its_defaults_and_deletes_it(cl):
    # Nova as the lab runs it: fatal, and the timeout and live-migration wait as Nova ships
    files = glob.glob(os.path.join(cl.stack.paths.etc, "nova*.conf"))
    conf = configparser.ConfigParser(strict=False, interpolation=None)
    conf.read(files)
    assert conf.get("DEFAULT", "vif_plugging_is_fatal") == "true"
    text = "".join(open(f).read() for f in files)
    assert "vif_plugging_timeout" not in text and "live_migration_wait_for_vif_plug" not in text

    t0 = time.time()
    server = json.loads(cl.openstack("server", "create", "--flavor", novacloud.FLAVOR,
                                     "--image", novacloud.IMAGE, "--network", "tenant-a",
                                     "--wait", "-f", "json", unique("vm")))
    TIMES["server create --wait"] = time.time() - t0
    assert server["status"] == "ACTIVE", server
    with cl.inside():
        admin = cl.as_admin()
        host = admin.compute.get_server(server["id"]).compute_host
        ports = list(admin.network.ports(device_id=server["id"]))
    assert host in HOSTS and len(ports) == 1
    port = ports[0]
    assert port.status == "ACTIVE" and port.binding_host_id == host
    assert port.binding_vif_type == "ovs"

    guest = cl.guest(server["id"])
    assert guest is not None and guest.host == host and guest.state == "running"
    tap = guest.nics[0].tap
    row = row_ids(cl, host, tap)     # os-vif's row: Nova's ids, ovsnat's keys, confirmed
    assert row["iface-id"] == port.id and row["vm-uuid"] == server["id"]
    assert row["ovsnat-installed"] == "true"
    assert row["ovsnat-fixed-ip"] == port.fixed_ips[0]["ip_address"]
    assert cl.lab.hosts[host].ofport(tap) > 0

    # The driver created the guest paused, Neutron's event reached Nova after that, and
    # only then did the guest run (libvirt's _create_guest_with_network)
    event_at = nova_event_at(cl, "network-vif-plugged", port.id, server["id"])
    assert guest.times["created"] < event_at <= guest.times["resumed"]
    TIMES["tap to network-vif-plugged at Nova"] = event_at - guest.times["created"]
    built = re.search(rf"\[instance: {server['id']}\] Took ([\d.]+) seconds to build",
                      open(os.path.join(cl.stack.paths.log, f"nova-compute-{host}.log")).read())
    TIMES["Nova's build (its log)"] = float(built.group(1))

    # The guest runs: ovsnat's DHCP configures it and it reaches the outside through its
    # host's SNAT address (PAT)
    lease = wait_for(guest.lease, 20, interval=0.1, what="the guest's DHCP lease")
    assert lease["ip"] == port.fixed_ips[0]["ip_address"] and lease["router"] == "10.1.0.1"
    reply = wait_for(lambda: (r := tcp_connect(cl.lab, guest.ns, SERVER_IP, SERVER_PORT)).ok
                     and r, 15, interval=0.2, what=f"{SERVER_IP}:{SERVER_PORT} from the guest")
    assert reply.peer_ip == cl.snat_ip(host), reply

    t0 = time.time()
    cl.openstack("server", "delete", "--wait", server["id"])
    TIMES["server delete --wait"] = time.time() - t0
    assert cl.guest(server["id"]) is None
    assert guest.ns not in run(["ip", "netns", "list"]).stdout
    assert row_ids(cl, host, tap) == {}          # os-vif unplugged
    with cl.inside():
        assert cl.as_admin().network.find_port(port.id) is None     # Nova deleted its port
