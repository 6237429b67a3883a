"""Neutron's routers -> the routing keys (docs/routers.md): the pure mapping
(ovsnat.neutron.routers), checked against the controller's own parser, and the agent's
routing part (ovsnat.neutron.agent_routers.RouterSync) driven pass by pass with a fake
OVSDB and a fake server, in Neutron's virtualenv (oslo.messaging, neutron-lib). The
inputs are shaped as Neutron 29 returns them: ports as the ML2 plugin's get_ports, routers
as the L3 plugin's get_routers."""

from __future__ import annotations

import pytest

from ovsnat.model.routing import parse_bridge
from ovsnat.neutron import routers as rt
from tests.devstack_harness import in_neutron_venv


def iface(router: str, ip: str, owner: str = "network:router_interface") -> dict:
    return {"device_id": router, "device_owner": owner, "fixed_ips": [{"ip_address": ip}]}


def test_the_router_holding_a_network_is_the_one_with_its_gateway_address():
    assert rt.attached_router([], {"10.1.0.1"}) is None
    assert rt.attached_router([iface("r2", "10.1.0.1")], {"10.1.0.1"}) == "r2"
    both = [iface("r1", "10.1.0.50"), iface("r9", "10.1.0.1")]
    assert rt.attached_router(both, {"10.1.0.1"}) == "r9"  # add subnet beats add port
    assert rt.attached_router([iface("r9", "10.1.0.60"), iface("r1", "10.1.0.50")], set()) == "r1"
    dvr = iface("r3", "10.1.0.1", "network:router_interface_distributed")
    assert rt.attached_router([dvr], {"10.1.0.1"}) == "r3"


def gw(**info) -> dict:
    return {"external_gateway_info": info or None}


@pytest.mark.parametrize(
    "router,value,fips,pat",
    [
        (gw(network_id="ext1", enable_snat=True), "ext=ext1;snat=on", True, True),
        (gw(network_id="ext1", enable_snat=False), "ext=ext1;snat=off", True, False),
        (gw(network_id="ext1"), "ext=ext1;snat=on", True, True),  # Neutron's default: on
        (gw(), "ext=-;snat=off", False, False),
        (None, "ext=-;snat=off", False, False),  # deleted meanwhile
    ],
)
def test_router_values_mean_to_the_controller_what_neutron_says(router, value, fips, pat):
    assert rt.router_value(router) == value
    keys = rt.bridge_keys({"n1": rt.net_value("r1")}, {"r1": value})
    got = parse_bridge(keys)
    assert not got.problems
    route = got.of("n1")
    assert (route.routed, route.fips, route.pat) == (True, fips, pat)


def test_a_network_on_no_router_is_isolated_for_the_controller():
    got = parse_bridge(rt.bridge_keys({"n1": rt.net_value(None)}, {}))
    assert not got.problems and not got.of("n1").routed
    assert rt.named_router(rt.net_value(None)) is None and rt.named_router("router=r1") == "r1"


def test_only_gateway_and_snat_changes_concern_the_agents():
    gw = {"external_gateway_info": {"network_id": "ext1", "enable_snat": True}}
    renamed = {**gw, "name": "other"}
    assert not rt.gateway_changed(gw, renamed)
    assert rt.gateway_changed(
        gw, {"external_gateway_info": {**gw["external_gateway_info"], "enable_snat": False}}
    )
    assert rt.gateway_changed(gw, {"external_gateway_info": None})


