"""A port's instance and project on its Interface row (issue 29): ovsnat-neutron-agent writes
`ovsnat-device-id` and `ovsnat-project` from Neutron for the host's metadata proxy; the
controller knows them and reads neither, so they never cost a recompile or a flow. The
mapping itself (pure) is pinned in tests/test_neutron_keys.py."""

from __future__ import annotations

from ovsnat import ovsdb
from ovsnat.core.fips import GARP_DELAYS
from ovsnat.core.presence import REPROBE
from ovsnat.model import port_from_row
from ovsnat.model.portcheck import keys_problem
from ovsnat.model.ports import KEY_DEVICE_ID, KEY_PROJECT
from ovsnat.model.rows import Changes, IfaceRow
from ovsnat.model.validate import HostLimits
from tests.devstack_harness import in_neutron_venv
from tests.hostsim import SimHost, vm_row

FIP = "203.0.113.10"
OWNER = {KEY_DEVICE_ID: "9c0d6a7e-0000-4000-8000-000000000011", KEY_PROJECT: "f00d"}


def test_the_controller_parses_a_row_the_same_with_or_without_them():
    plain = vm_row(11, FIP)
    owned = vm_row(11, FIP, **OWNER)
    port = port_from_row(plain.name, plain.ofport, plain.external_ids, plain.link_state)
    assert port_from_row(owned.name, owned.ofport, owned.external_ids, owned.link_state) == port
    # not a key the mechanism driver's judgement (the controller's) refuses...
    net = {"ovsnat-network": "n1", "ovsnat-cidr": "10.0.0.0/24", "ovsnat-gateway": "10.0.0.1"}
    neutron = {**net, **owned.external_ids}
    assert keys_problem("tapvm11", neutron, HostLimits()) is None
    # ...nor one that makes a row ovsnat's
    assert port_from_row("tapx", 5, {"iface-id": "x", **OWNER}) is None


def test_the_controllers_ovsdb_view_drops_them_as_they_arrive():
    """Read by the proxy only: they cost the controller no memory per port."""
    assert not ovsdb.kept_key(KEY_DEVICE_ID) and not ovsdb.kept_key(KEY_PROJECT)
    assert ovsdb.kept_key("ovsnat-fixed-ip")  # the positive control


def test_a_change_of_only_these_keys_sends_nothing_and_writes_nothing():
    """The agent sets them, moves the port to another instance, clears them: each OVSDB
    batch leaves the host state alone and the controller answers none of them (no flow, no
    marker, no packet-out), now or later (it arms no deadline: no GARP, probe or
    activation waits for the clock)."""
    host = SimHost(fip_activation="immediate")
    host.rows["tapvm11"] = vm_row(11, FIP)
    host.start()
    # start() leaves the FIP's own announcement armed (GARPs at now + GARP_DELAYS, the first
    # due at once): let it out first, so nothing below can be taken for it, or hide in it.
    host.advance(GARP_DELAYS[-1] + 0.5)
    assert host.fip_live(FIP) and [a.spa for a in host.arps_out()] == [FIP] * len(GARP_DELAYS)
    mods, sent, writes = host.switch.flow_mods, len(host.switch.packet_outs), len(host.key_writes)
    deadlines, wake = len(host.ctl.timers), host.ctl.next_wakeup()
    accepted = host.ctl.host.valid["tapvm11"]

    def change(**ids):
        row = host.rows["tapvm11"]
        new = {k: v for k, v in {**row.external_ids, **ids}.items() if v is not None}
        host.rows["tapvm11"] = IfaceRow(row.name, row.ofport, new, row.link_state)
        out = host.ctl.ovsdb(Changes({row.name: host.rows[row.name]}), host.now)
        assert host.ctl.rows[row.name].external_ids == new  # it did take the change
        assert out == [], (ids, out)
        assert (len(host.ctl.timers), host.ctl.next_wakeup()) == (deadlines, wake), ids

    change(**OWNER)
    change(**{KEY_DEVICE_ID: "another-instance"})
    change(**{KEY_DEVICE_ID: None, KEY_PROJECT: None})
    assert not set(OWNER) & set(host.ctl.rows["tapvm11"].external_ids)  # cleared
    assert host.ctl.host.valid["tapvm11"] is accepted and host.fip_live(FIP)
    # Later: a deadline re-armed under an old key would fire within this (probes, GARPs,
    # activations all fall within REPROBE + the GARPs' spread); none does.
    host.advance(REPROBE + GARP_DELAYS[-1])
    assert host.switch.flow_mods == mods and len(host.switch.packet_outs) == sent
    assert len(host.key_writes) == writes and host.fip_live(FIP)


