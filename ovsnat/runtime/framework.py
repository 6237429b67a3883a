"""The only module that imports the OpenFlow framework: ryu 4.34 or os-ken.

Which one? The one already running: `ryu-manager` has imported ryu before it loads
ovsnat.app, and `ovsnat-agent` imports os_ken first. Otherwise OVSNAT_FRAMEWORK (ryu|os_ken)
decides, else ryu if installed, else os-ken. Both have the same API; os-ken renamed the
package and the app base class (RyuApp -> OSKenApp).
"""

from __future__ import annotations

import importlib
import os
import struct
import sys

from ovsnat.openflow.digest import group_desc_digest, stats_digest


def _choose() -> str:
    """The framework of this process (see the module docstring)."""
    if "ryu.base.app_manager" in sys.modules:
        return "ryu"
    if "os_ken.base.app_manager" in sys.modules:
        return "os_ken"
    wanted = os.environ.get("OVSNAT_FRAMEWORK")
    if wanted:
        return wanted
    try:
        importlib.import_module("ryu")
        return "ryu"
    except ImportError:
        return "os_ken"


NAME = _choose()


def _m(path: str):
    return importlib.import_module(f"{NAME}.{path}")


app_manager = _m("base.app_manager")
BaseApp = getattr(app_manager, "RyuApp", None) or app_manager.OSKenApp
handler = _m("controller.handler")
set_ev_cls = handler.set_ev_cls
MAIN_DISPATCHER = handler.MAIN_DISPATCHER
CONFIG_DISPATCHER = handler.CONFIG_DISPATCHER
DEAD_DISPATCHER = handler.DEAD_DISPATCHER
ofp_event = _m("controller.ofp_event")
event = _m("controller.event")
ofproto = _m("ofproto.ofproto_v1_3")
parser = _m("ofproto.ofproto_v1_3_parser")
nicira_ext = _m("ofproto.nicira_ext")
hub = _m("lib.hub")
packet = _m("lib.packet.packet")
ethernet = _m("lib.packet.ethernet")
arp = _m("lib.packet.arp")
ipv4 = _m("lib.packet.ipv4")
udp = _m("lib.packet.udp")
dhcp = _m("lib.packet.dhcp")
cfg = _m("cfg")
CONF = cfg.CONF


class _FlowKey:
    """Of a flow stats entry, only what ovsnat reads: table, cookie, priority, packet count
    (the per-VM refusal counters) and a digest of its body (ovsnat.openflow.digest: the
    audit finds a flow changed in place by it).

    Parsing each entry's match and instructions into framework objects is what makes a
    dump of 100,000 flows take seconds; skipping them keeps a controller restart cheap."""

    __slots__ = ("length", "table_id", "priority", "cookie", "packets", "digest")

    _HEAD = struct.Struct("!HB9xH10xQQ")  # length, table, priority, cookie, packets

    @classmethod
    def parser(cls, buf, offset):
        entry = cls()
        entry.length, entry.table_id, entry.priority, entry.cookie, entry.packets = (
            cls._HEAD.unpack_from(buf, offset)
        )
        entry.digest = stats_digest(buf, offset, entry.length)
        return entry


class _PortNo:
    """Of a port description, only its number. ovsnat reads no port from OpenFlow (OVSDB
    names them), yet the framework asks for every port description when a switch connects
    and parses them before the switch is handed on: 60-140 ms for 10,000 ports, the whole
    controller stalled meanwhile (bench/connect.py)."""

    __slots__ = ("port_no",)
    length = 64  # OFP_PORT_SIZE in OpenFlow 1.3
    _NO = struct.Struct("!I")

    @classmethod
    def parser(cls, buf, offset):
        entry = cls()
        entry.port_no = cls._NO.unpack_from(buf, offset)[0]
        return entry


class _GroupKey:
    """Of a group description, its id and a digest of its type and buckets
    (ovsnat.openflow.digest), which is all the controller compares."""

    __slots__ = ("length", "group_id", "digest")
    _HEAD = struct.Struct("!H2xI")  # length, type, pad, group id

    @classmethod
    def parser(cls, buf, offset):
        entry = cls()
        entry.length, entry.group_id = cls._HEAD.unpack_from(buf, offset)
        entry.digest = group_desc_digest(buf, offset, entry.length)
        return entry


def use_light_flow_stats() -> None:
    """Make flow stats replies in this process carry _FlowKey entries (table_id, cookie,
    priority) instead of full OFPFlowStats, and port descriptions _PortNo entries.
    Process-wide: run ovsnat in its own ryu-manager/ovsnat-agent process (as documented),
    not next to apps that read matches or ports."""
    parser.OFPFlowStatsReply.cls_stats_body_cls = _FlowKey
    parser.OFPPortDescStatsReply.cls_stats_body_cls = _PortNo
    parser.OFPGroupDescStatsReply.cls_stats_body_cls = _GroupKey


def trace_switches(callback) -> None:
    """Call `callback(origin, target, hub)` at every switch between green threads of this
    process (`hub` is the hub's own greenlet): the time between two switches is how long
    one green thread kept every other waiting. ryu and os-ken both run on eventlet, whose
    green threads are greenlets; greenlet.settrace costs well under a microsecond a switch
    and nothing while the process is idle."""
    import greenlet
    from eventlet import hubs

    the_hub = hubs.get_hub()

    def trace(event, args):
        if event in ("switch", "throw"):
            callback(args[0], args[1], the_hub.greenlet)

    greenlet.settrace(trace)


def run_apps(argv: list[str], apps: list[str]) -> int:
    """Start `apps` as ryu-manager would: what `ovsnat-agent` does on os-ken, which has no
    manager command since 4.0. Takes ryu-manager's options (--config-file, --ofp-*)."""
    hub.patch(thread=False)
    log = _m("log")
    _m("controller.controller")  # registers the --ofp-* options
    log.early_init_log()
    CONF(argv, project=NAME)
    log.init_log()
    manager = app_manager.AppManager.get_instance()
    manager.load_apps(apps)
    services = manager.instantiate_apps(**manager.create_contexts())
    try:
        hub.joinall(services)
    finally:
        manager.close()
    return 0