CHECK = r"""
import threading
from types import SimpleNamespace as NS
from ovsnat.neutron.agent_ovsdb import LocalOvsdb
from ovsnat.neutron.agent_routers import RouterSync

class Ovsdb:
    bridge = "br-int"
    write_bridge = LocalOvsdb.write_bridge  # the agent's own, over this fake write_keys
    def __init__(self): self.keys, self.writes = {}, []
    def write_keys(self, table, record, diff):
        assert table == "Bridge" and record == "br-int"
        self.writes.append((dict(diff.set), tuple(diff.remove)))
        self.keys.update(diff.set)
        for k in diff.remove: self.keys.pop(k, None)

class Api:
    def __init__(self): self.routing, self.calls, self.fail = {}, [], False
    def get_routing(self, context, host, network_ids, timeout):
        self.calls.append(list(network_ids))
        if self.fail: raise RuntimeError("no answer")
        nets = {n: self.routing.get(n, "router=-") for n in network_ids}
        routers = {v[7:]: f"ext=ext1;snat={SNAT[v[7:]]}" for v in nets.values() if v != "router=-"}
        return {"networks": nets, "routers": routers}

SNAT = {"r1": "on", "r2": "off"}
failed = []
agent = NS(desired={}, wake=threading.Event(), context=None, host="hv1", fast_retry=False,
           own_external=None,
           health=NS(neutron_ok=True, call_timeout=lambda: 2.0), _held=lambda what: False,
           _failed=lambda what, e: failed.append(what), _answered=lambda what: None,
           ovsdb=Ovsdb())
api = Api()
sync = RouterSync(agent, api)

def snap(*pids):
    return NS(rows={p: None for p in pids}, bridge_ids=dict(agent.ovsdb.keys))

def one_pass(*pids, full=False):
    ok = sync.before_ports(snap(*pids), full)
    return ok and sync.after_ports(snap(*pids))

# p1 and p2 on n1 (router r1), p3 on n2 (no router)
agent.desired = {"p1": {"ovsnat-network": "n1"}, "p2": {"ovsnat-network": "n1"},
                 "p3": {"ovsnat-network": "n2"}}
api.routing = {"n1": "router=r1"}
assert not sync.covers(agent.desired["p1"])            # nothing known: the port waits
assert one_pass("p1", "p2", "p3")
assert agent.ovsdb.keys == {"ovsnat-net-n1": "router=r1", "ovsnat-net-n2": "router=-",
                            "ovsnat-router-r1": "ext=ext1;snat=on"}, agent.ovsdb.keys
assert api.calls == [["n1", "n2"]]                      # one call for both networks
assert all(sync.covers(agent.desired[p]) for p in ("p1", "p3")) and sync.covers({})
assert one_pass("p1", "p2", "p3") and api.calls == [["n1", "n2"]]   # idle: no call, no write
writes = len(agent.ovsdb.writes)

# the server says n1 was detached from r1: one refetch, the router's key goes after the ports
api.routing = {}
sync.mark(["n1", "n9"])
assert agent.wake.is_set()
assert one_pass("p1", "p2", "p3")
assert api.calls[-1] == ["n1"], api.calls               # not a network without local port
assert agent.ovsdb.keys == {"ovsnat-net-n1": "router=-", "ovsnat-net-n2": "router=-"}
assert agent.ovsdb.writes[writes] == ({"ovsnat-net-n1": "router=-"}, ())  # set first...
assert agent.ovsdb.writes[writes + 1] == ({}, ("ovsnat-router-r1",))     # ...removed after

# attached to r2 (snat off); then the server cannot be reached: nothing removed, retried
api.routing = {"n1": "router=r2"}
sync.mark(["n1"])
assert one_pass("p1", "p2", "p3")
assert agent.ovsdb.keys["ovsnat-router-r2"] == "ext=ext1;snat=off"
agent.desired["p4"] = {"ovsnat-network": "n3"}
api.fail = True
assert not sync.before_ports(snap("p1", "p2", "p3", "p4"), False)
assert failed == ["get_routing"] and not sync.covers(agent.desired["p4"])
assert "ovsnat-net-n1" in agent.ovsdb.keys             # kept while Neutron is silent
api.fail = False
assert one_pass("p1", "p2", "p3", "p4") and sync.covers(agent.desired["p4"])

# the last port of n2 leaves: its key goes, only once Neutron answered for every row
del agent.desired["p3"]
assert not sync.after_ports(snap("p1", "p2", "p3", "p4"))  # p3 still a row, unknown
assert one_pass("p1", "p2", "p4")
assert "ovsnat-net-n2" not in agent.ovsdb.keys and "ovsnat-net-n3" in agent.ovsdb.keys
# a full sync asks for every local network again
before = len(api.calls)
assert one_pass("p1", "p2", "p4", full=True) and sorted(api.calls[before]) == ["n1", "n3"]
print("ok")
"""


def test_the_agent_writes_routing_keys_before_ports_and_removes_them_after():
    in_neutron_venv(CHECK)


