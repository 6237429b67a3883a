"""bgp mode's way out on real Open vSwitch (netdev, as the lab runs it; docs/bgp.md section
4): the routed uplinks' select group spreads a VM's flows over both ToRs, each bucket
rewriting the MACs for its link, and a link that loses carrier is skipped by the switch
itself, with no controller in the loop, until it comes back.

No ovsnat controller here: the group (compile/groups.py, as `ovs-ofctl add-group` reads
it) and one flow to it are installed by hand; the counters are the uplinks' own.
"""

from __future__ import annotations

import secrets
import struct
import subprocess
import tempfile

import pytest

from ovsnat.compile import groups
from ovsnat.lab.ovs import Ovs
from ovsnat.lab.sh import run, wait_for
from ovsnat.openflow import codec, messages
from ovsnat.openflow.digest import group_desc_digest
from tests.ofclient import OfClient

pytestmark = pytest.mark.lab

OWN = {"up0": "02:00:00:00:fe:01", "up1": "02:00:00:00:fe:02"}
TOR = {"up0": "02:aa:00:00:00:01", "up1": "02:bb:00:00:00:02"}
# TCP connection attempts (a SYN each) from as many source ports: OVS picks the bucket by a
# hash of the flow, which on the netdev datapath (hash(sym_l4)) takes TCP ports but not
# UDP's, so UDP between two addresses would always take one ToR.
SEND = """
import socket, sys
for port in range(40000, 40000 + int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.bind(("10.0.0.11", port))
    try:
        s.connect(("198.51.100.10", 9))
    except BlockingIOError:
        pass
    s.close()
"""


@pytest.fixture
def switch():
    lab = secrets.token_hex(3)
    names = {r: f"ovsnat-{lab}-{r}" for r in ("hv", "vm", "ta", "tb")}
    rundir = tempfile.mkdtemp(prefix=f"ovsnat-{lab}-ovs-")
    ovs = Ovs(rundir, names["hv"])
    try:
        for ns in names.values():
            run(["ip", "netns", "add", ns])
        for dev, ns, peer in (("tap", "vm", "vm0"), ("up0", "ta", "eth0"), ("up1", "tb", "eth0")):
            run(["ip", "link", "add", dev, "netns", names["hv"], "type", "veth", "peer",
                 "name", peer, "netns", names[ns]])  # fmt: skip
            run(["ip", "-n", names["hv"], "link", "set", dev, "up"])
            run(["ip", "-n", names[ns], "link", "set", peer, "up"])
        vm = names["vm"]
        run(["ip", "-n", vm, "addr", "add", "10.0.0.11/24", "dev", "vm0"])
        run(["ip", "-n", vm, "neigh", "add", "10.0.0.1", "lladdr", "02:00:00:00:00:01",
             "dev", "vm0"])  # fmt: skip
        run(["ip", "-n", vm, "route", "add", "default", "via", "10.0.0.1"])
        ovs.start()
        ovs.add_bridge("br-int")
        for dev in ("tap", "up0", "up1"):
            ovs.vsctl("add-port", "br-int", dev)
        ports = {dev: ovs.ofport(dev) for dev in ("tap", "up0", "up1")}
        group = groups.SelectGroup(
            groups.UPLINKS_GROUP,
            tuple(groups.tor_bucket(ports[up], OWN[up], TOR[up]) for up in ("up0", "up1")),
        )
        ovs.ofctl("-O", "OpenFlow13", "add-group", "br-int", group.text())
        ovs.ofctl("-O", "OpenFlow13", "add-flow", "br-int",
                  f"in_port={ports['tap']},ip,actions=dec_ttl,group:{group.id}")  # fmt: skip
        for up in ("up0", "up1"):  # a bucket is live once its port has carrier
            wait_for(lambda u=up: ovs.vsctl("get", "Interface", u, "link_state").strip() == "up",
                     10, what=f"{up} with carrier")  # fmt: skip
        yield ovs, names, ports, group
    finally:
        ovs.stop()
        for ns in names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["rm", "-rf", rundir], timeout=30)


