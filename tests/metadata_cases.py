"""Metadata with Nova's own metadata API (issue 29): servers booted by `openstack server
create` with a keypair and user data read, from inside their guests with curl (as
cloud-init fetches), their own uuid, hostname, public key and user data from
169.254.169.254 through their host's ovsnat-metadata-proxy, on either host, after a live
migration, and with overlapping fixed IPs in two networks; a spoofed source gets nothing;
one guest's flood leaves another's fetch prompt; the proxy's and Nova's outages give the
guest errors it retries and nothing else (no flow sent).

Cases only: test_openstack.py collects them on its lab (one bring-up for all).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time

from ovsnat.lab import scenario
from ovsnat.lab.openstack import config, metaproxy, servers
from ovsnat.lab.openstack import stackconf as sc
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.traffic import http_get
from ovsnat.metadata.limits import DEFAULT_BURST, DEFAULT_RATE
from tests.openstack_lab import unique

__all__ = [
    "test_a_server_reads_its_own_uuid_key_and_user_data_on_either_host_and_after_migration",
    "test_cloud_inits_own_reader_gets_everything_at_boot_speed_without_a_refusal",
    "test_two_servers_with_one_fixed_ip_in_two_networks_each_read_their_own",
    "test_a_spoofed_source_reads_nothing_of_another_server",
    "test_one_guests_flood_leaves_anothers_metadata_prompt",
    "test_proxy_and_nova_outages_give_errors_and_send_no_flow",
]

URL = "http://169.254.169.254"
META = f"{URL}/openstack/latest/meta_data.json"
KEY_PATH = f"{URL}/latest/meta-data/public-keys/0/openssh-key"
USER_DATA = f"{URL}/openstack/latest/user_data"
# Debian's cloud-init, unpacked (never installed) by scripts/install.sh.
CLOUD_INIT = os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "cloud-init")
CLOUD_INIT_READ = """
import json
from cloudinit.sources.helpers import openstack
got = openstack.MetadataReader("http://169.254.169.254", timeout=5, retries=2).read_v2()
ec2 = got["ec2-metadata"]
print(json.dumps({
    "uuid": got["metadata"].get("uuid"),
    "keys": sorted(got["metadata"].get("public_keys", {}).values()),
    "user_data": got["userdata"].decode(),
    "ec2_instance_id": ec2.get("instance-id"),
    "ec2_keys": ec2.get("public-keys", {}),
    "ec2_fields": sorted(ec2),
    "network_data": bool(got.get("networkdata")),
}))
"""


def fetch(ns: str, url: str, timeout: float = 5, source: str = "") -> tuple[int, str]:
    """curl in a guest: (HTTP status, body); status 0 when no answer came."""
    return http_get(ns, url, timeout, source)


def fetched(ns: str, url: str, timeout: float = 20) -> str:
    """The body once the guest reads `url` with 200 (the guest retries, as cloud-init)."""
    got = {}

    def ok() -> bool:
        got["r"] = fetch(ns, url)
        return got["r"][0] == 200

    wait_for(ok, timeout, interval=0.5, what=f"{url} from {ns}: last {got.get('r')}")
    return got["r"][1]


def keypair(cl, tmp: str) -> tuple[str, str]:
    """A keypair imported into Nova by `openstack keypair create --public-key`."""
    path = os.path.join(tmp, "id_ed25519")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path])
    name = unique("key")
    cl.openstack("keypair", "create", "--public-key", f"{path}.pub", name, **OPERATOR)
    with open(f"{path}.pub") as f:
        return name, f.read().strip()


OPERATOR = {"user": sc.ADMIN_USER, "project": sc.DEMO}  # may place servers on a host


def create(cl, name: str, host: str, tmp: str, key: str = "", user_data: str = "", port=""):
    """`openstack server create` on `host` (its own keypair and user data), then ACTIVE and
    leased; on the tenant's network, or with `port`."""
    args = ["--flavor", cl.flavor, "--image", cl.image, "--availability-zone", f"nova:{host}"]
    args += ["--port", port] if port else ["--network", cl.topo.tenant_net]
    if key:
        args += ["--key-name", key]
    if user_data:
        path = os.path.join(tmp, f"{name}.user-data")
        with open(path, "w") as f:
            f.write(user_data)
        args += ["--user-data", path]
    out = cl.openstack("server", "create", *args, "-f", "value", "-c", "id", name, **OPERATOR)
    return servers.wait_active(cl, out.strip(), name, time.time(), lease=True)