FIPS = (
    CHECK.rsplit("# p1 and p2 on n1", 1)[0]
    + r"""
told = []
api.fip_status = lambda context, host, ports, timeout: told.append(dict(ports))

def rows(**live):
    ids = {p: ({"ovsnat-fip-live": f} if f else {}) for p, f in live.items()}
    return NS(rows={p: NS(external_ids=i) for p, i in ids.items()}, bridge_ids={})

assert sync.report_fips(rows(p1="203.0.113.5", p2=""), True)
assert told == [{"p1": "203.0.113.5", "p2": ""}]        # a full sync tells everything
assert sync.report_fips(rows(p1="203.0.113.5", p2=""), False) and len(told) == 1  # idle
assert sync.report_fips(rows(p1="", p2="203.0.113.6", p3=""), False)
assert told[-1] == {"p1": "", "p2": "203.0.113.6"}      # changes only; a new port without
agent.health.neutron_ok = False                          # a FIP is nothing to tell
assert not sync.report_fips(rows(p1="203.0.113.5"), False) and len(told) == 2
agent.health.neutron_ok = True                           # cut off: told when it answers
assert sync.report_fips(rows(p1="203.0.113.5"), False) and told[-1] == {"p1": "203.0.113.5"}
print("ok")
"""
)


def test_the_agent_tells_neutron_which_fips_are_live_when_that_changes():
    """From the controller's ovsnat-fip-live markers: everything at a full sync, then only
    what changed; nothing while Neutron is unreachable, then what is true by then."""
    in_neutron_venv(FIPS)


EXTERNALS = (
    CHECK.rsplit("# p1 and p2 on n1", 1)[0]
    + r"""
from ovsnat.model import HostConfig
from ovsnat.model.externals import parse_externals
from ovsnat.neutron import routers as rt
# r1's gateway: ext1, a VLAN provider network on the uplink's physnet; r3's: ext2, on another
# physnet; the host's own network ext0 (a VLAN network too, as Neutron types it)
EXT1 = "vlan=200;cidr=198.51.100.128/25;gw=198.51.100.129;snat=198.51.100.140"
EXT2 = "vlan=201;cidr=198.51.100.64/26;gw=198.51.100.65;snat=198.51.100.70"
GATEWAYS = {"r1": "ext=ext1;snat=on", "r2": "ext=ext0;snat=on", "r3": "ext=ext2;snat=on"}
PHYSNETS = {"ext0": "external", "ext1": "external", "ext2": "elsewhere"}
def get_routing(context, host, network_ids, timeout):
    nets = {n: api.routing.get(n, "router=-") for n in network_ids}
    routers = {v[7:]: GATEWAYS[v[7:]] for v in nets.values() if v != "router=-"}
    named = {rt.router_external(v) for v in routers.values()}
    exts = {"ext1": EXT1, "ext2": EXT2,  # the server's value for ext0 says its VLAN: unused
            "ext0": "vlan=300;cidr=203.0.113.0/24;gw=203.0.113.1;snat=203.0.113.99"}
    return {"networks": nets, "routers": routers,
            "externals": {e: v for e, v in exts.items() if e in named},
            "external_physnets": {e: p for e, p in PHYSNETS.items() if e in named}}
api.get_routing = get_routing
agent.desired = {"p1": {"ovsnat-network": "n1"}, "p2": {"ovsnat-network": "n2"},
                 "p3": {"ovsnat-network": "n3"}}
api.routing = {"n1": "router=r1", "n2": "router=r2", "n3": "router=r3"}
agent.ovsdb.keys["ovsnat-ext-old"] = EXT1.replace("200", "202")  # from before a restart
# the host's own network not known yet (get_snat_address not answered): no external
# network is written, none removed
assert one_pass("p1", "p2", "p3")
assert "ovsnat-ext-old" in agent.ovsdb.keys
assert not any(k.startswith("ovsnat-ext-") and k != "ovsnat-ext-old" for k in agent.ovsdb.keys)
own = rt.own_external({"network_id": "ext0", "ip": "203.0.113.11", "cidr": "203.0.113.0/24",
                       "gateway": "203.0.113.1", "physnet": "external"})
agent.own_external = own
sync.mark(["n1", "n2", "n3"])
assert one_pass("p1", "p2", "p3")
keys = agent.ovsdb.keys
assert keys["ovsnat-ext-ext1"] == EXT1                        # tagged on the uplink
assert keys["ovsnat-ext-ext0"] == "vlan=-;cidr=203.0.113.0/24;gw=203.0.113.1;snat=203.0.113.11"
assert "ovsnat-ext-ext2" not in keys                         # another wire: not served
assert "ovsnat-ext-old" not in keys                          # removed after the ports
cfg = HostConfig.parse({"bridge": "br-int", "uplink_port": "uplink",
    "router_mac": "02:00:00:00:00:01", "external_cidr": "203.0.113.0/24",
    "external_gateway_ip": "203.0.113.1",
    "snat_ip": "203.0.113.11", "snat_port_min": 1024, "snat_port_max": 65535,
    "ct_zone": 1, "fip_frag_ct_zone": 2})
externals, problems = parse_externals(keys, cfg)
assert not problems and [(e.id, e.vlan) for e in externals] == [("ext0", None), ("ext1", 200)]
# p2's network leaves r2: the host's own network's key stays (never no key at all)
del agent.desired["p2"]
assert one_pass("p1", "p3")
assert "ovsnat-router-r2" not in agent.ovsdb.keys and "ovsnat-ext-ext0" in agent.ovsdb.keys
# p1's leaves r1: ext1's key goes with r1's, after the ports
del agent.desired["p1"]
assert one_pass("p3")
assert "ovsnat-ext-ext1" not in agent.ovsdb.keys and "ovsnat-ext-ext0" in agent.ovsdb.keys
print("ok")
"""
)