def sent(ovs: Ovs, ports: dict) -> dict[str, int]:
    """Packets each bucket sent (the group's own counters: the uplinks' would also count
    the namespace's own IPv6 chatter)."""
    out = ovs.ofctl("-O", "OpenFlow13", "dump-group-stats", "br-int")
    counts = {}
    for k, up in enumerate(("up0", "up1")):
        counts[up] = int(out.split(f"bucket{k}:packet_count=", 1)[1].split(",", 1)[0])
    return counts


def flows_from_the_vm(names: dict, count: int) -> None:
    run(["python3", "-c", SEND, str(count)], ns=names["vm"])


def test_the_group_spreads_flows_over_both_tors_and_skips_a_link_without_carrier(switch):
    ovs, names, ports, _ = switch
    before = sent(ovs, ports)
    flows_from_the_vm(names, 64)
    wait_for(lambda: sum(sent(ovs, ports).values()) - sum(before.values()) >= 64, 5,
             what="64 flows out")  # fmt: skip
    spread = {up: n - before[up] for up, n in sent(ovs, ports).items()}
    assert spread["up0"] > 0 and spread["up1"] > 0, spread  # per-flow hashing, both used
    # tor-a's link loses carrier: its bucket is skipped at once, by the switch alone.
    run(["ip", "-n", names["ta"], "link", "set", "eth0", "down"])
    wait_for(lambda: ovs.vsctl("get", "Interface", "up0", "link_state").strip() == "down", 5,
             what="up0 without carrier")  # fmt: skip
    before = sent(ovs, ports)
    flows_from_the_vm(names, 64)
    wait_for(lambda: sent(ovs, ports)["up1"] - before["up1"] >= 64, 5, what="all via up1")
    assert sent(ovs, ports)["up0"] == before["up0"]
    # Carrier back: both again.
    run(["ip", "-n", names["ta"], "link", "set", "eth0", "up"])
    wait_for(lambda: ovs.vsctl("get", "Interface", "up0", "link_state").strip() == "up", 5,
             what="up0 with carrier")  # fmt: skip
    before = sent(ovs, ports)
    flows_from_the_vm(names, 64)
    wait_for(lambda: sum(sent(ovs, ports).values()) - sum(before.values()) >= 64, 5,
             what="64 flows out again")  # fmt: skip
    assert sent(ovs, ports)["up0"] > before["up0"]


def described(client: OfClient) -> dict[int, int]:
    """group id -> digest, read from the switch's own bytes, both ways the controller may:
    ovsnat's reader and the framework's parser with ovsnat's light entry (what app.py gets)."""
    from ovsnat.runtime import framework as fw

    fw.use_light_flow_stats()
    ours, theirs = {}, {}
    for msg in client.group_desc():
        offset = 16
        while offset < len(msg):
            length, group_id = struct.unpack_from("!H2xI", msg, offset)
            ours[group_id] = group_desc_digest(msg, offset, length)
            offset += length
        reply = fw.parser.OFPMultipartReply.parser(None, 4, 19, len(msg), 8, bytearray(msg))
        theirs.update((g.group_id, g.digest) for g in reply.body)
    assert ours == theirs, (ours, theirs)
    return ours


def test_the_group_reads_back_with_the_digest_the_controller_expects(switch):
    """Groups carry no cookie: the controller knows its group is in place when the digest
    of the switch's description equals that of the group_mod it would send. The group
    here was added as text by ovs-ofctl; the controller's own packing of a changed group
    reads back changed (the control), and its packing of the first reads back equal."""
    ovs, _, ports, group = switch
    client = OfClient(ovs.rundir)
    try:
        assert described(client) == {group.id: messages.desired_group_digest(group)}
        one = groups.SelectGroup(group.id, group.buckets[:1])
        client.apply(messages.group_mod(20, codec.OFPGC_MODIFY, one))
        assert described(client) == {group.id: messages.desired_group_digest(one)}
        assert messages.desired_group_digest(one) != messages.desired_group_digest(group)
        client.apply(messages.group_mod(22, codec.OFPGC_MODIFY, group))
        assert described(client) == {group.id: messages.desired_group_digest(group)}
    finally:
        client.close()