AGENT = r"""
import threading
from types import SimpleNamespace as NS
from ovsnat.neutron.agent import OvsnatAgent
from ovsnat.neutron.agent_ovsdb import Snapshot, VmRow

class Ovsdb:
    def __init__(self): self.writes = []
    def write_keys(self, table, record, diff):
        assert table == "Interface"
        self.writes.append((record, dict(diff.set), tuple(diff.remove)))

class Api:
    def __init__(self): self.ports = {}
    def get_ports(self, context, host, port_ids, timeout):
        return {pid: self.ports.get(pid) for pid in port_ids}

def answer(**keys):
    return {"keys": {"ovsnat-fixed-ip": "10.1.0.5", **keys}, "up": False, "binding": None}

agent = OvsnatAgent.__new__(OvsnatAgent)     # no RPC, no OVSDB: the loop's own state only
api, ovsdb = Api(), Ovsdb()
holds = NS(held=lambda what, now: False, ok=lambda what: None)
agent.__dict__.update(
    context=None, host="hv1", lock=threading.Lock(), dirty=set(), full_sync=False,
    desired={}, bindings={}, neutron_up=set(), reported_up=set(), fast_retry=False,
    ovsnat_rpc=api, ovsdb=ovsdb,
    health=NS(holds=holds, call_timeout=lambda: 2.0, answered=lambda: None),
    sg=NS(covers=lambda keys: True), routers=NS(covers=lambda keys: True),
)
row = VmRow("tap1", "p1", {"iface-id": "p1", "vm-uuid": "i1"})
other = VmRow("tap2", "p2", {"iface-id": "p2", "ovsnat-device-id": "by-hand"})
snap = Snapshot(True, True, "netdev", {}, {"p1": row, "p2": other})

def sync(*pids):
    assert agent._fetch(list(pids), False) and agent._apply(snap)
    return ovsdb.writes.pop() if ovsdb.writes else None

api.ports["p1"] = answer(**{"ovsnat-device-id": "i1", "ovsnat-project": "proj"})
assert sync("p1", "p2") == ("tap2", {}, ("ovsnat-device-id",))  # not Neutron's: none
assert ovsdb.writes == [("tap1", {"ovsnat-fixed-ip": "10.1.0.5", "ovsnat-device-id": "i1",
                                  "ovsnat-project": "proj"}, ())], ovsdb.writes
ovsdb.writes.clear()
assert sync("p1") is None                                     # in step: no write
api.ports["p1"] = answer(**{"ovsnat-device-id": "i2", "ovsnat-project": "proj"})
assert sync("p1") == ("tap1", {"ovsnat-device-id": "i2"}, ())  # another instance
api.ports["p1"] = answer(**{"ovsnat-project": "proj"})
assert sync("p1") == ("tap1", {}, ("ovsnat-device-id",))      # detached
api.ports["p1"] = None                                        # deleted in Neutron
assert sync("p1") == ("tap1", {}, ("ovsnat-fixed-ip", "ovsnat-project"))
assert row.external_ids == {"iface-id": "p1", "vm-uuid": "i1"}  # os-vif's key untouched
print("ok")
"""


def test_the_agent_writes_them_and_follows_neutron():
    """From get_ports' answer to single-key writes on the row: set with the other keys, a
    new instance's id replaces the old, cleared when Neutron clears it, gone with the port;
    a row whose port Neutron does not know keeps none (even one written by hand)."""
    in_neutron_venv(AGENT)


SERVER = r"""
from ovsnat.neutron.keys import port_keys
from ovsnat.neutron.server_rpc import _port_facts

subnet = {"id": "s1", "cidr": "10.1.0.0/24", "gateway_ip": "10.1.0.1"}
port = {  # as ML2's get_ports returns a Nova port (both names of the project)
    "id": "p1", "network_id": "n1", "device_id": "inst-1", "device_owner": "compute:nova",
    "project_id": "proj-1", "tenant_id": "proj-1",
    "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.1.0.5"}],
}
facts = _port_facts(port, {"n1": {"id": "n1", "mtu": 1450}}, {"s1": subnet}, [], None)
keys = port_keys(facts)
assert keys["ovsnat-device-id"] == "inst-1" and keys["ovsnat-project"] == "proj-1", keys
bare = {**port, "device_id": "", "project_id": None, "tenant_id": "old-name"}
keys = port_keys(_port_facts(bare, {"n1": {"id": "n1"}}, {"s1": subnet}, [], None))
assert "ovsnat-device-id" not in keys and keys["ovsnat-project"] == "old-name", keys
print("ok")
"""


def test_the_server_takes_them_from_neutrons_port():
    in_neutron_venv(SERVER)