def test_the_agent_writes_the_external_networks_its_routers_name():
    """Each gateway network of a local network's router on the uplink's physnet, with this
    host's SNAT address on it; the host's own external network always, untagged whatever
    its type (the controller's options'), and nothing before it is known; each other one
    removed with the last router naming it."""
    in_neutron_venv(EXTERNALS)


EAST_WEST = (
    CHECK.rsplit("# p1 and p2 on n1", 1)[0]
    + r"""
from ovsnat.model.routing import parse_bridge
# n1 (a local port's) and n4 (no local port) on r1, answered as RouterRpc.get_routing does
N1 = "router=r1;cidr=10.1.0.0/24;gw=10.1.0.1;vlan=101"
N4 = "router=r1;cidr=10.4.0.0/24;gw=10.4.0.1;vlan=-"
state = {"nb4": "10.4.0.3=fa:16:3e:00:04:03@hv2", "peer": True,
         "macs": {"hv1": "fa:16:3f:00:00:01", "hv2": "fa:16:3f:00:00:02"}}
def get_routing(context, host, network_ids, timeout):
    api.calls.append(list(network_ids))
    nets = {"n1": N1, **({"n4": N4} if state["peer"] else {})}
    return {"networks": nets, "routers": {"r1": "ext=ext1;snat=on"},
            "neighbours": {"n1": "", **({"n4": state["nb4"]} if state["peer"] else {})},
            "hostmacs": dict(state["macs"])}
api.get_routing = get_routing
keys = agent.ovsdb.keys
agent.desired = {"p1": {"ovsnat-network": "n1"}}
assert one_pass("p1") and api.calls == [["n1"]]
assert keys == {"ovsnat-net-n1": N1, "ovsnat-net-n4": N4, "ovsnat-router-r1": "ext=ext1;snat=on",
                "ovsnat-nb-n4": state["nb4"], "ovsnat-host": "hv1",
                "ovsnat-hostmac-hv1": "fa:16:3f:00:00:01",
                "ovsnat-hostmac-hv2": "fa:16:3f:00:00:02"}, keys   # n1: no remote port, no key
parsed = parse_bridge(keys)
assert not parsed.problems and sorted(parsed.east_west()) == ["n1", "n4"], parsed.problems

# a port of n4 moved to hv3: the server casts n4, a peer: n1 is fetched again
state["nb4"] = "10.4.0.3=fa:16:3e:00:04:03@hv3"
sync.mark(["n4"])
assert one_pass("p1") and api.calls[-1] == ["n1"] and keys["ovsnat-nb-n4"].endswith("@hv3")
calls = len(api.calls)
sync.mark(["n7"])                                        # a network of nobody's here: no call
assert one_pass("p1") and len(api.calls) == calls

# n4 detached from r1 (cast about n4): n1's answer no longer has it, its keys go
state["peer"] = False
sync.mark(["n4"])
assert one_pass("p1") and "ovsnat-net-n4" not in keys and "ovsnat-nb-n4" not in keys, keys

# a host allocated its routed MAC (hosts_changed): fetched again, written
state["macs"]["hv3"] = "fa:16:3f:00:00:03"
sync.endpoint.hosts_changed(None)
assert one_pass("p1") and keys["ovsnat-hostmac-hv3"] == "fa:16:3f:00:00:03"

# the last local port leaves: every routing key goes, the host's too
agent.desired = {}
assert one_pass()
assert not [k for k in keys if k.startswith(("ovsnat-net-", "ovsnat-nb-", "ovsnat-host"))], keys
print("ok")
"""
)


