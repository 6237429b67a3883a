"""Metadata on a plain ovsnat host (no Neutron): a VM's request to 169.254.169.254 crosses
ovsnat's own flows to the host's real ovsnat-metadata-proxy, which refuses it with its 404
(the port carries no instance: it is not Neutron's) and counts it; a request from another
source address gets no answer at all; `ovsnat diff` finds the metadata flows exactly as
the controller wants them and `ovsnat status` names the proxy's port. With Nova behind
the proxy: tests/metadata_cases.py.

Lab: one hypervisor; the proxy runs in its namespace as on a real host (systemd's unit),
in front of a Nova that is not there (nothing listens on its port).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from ovsnat.lab import scenario
from ovsnat.lab.openstack.metaproxy import read_status
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.traffic import http_get
from ovsnat.model.metadata import METADATA_IP
from tests.test_controller import SNAT, vm_ids

pytestmark = pytest.mark.lab
PORT = "ovsnat-meta"
URL = f"http://{METADATA_IP}/openstack/latest/meta_data.json"


@pytest.fixture(scope="module")
def meta(module_lab, tmp_path_factory):
    lab = module_lab
    lab.add_host("hv1")
    h = lab.hosts["hv1"]
    lab.add_vm("vm1", "hv1", "10.0.0.11", "02:00:0a:00:00:0b", vm_ids("10.0.0.11"))
    # port security off: its frames pass classify whatever their source
    off = {**vm_ids("10.0.0.12"), "ovsnat-port-security": "off"}
    lab.add_vm("vm2", "hv1", "10.0.0.12", "02:00:0a:00:00:0c", off)
    secret = tmp_path_factory.mktemp("meta") / "secret"
    secret.write_text("lab secret\n")
    secret.chmod(0o600)
    status = Path(h.rundir) / "metadata.json"
    lab.spawn(
        "metadata-proxy",
        [
            "nsenter",  # the hypervisor's namespace, without `ip netns exec`'s mount namespace
            f"--net=/run/netns/{lab.ns_name('hv1')}",
            sys.executable,
            "-m",
            "ovsnat.metadata.main",
            "--namespace",
            lab.ns_name("meta-hv1"),
            "--port",
            PORT,
            "--db",
            f"unix:{h.ovs.db_sock}",
            "--nova-metadata-host",
            "127.0.0.1",
            "--nova-metadata-port",
            "1",
            "--shared-secret-file",
            str(secret),
            "--status-file",
            str(status),
        ],
    )
    scenario.start_controller(lab, "hv1", SNAT, metadata_port=PORT)
    wait_for(lambda: scenario.status(lab, "hv1").get("in_sync"), 30, what="hv1 in sync")
    lab.status_path = status
    return lab


def curl(lab, vm: str, source: str = "", timeout: float = 5) -> tuple[int, str]:
    return http_get(lab.vms[vm].ns, URL, timeout, source)


def counters(lab) -> dict:
    return read_status(lab.status_path).get("counters", {})


def test_a_vms_request_crosses_the_flows_to_the_proxy_which_refuses_a_port_without_instance(
    meta,
):
    refused = counters(meta).get("refused_unknown_port", 0)
    got = {}

    def answered() -> bool:  # the proxy's port reaches the bridge, the flows follow
        got["r"] = curl(meta, "vm1")
        return got["r"][0] == 404

    wait_for(answered, 20, interval=0.5, what=f"the proxy's 404 (last {got.get('r')})")
    # its clear body names vm1's own port: the flows encoded vm1's ofport, no other
    tap = meta.vms["vm1"].tap
    assert f"port {tap} has no" in got["r"][1] and "ovsnat-device-id" in got["r"][1], got
    wait_for(
        lambda: counters(meta).get("refused_unknown_port", 0) > refused,
        5,
        what="the refusal counted",
    )


def dropped(lab) -> int:
    """Packets the classify drop of everything else to 169.254.169.254 counted."""
    out = lab.hosts["hv1"].ofctl("dump-flows", "br-int", f"table=0,ip,nw_dst={METADATA_IP}")
    [count] = [
        int(re.search(r"n_packets=(\d+)", line).group(1))
        for line in out.splitlines()
        if "priority=400," in line and "actions=drop" in line
    ]
    return count


def test_another_source_address_gets_no_answer_even_with_port_security_off(meta):
    assert curl(meta, "vm2")[0] == 404  # the positive control: its own address is answered
    run(["ip", "addr", "add", "10.0.0.99/32", "dev", "eth0"], ns=meta.vms["vm2"].ns)
    asked, drops = counters(meta).get("requests", 0), dropped(meta)
    assert curl(meta, "vm2", source="10.0.0.99", timeout=3)[0] == 0
    assert dropped(meta) > drops  # dropped by the flows (its SYNs), never at the proxy:
    assert curl(meta, "vm1")[0] == 404  # one request after it (nothing else asks here)
    wait_for(lambda: counters(meta).get("requests", 0) > asked, 5, what="vm1's request counted")
    assert counters(meta)["requests"] == asked + 1


def test_diff_is_clean_and_status_names_the_proxys_port(meta):
    diff = scenario.cli(meta, "hv1", "diff", "--json")
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert not any(json.loads(diff.stdout).values()), diff.stdout
    status = scenario.cli(meta, "hv1", "status")
    assert f"metadata proxy port: {PORT} (ofport" in status.stdout, status.stdout