def test_a_server_reads_its_own_uuid_key_and_user_data_on_either_host_and_after_migration(
    cl, tmp_path
):
    key, public = keypair(cl, str(tmp_path))
    data = f"#cloud-config\n# {unique('user-data')}\n"
    found = {}
    for host in ("hv1", "hv2"):
        s = create(cl, unique(f"meta-{host}"), host, str(tmp_path), key, data)
        meta = json.loads(fetched(s.ns, META))
        assert meta["uuid"] == s.id and meta["hostname"].startswith(s.name[:10])
        assert public in {k.strip() for k in meta["public_keys"].values()}, meta["public_keys"]
        assert fetched(s.ns, KEY_PATH).strip() == public
        assert fetched(s.ns, USER_DATA) == data
        found[host] = s
    # Live migration: the same guest asks its new host's proxy.
    s = found["hv1"]
    served = metaproxy.counters(cl.services, "hv2").get("answered", 0)
    m = servers.live_migrate(cl, s, "hv2")
    assert m.status == "completed", m
    assert json.loads(fetched(s.ns, META))["uuid"] == s.id
    wait_for(
        lambda: metaproxy.counters(cl.services, "hv2").get("answered", 0) > served,
        5,
        what="hv2's proxy to count the migrated guest's answer",
    )
    for s in found.values():
        servers.delete(cl, s)


def test_cloud_inits_own_reader_gets_everything_at_boot_speed_without_a_refusal(cl, tmp_path):
    """cloud-init's OpenStack datasource reads the version list, five files and the whole
    EC2 tree back to back at boot, and takes a 4xx as final (it retries only connection
    errors): the per-port rate limit's burst must hold its whole crawl. Run with Debian's
    cloud-init code in the guest, against the proxy's defaults."""
    key, public = keypair(cl, str(tmp_path))
    data = f"#cloud-config\n# {unique('user-data')}\n"
    s = create(cl, unique("cloud-init"), "hv1", str(tmp_path), key, data)
    fetched(s.ns, META)  # the guest's route and the proxy answer
    time.sleep(DEFAULT_BURST / DEFAULT_RATE + 0.5)  # the port's bucket full again, as at boot
    before = metaproxy.counters_since(cl.services, "hv1", time.time())
    done = run(
        ["ip", "netns", "exec", s.ns, sys.executable, "-c", CLOUD_INIT_READ],
        env={"PYTHONPATH": CLOUD_INIT},
        check=False,
        timeout=120,
    )
    after = metaproxy.counters_since(cl.services, "hv1", time.time())
    asked = after.get("requests", 0) - before.get("requests", 0)
    limited = after.get("rate_limited", 0) - before.get("rate_limited", 0)
    assert done.returncode == 0, f"{limited} of {asked} refused: {done.stderr[-2000:]}"
    got = json.loads(done.stdout)
    assert got["uuid"] == s.id and got["ec2_instance_id"].startswith("i-")
    # A refusal is not always an error for cloud-init: it silently drops what it could
    # not read (with a burst of 20, one of 28 requests was refused and the read
    # "succeeded"), so the count is what tells.
    assert limited == 0, f"{limited} of cloud-init's {asked} requests refused"
    assert public in [k.strip() for k in got["keys"]]
    assert public in [k.strip() for keys in got["ec2_keys"].values() for k in keys]
    assert {"instance-id", "local-ipv4", "hostname", "placement"} <= set(got["ec2_fields"])
    assert got["user_data"] == data and got["network_data"]
    print(f"\ncloud-init's crawl: {asked} requests, none refused")
    servers.delete(cl, s)


def test_two_servers_with_one_fixed_ip_in_two_networks_each_read_their_own(cl, tmp_path):
    """Both on hv1 with one fixed IP: two ports, two encoded sources, two instances. The
    second network is on no router (Neutron refuses two overlapping subnets on one):
    metadata is served there all the same."""
    cidr = cl.admin.network.get_subnet(cl.topo.tenant_subnet).cidr
    fixed = cidr.rsplit(".", 1)[0] + ".77"
    other = cl.tenant.network.create_network(name=unique("overlap"))
    subnet = cl.tenant.network.create_subnet(
        network_id=other.id, ip_version=4, cidr=cidr, name=unique("overlap")
    )
    made, ports = [], []
    for net, sub in ((cl.topo.tenant_net, cl.topo.tenant_subnet), (other.id, subnet.id)):
        port = cl.tenant.network.create_port(
            network_id=net, fixed_ips=[{"subnet_id": sub, "ip_address": fixed}]
        )
        ports.append(port.id)
        made.append(create(cl, unique("twin"), "hv1", str(tmp_path), port=port.id))
    assert {s.fixed_ip for s in made} == {fixed}
    for s in made:
        assert json.loads(fetched(s.ns, META))["uuid"] == s.id
    for s in made:
        servers.delete(cl, s)
    for port_id in ports:  # a port the user made outlives its server
        cl.tenant.network.delete_port(port_id)
    cl.tenant.network.delete_network(other.id)