def test_the_agent_writes_a_routers_other_networks_neighbours_and_host_macs():
    """East-west keys (issue 26 item 2): the networks of a local network's router with
    their neighbours, the host's name and every host's routed MAC, parsed by the
    controller without a problem; a cast about a peer fetches its local network again, a
    detached peer's keys go, a new host's MAC arrives by hosts_changed."""
    in_neutron_venv(EAST_WEST)


SERVER = r"""
from oslo_config import cfg
cfg.CONF([], project="neutron")  # an admin context reads the policy options
from neutron_lib import context as n_context
from neutron_lib.callbacks import events, resources
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory
from ovsnat.neutron.server_routers import RouterPushes, RouterRpc

PORTS = [  # router interface ports as the ML2 plugin lists them
    {"id": "i1", "network_id": "n1", "device_id": "r1",
     "device_owner": "network:router_interface", "fixed_ips": [{"ip_address": "10.1.0.1"}]},
    {"id": "i2", "network_id": "n2", "device_id": "r2",
     "device_owner": "network:router_interface", "fixed_ips": [{"ip_address": "10.2.0.1"}]},
    {"id": "i3", "network_id": "n2", "device_id": "r0",
     "device_owner": "network:router_interface", "fixed_ips": [{"ip_address": "10.2.0.9"}]},
    {"id": "i4", "network_id": "n4", "device_id": "r1",  # n4: r1's other network, no port here
     "device_owner": "network:router_interface", "fixed_ips": [{"ip_address": "10.4.0.1"}]},
]
def vm(pid, net, ip, mac, host, owner="compute:nova", vif="ovs"):
    return {"id": pid, "network_id": net, "device_owner": owner, "mac_address": mac,
            "binding:host_id": host, "binding:vif_type": vif, "fixed_ips": [{"ip_address": ip}]}
VMS = [vm("v1", "n1", "10.1.0.5", "fa:16:3e:00:00:05", "hv1"),    # on the asking host
       vm("v2", "n1", "10.1.0.7", "fa:16:3e:00:00:07", "hv2"),
       vm("v3", "n4", "10.4.0.3", "fa:16:3e:00:04:03", "hv2"),
       vm("v4", "n4", "10.4.0.2", "fa:16:3e:00:04:02", "hv3"),
       vm("v5", "n4", "10.4.0.9", "fa:16:3e:00:04:09", "", vif="unbound"),   # not bound
       vm("v6", "n4", "10.4.0.8", "fa:16:3e:00:04:08", "hv3", vif="binding_failed"),
       vm("d1", "n4", "10.4.0.4", "fa:16:3e:00:04:04", "hv2", owner="network:dhcp")]
MACS = [{"host": "hv2", "mac_address": "fa:16:3f:00:00:02"}]

SNAT_PORTS = [{"id": "s1", "network_id": "ext1", "device_owner": "network:ovsnat_snat",
               "device_id": "hv1", "fixed_ips": [{"ip_address": "198.51.100.140",
                                                  "subnet_id": "e1"}]}]
class Core:
    def get_ports(self, ctx, filters):
        if filters.get("device_owner") == ["network:ovsnat_snat"]:  # a host's SNAT port
            return [p for p in SNAT_PORTS if all(p[k] in v for k, v in filters.items())]
        pool = PORTS if "device_owner" in filters else VMS
        if "device_owner" in filters:
            assert set(filters["device_owner"]) >= {"network:router_interface"}
        return [p for p in pool
                if all(p[k] in v for k, v in filters.items() if k != "device_owner")]
    def get_subnets(self, ctx, filters):
        assert filters["ip_version"] == [4]
        subnets = [{"network_id": "n1", "gateway_ip": "10.1.0.1", "cidr": "10.1.0.0/24"},
                   {"network_id": "n2", "gateway_ip": "10.2.0.1", "cidr": "10.2.0.0/24"},
                   {"network_id": "n3", "gateway_ip": "10.3.0.1", "cidr": "10.3.0.0/24"},
                   {"network_id": "n4", "gateway_ip": "10.4.0.1", "cidr": "10.4.0.0/24"}]
        return [s for s in subnets if s["network_id"] in filters["network_id"]]
    def get_networks(self, ctx, filters):
        nets = {"n1": {"id": "n1", "provider:network_type": "vlan",
                       "provider:segmentation_id": 101},
                "n2": {"id": "n2", "provider:network_type": "vxlan",
                       "provider:segmentation_id": 7},
                "n4": {"id": "n4", "provider:network_type": "flat"},
                "ext1": {"id": "ext1", "provider:network_type": "vlan",
                         "provider:segmentation_id": 200,
                         "provider:physical_network": "external"}}
        return [nets[i] for i in filters["id"] if i in nets]
    def get_subnet(self, ctx, sid):
        assert sid == "e1"
        return {"ip_version": 4, "cidr": "198.51.100.128/25", "gateway_ip": "198.51.100.129"}
    def get_dvr_mac_address_list(self, ctx):
        return list(MACS)
    def get_dvr_mac_address_by_host(self, ctx, host):
        MACS.append({"host": host, "mac_address": "fa:16:3f:00:00:01"})
        return MACS[-1]

class L3:
    def get_routers(self, ctx, filters):
        routers = {"r1": {"id": "r1", "external_gateway_info":
                          {"network_id": "ext1", "enable_snat": False}},
                   "r2": {"id": "r2", "external_gateway_info": None}}
        return [routers[i] for i in filters["id"] if i in routers]

directory.add_plugin(plugin_constants.CORE, Core())
directory.add_plugin(plugin_constants.L3, L3())
class Hosts:
    def __init__(self): self.casts = 0
    def hosts_changed(self, context): self.casts += 1
hosts = Hosts()
got = RouterRpc(hosts).get_routing(None, "hv1", ["n3", "n2", "n1"])
want = {"networks": {"n1": "router=r1;cidr=10.1.0.0/24;gw=10.1.0.1;vlan=101",
                     "n2": "router=r2",  # a VXLAN network: routed, never east-west
                     "n3": "router=-",
                     "n4": "router=r1;cidr=10.4.0.0/24;gw=10.4.0.1;vlan=-"},
        "routers": {"r1": "ext=ext1;snat=off", "r2": "ext=-;snat=off"},
        "neighbours": {"n1": "10.1.0.7=fa:16:3e:00:00:07@hv2",
                       "n4": "10.4.0.2=fa:16:3e:00:04:02@hv3,10.4.0.3=fa:16:3e:00:04:03@hv2"},
        "hostmacs": {"hv1": "fa:16:3f:00:00:01", "hv2": "fa:16:3f:00:00:02"},
        # r1's gateway network, with hv1's SNAT port on it: VLAN 200 on the uplink
        "externals": {"ext1": "vlan=200;cidr=198.51.100.128/25;gw=198.51.100.129;"
                              "snat=198.51.100.140"},
        "external_physnets": {"ext1": "external"}}
assert got == want, got
assert hosts.casts == 1   # hv1's MAC was allocated: every agent hears of it
assert RouterRpc(hosts).get_routing(None, "hv1", ["n1"])["hostmacs"] == want["hostmacs"]
assert hosts.casts == 1   # known: nothing cast
# what the agent writes from it means to the controller what Neutron says
from ovsnat.model.routing import parse_bridge
from ovsnat.neutron import routers as rt
keys = rt.bridge_keys(got["networks"], got["routers"], got["neighbours"], "hv1", got["hostmacs"],
                     got["externals"])
assert keys["ovsnat-ext-ext1"] == want["externals"]["ext1"]
parsed = parse_bridge(keys, frozenset({"ext1"}))
assert not parsed.problems, parsed.problems
assert sorted(parsed.east_west()) == ["n1", "n4"]
assert parsed.hosts.name == "hv1" and set(parsed.hosts.others) == {"hv2"}
assert [str(n.ip) for n in parsed.neighbours["n4"]] == ["10.4.0.2", "10.4.0.3"]

class Notifier:
    def __init__(self): self.casts, self.hosts = [], 0
    def changed(self, context, networks): self.casts.append(sorted(set(networks)))
    def hosts_changed(self, context): self.hosts += 1

notifier = Notifier()
pushes = RouterPushes(notifier)
ctx = n_context.get_admin_context()
payload = events.DBEventPayload(ctx, metadata={"port": PORTS[0]}, states=({"id": "r1"},),
                                resource_id="r1")
pushes.interface_changed(resources.ROUTER_INTERFACE, events.AFTER_DELETE, None, payload)
old = {"id": "r2", "name": "a", "external_gateway_info": None}
renamed = events.DBEventPayload(ctx, states=(old, {**old, "name": "b"}), resource_id="r2")
pushes.router_updated(resources.ROUTER, events.AFTER_UPDATE, None, renamed)
gw = {**old, "external_gateway_info": {"network_id": "ext1", "enable_snat": True}}
pushes.router_updated(resources.ROUTER, events.AFTER_UPDATE, None,
                      events.DBEventPayload(ctx, states=(old, gw), resource_id="r2"))
pushes.gateway_changed(resources.ROUTER_GATEWAY, events.AFTER_DELETE, None,
                       events.DBEventPayload(ctx, states=({"id": "r0"},)))
# an interface removed: its network and the router's others (n4's hosts forget n1)
assert notifier.casts == [["n1", "n4"], ["n2"], ["n2"]], notifier.casts  # a rename: nothing
# VM ports: bound, moved (a live migration's activation), re-addressed, deleted: its
# network's neighbours changed; a status change or a router's own port: nothing
def port_event(event, *states):
    pushes.port_changed(resources.PORT, event, None, events.DBEventPayload(ctx, states=states))
v2 = VMS[1]
port_event(events.AFTER_UPDATE, {**v2, "binding:host_id": "", "binding:vif_type": "unbound"}, v2)
port_event(events.AFTER_UPDATE, v2, {**v2, "binding:host_id": "hv3"})
port_event(events.AFTER_UPDATE, v2, {**v2, "status": "DOWN"})
port_event(events.AFTER_UPDATE, PORTS[0], {**PORTS[0], "status": "ACTIVE"})
port_event(events.AFTER_UPDATE, v2, {**v2, "fixed_ips": [{"ip_address": "10.1.0.8"}]})
port_event(events.AFTER_DELETE, v2)
port_event(events.AFTER_CREATE, {**VMS[0], "network_id": "n9"})
assert notifier.casts[3:] == [["n1"]] * 4 + [["n9"]], notifier.casts
agent = lambda kind: events.DBEventPayload(ctx, states=(NS(agent_type=kind, host="hv2"),))
from types import SimpleNamespace as NS
pushes.agent_deleted(resources.AGENT, events.AFTER_DELETE, None, agent("Open vSwitch agent"))
pushes.agent_deleted(resources.AGENT, events.AFTER_DELETE, None, agent("ovsnat agent"))
assert notifier.hosts == 1
print("ok")
"""


