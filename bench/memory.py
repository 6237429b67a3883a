"""Controller memory: RSS (/proc/<pid>/status VmRSS) at N VMs, measured by bench.cold on its
N-VM host, against an idle controller (host with no VMs, connected and in sync) measured
here. The recorded pid is the `ip netns exec` process, which execs the controller."""

from __future__ import annotations

import time

from bench.common import Controller, Result, proc_status
from ovsnat.lab import Lab, bulk


def idle_rss_kb(timeout: float = 60) -> dict:
    with Lab() as lab:
        lab.up()
        lab.add_host("hv1", dummy=True)
        ctl = Controller(lab, "hv1", bulk.SNAT_IP, **bulk.scale_options())
        ctl.start()
        ctl.wait_ovsdb(0, timeout)
        ctl.connect()
        ctl.wait_in_sync(timeout)
        time.sleep(1.0)
        return proc_status(ctl.pid)


def results(n: int, at_n: dict, idle: dict, port_type: str) -> list[Result]:
    mb = lambda kb: kb / 1024  # noqa: E731
    return [
        Result(
            f"memory N={n} {port_type}",
            "controller VmRSS after the cold program (MB)",
            mb(at_n["cold"]["VmRSS"]),
            mb(idle["VmRSS"]),
            "MB",
            "value <= 150",
            {"kB": {**{k: v for k, v in at_n.items()}, "idle": idle}},
        )
    ]