def test_a_spoofed_source_reads_nothing_of_another_server(cl, tmp_path):
    """`a` has port security off and takes `b`'s fixed IP as a second address: a request
    from that address gets no answer at all (its own, the positive control, does)."""
    net = cl.topo.tenant_net
    port = cl.tenant.network.create_port(network_id=net, port_security_enabled=False)
    a = create(cl, unique("spoofer"), "hv1", str(tmp_path), port=port.id)
    b = create(cl, unique("victim"), "hv1", str(tmp_path))
    assert json.loads(fetched(a.ns, META))["uuid"] == a.id
    run(["ip", "netns", "exec", a.ns, "ip", "addr", "add", f"{b.fixed_ip}/32", "dev", "eth0"])
    code, body = fetch(a.ns, META, timeout=3, source=b.fixed_ip)
    assert code == 0 and b.id not in body
    assert json.loads(fetched(b.ns, META))["uuid"] == b.id  # b itself still reads its own
    for s in (a, b):
        servers.delete(cl, s)
    cl.tenant.network.delete_port(port.id)


FLOOD = r"""
import os, sys, threading, time, urllib.request, urllib.error
codes, lock, end = {}, threading.Lock(), time.monotonic() + 120  # or until told to stop
def one():
    while time.monotonic() < end and not os.path.exists(sys.argv[2]):
        try:
            code = urllib.request.urlopen(sys.argv[1], timeout=10).status
        except urllib.error.HTTPError as e:
            code = e.code
        except OSError:
            code = 0
        with lock:
            codes[code] = codes.get(code, 0) + 1
threads = [threading.Thread(target=one) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(codes)
"""


def test_one_guests_flood_leaves_anothers_metadata_prompt(cl, tmp_path):
    flooder = create(cl, unique("flooder"), "hv1", str(tmp_path))
    quiet = create(cl, unique("quiet"), "hv1", str(tmp_path))
    fetched(quiet.ns, META)  # warm: the positive control
    limited = metaproxy.counters(cl.services, "hv1").get("rate_limited", 0)
    stop = tmp_path / "stop-the-flood"
    python = config.venv_bin("python")
    argv = ["ip", "netns", "exec", flooder.ns, python, "-c", FLOOD, META, str(stop)]
    flood = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        wait_for(
            lambda: metaproxy.counters(cl.services, "hv1").get("rate_limited", 0) > limited,
            5,
            what="the flood to be limited",
        )
        for _ in range(3):
            start = time.monotonic()
            code, _ = fetch(quiet.ns, META, timeout=5)
            assert code == 200 and time.monotonic() - start < 3.0
        assert flood.poll() is None, "the flood ended before the quiet guest's fetches"
    finally:
        stop.touch()
        out, _ = flood.communicate(timeout=60)
    codes = ast.literal_eval(out.strip())
    assert codes.get(429, 0) > 0, codes  # the flooder was limited...
    assert codes.get(200, 0) > 0, codes  # ...not cut off
    for s in (flooder, quiet):
        servers.delete(cl, s)


def controller_counts(cl, host: str) -> dict:
    """The host controller's syncs and faults, from a status file written after this call
    began (it is rewritten every second)."""
    first = scenario.status(cl.lab, host)["time"]
    wait_for(lambda: scenario.status(cl.lab, host)["time"] > first, 5, what="a fresh status")
    stats = scenario.status(cl.lab, host)["stats"]
    return {k: stats[k] for k in ("syncs", "faults")}


def ages(cl, host: str, server) -> dict[str, float]:
    """How long the steering flow and the server's way back have been on the switch (a flow
    sent again starts from 0)."""
    own = str(metaproxy.encoded(cl.services, host, server.tap))
    out = cl.lab.hosts[host].ofctl("dump-flows", "br-int", "table=20,tcp")
    out += cl.lab.hosts[host].ofctl("dump-flows", "br-int", f"table=65,tcp,nw_dst={own}")
    found = {}
    for line in out.splitlines():
        kind = "steer" if "table=20" in line and "priority=200" in line else "back"
        if "table=65" in line or kind == "steer":
            found[kind] = float(re.search(r"duration=([0-9.]+)s", line).group(1))
    assert set(found) == {"steer", "back"}, out
    return found


def test_proxy_and_nova_outages_give_errors_and_send_no_flow(cl, tmp_path):
    s = create(cl, unique("outage"), "hv1", str(tmp_path))
    fetched(s.ns, META)
    counts, before, began = controller_counts(cl, "hv1"), ages(cl, "hv1", s), time.monotonic()
    metaproxy.stop(cl.services, "hv1")
    assert fetch(s.ns, META, timeout=3)[0] != 200  # refused or timed out: cloud-init retries
    metaproxy.start(cl.services, "hv1")
    assert json.loads(fetched(s.ns, META))["uuid"] == s.id
    cl.services.stop("nova-metadata")
    try:
        assert fetch(s.ns, META, timeout=5)[0] in (502, 503, 504)
    finally:
        cl.services.start_wsgi("nova-metadata")
        cl.services.wait_http("nova-metadata", sc.METADATA_PORT)
    assert json.loads(fetched(s.ns, META))["uuid"] == s.id
    # No flow was sent again (each kept its age) and the controller never resynced.
    elapsed, after = time.monotonic() - began, ages(cl, "hv1", s)
    assert all(after[k] >= before[k] + elapsed - 1 for k in before), (before, after, elapsed)
    assert controller_counts(cl, "hv1") == counts
    servers.delete(cl, s)