def test_the_server_answers_each_networks_router_and_pushes_what_changed():
    in_neutron_venv(SERVER)


L3 = r"""
from types import SimpleNamespace
from neutron.services.l3_router import l3_router_plugin
from neutron_lib.callbacks import resources
from ovsnat.neutron import l3_plugin as l3

upstream = l3_router_plugin.L3RouterPlugin._supported_extension_aliases
names = set(upstream) | {"qos-fip"}
missing = [a for a in l3.REFUSED if a not in names]
assert not missing, f"refused aliases Neutron does not have: {missing}"
kept = l3.kept_aliases(list(upstream))
assert "router" in kept and "ext-gw-mode" in kept and "extraroute" not in kept, kept
# Neutron's API refuses to start when a loaded extension needs one left out (seen: the
# DVR-only router-admin-state-down-before-update without dvr).
from neutron_lib.api import definitions
defs = {d.ALIAS: d for d in definitions._ALL_API_DEFINITIONS}
required = {a: getattr(defs.get(a), "REQUIRED_EXTENSIONS", []) for a in kept}
needs = {a: [r for r in rs if r in l3.REFUSED] for a, rs in required.items()}
assert not any(needs.values()), needs
assert l3.clashing(["ovsnat-router", "port_forwarding"]) == ["port_forwarding"]
assert l3.clashing(["ovsnat-router", "qos"]) == []
iface = SimpleNamespace(metadata={"port": {"id": "p1", "device_owner": "network:router_interface"}})
other = SimpleNamespace(metadata={"port": {"id": "p2", "device_owner": "compute:nova"}})
gateway = SimpleNamespace(latest_state=SimpleNamespace(gw_port_id="g1"))
assert l3.router_port_ids(resources.ROUTER_INTERFACE, iface) == ["p1"]
assert l3.router_port_ids(resources.ROUTER_INTERFACE, other) == []
assert l3.router_port_ids(resources.ROUTER_GATEWAY, gateway) == ["g1"]
from ovsnat.neutron import routers as rt
fip = {"floating_ip_address": "203.0.113.5"}
assert (rt.fip_status_of(fip, "203.0.113.5"), rt.fip_status_of(fip, "")) == ("ACTIVE", "DOWN")
assert rt.fip_status_of(fip, "203.0.113.9") == "DOWN"  # another of the port's FIPs is live
assert issubclass(l3.OvsnatL3RouterPlugin, l3_router_plugin.L3RouterPlugin)
print("ok")
"""


