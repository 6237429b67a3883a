"""Whose time is the OpenFlow connection's set-up after `ovs-vsctl set-controller`?

    python -m bench.hello [--ports 4000] [--port-type dummy]

On a lab host with that many VM ports, br-int is pointed (`set-controller`) at a listener
that does nothing but answer HELLO at once (a few lines of Python, nothing else running in
its process; it asks for the features too, and notes when the reply comes), then, on the
same host, at ovsnat's controller (which has read OVSDB and waits). For each,
ovs-vswitchd's own log says when it began connecting and when the connection was up (both
HELLOs exchanged), and how long its main loop was blocked meanwhile. If the instant
listener waits as long as ovsnat, the time is ovs-vswitchd's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from bench.common import Controller, say, vswitchd_log
from bench.connect import vswitchd_lines
from ovsnat.lab import Lab, bulk, scenario
from ovsnat.lab.sh import run, wait_for
from ovsnat.lab.topology import BRIDGE

LISTENER = """
import socket, struct, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
while True:
    c, _ = s.accept()
    c.sendall(bytes([4, 0, 0, 8, 0, 0, 0, 1]))        # OFPT_HELLO, OpenFlow 1.3
    c.sendall(bytes([4, 5, 0, 8, 0, 0, 0, 2]))        # OFPT_FEATURES_REQUEST
    print("%.6f HELLO and FEATURES_REQUEST sent" % time.time(), flush=True)
    buf = b""
    while True:
        data = c.recv(65536)
        if not data:
            break
        buf += data
        while len(buf) >= 8 and len(buf) >= struct.unpack_from("!H", buf, 2)[0]:
            kind, length = buf[1], struct.unpack_from("!H", buf, 2)[0]
            if kind == 6:
                print("%.6f FEATURES_REPLY" % time.time(), flush=True)
            buf = buf[length:]
"""


def connect_once(host, name: str) -> dict:
    offset = os.path.getsize(vswitchd_log(host))
    t_set = time.time()
    host.vsctl("--no-wait", "set-controller", BRIDGE, f"tcp:127.0.0.1:{scenario.OF_PORT}")

    def up():
        lines = vswitchd_lines(host, offset)
        hit = next(
            (t for t, _, m in lines if re.search(rf"{BRIDGE}<->tcp:\S+: connected", m)), None
        )
        return (hit, lines) if hit else None

    connected, lines = wait_for(up, 120, interval=0.05, what=f"{name}: connected")
    connecting = next(t for t, _, m in lines if re.search(r"<->tcp:\S+: connecting", m))
    blocked = [m for _, mod, m in lines if mod == "timeval" and "poll interval" in m]
    out = {
        "set-controller -> connecting": round(connecting - t_set, 3),
        "connecting -> connected": round(connected - connecting, 3),
        "vswitchd main loop": blocked,
    }
    say(f"  {name}: {out}")
    host.vsctl("--no-wait", "del-controller", BRIDGE)
    time.sleep(2)  # let ovs-vswitchd settle between the two
    return out


def features(host, log: str) -> float | None:
    """Seconds from ovs-vswitchd's `connected` to the listener reading its features reply."""
    with open(log) as f:
        got = [float(line.split()[0]) for line in f if "FEATURES_REPLY" in line]
    up = [
        t
        for t, _, m in vswitchd_lines(host, 0)
        if re.search(
            rf"{BRIDGE}<->tcp:\S+: "
            r"connected",
            m,
        )
    ]
    return round(got[0] - up[0], 3) if got and up else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.hello",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ports", type=int, default=4000)
    p.add_argument("--port-type", default="dummy", choices=["dummy", "patch"])
    a = p.parse_args(argv)
    result = {"ports": a.ports, "port_type": a.port_type}
    with Lab() as lab:
        lab.up()
        host = lab.add_host("hv1", dummy=True)
        try:
            bulk.add_ports(host, [bulk.vm_spec(i) for i in range(a.ports)], port_type=a.port_type)
            lab.spawn("hello", lab.python("-c", LISTENER, str(scenario.OF_PORT)), ns=host.ns)
            wait_for(
                lambda: f":{scenario.OF_PORT} " in run(["ss", "-ltn"], ns=host.ns).stdout,
                10,
                what="the listener",
            )
            result["instant HELLO listener"] = connect_once(host, "instant HELLO listener")
            result["instant HELLO listener"]["connected -> features reply"] = features(
                host, lab.procs["hello"]["log"]
            )
            lab.stop_proc("hello")
            ctl = Controller(lab, "hv1", bulk.SNAT_IP, **bulk.scale_options())
            ctl.start()
            ctl.wait_ovsdb(a.ports, 600)
            result["ovsnat"] = connect_once(host, "ovsnat")
        finally:
            bulk.stop_big_host(host)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