def test_the_l3_plugin_refuses_only_aliases_neutron_has_and_finds_its_router_ports():
    """ovsnat-router's trimmed list names Neutron 29's own aliases (a typo would leave an
    extension loaded), keeps the router API and no extension that needs one it left out
    (Neutron's API would not start), and knows the router port each callback made."""
    in_neutron_venv(L3)


STATUS = r"""
from oslo_config import cfg
cfg.CONF([], project="neutron")  # an admin context reads the policy options
from types import SimpleNamespace as NS
from neutron_lib.plugins import constants as pc, directory
from ovsnat.neutron import server_routers as sr

class Core:
    ports = [
        {"id": "s1", "device_owner": "network:ovsnat_snat", "device_id": "hv9"},
        {"id": "s2", "device_owner": "network:ovsnat_snat", "device_id": "hv1"},
        {"id": "p1", "device_owner": "compute:nova", "device_id": "vm1",
         "binding:host_id": "hv1"},
    ]
    deleted = []
    def get_ports(self, ctx, filters):
        return [p for p in self.ports if all(p.get(k) in v for k, v in filters.items())]
    def get_port(self, ctx, pid):
        return next(p for p in self.ports if p["id"] == pid)
    def delete_port(self, ctx, pid):
        self.deleted.append(pid)

class L3:
    fips = [{"id": "f1", "port_id": "p1", "floating_ip_address": "203.0.113.5",
             "status": "DOWN"}]
    updates = []
    def get_floatingips(self, ctx, filters):
        return [f for f in self.fips if f["port_id"] in filters["port_id"]]
    def update_floatingip_status(self, ctx, fid, status):
        self.updates.append((fid, status))
        next(f for f in self.fips if f["id"] == fid)["status"] = status

core, l3 = Core(), L3()
directory.add_plugin(pc.CORE, core)
directory.add_plugin(pc.L3, l3)
gone = lambda kind, host: NS(latest_state=NS(agent_type=kind, host=host))
sr.snat_ports_go_with_their_agent(None, None, None, gone("ovsnat agent", "hv9"))
assert core.deleted == ["s1"], core.deleted
sr.snat_ports_go_with_their_agent(None, None, None, gone("Open vSwitch agent", "hv1"))
assert core.deleted == ["s1"]                            # not ovsnat's agent: nothing
rpc = sr.RouterRpc()
rpc.fip_status(None, "hv1", {"p1": "203.0.113.5"})
assert l3.updates == [("f1", "ACTIVE")]
rpc.fip_status(None, "hv1", {"p1": "203.0.113.5", "p9": ""})
assert len(l3.updates) == 1                              # unchanged: no write
rpc.fip_status(None, "hv2", {"p1": ""})
assert len(l3.updates) == 1                              # not the host of its binding
rpc.fip_status(None, "hv1", {"p1": ""})
assert l3.updates[-1] == ("f1", "DOWN")
print("ok")
"""


def test_the_server_sets_fip_statuses_from_reports_and_drops_a_deleted_agents_snat_ports():
    """fip_status: ACTIVE from a live report, DOWN only from the host of the port's binding,
    no write when nothing changes; an ovsnat agent deleted takes its host's SNAT ports."""
    in_neutron_venv(STATUS)
