"""Prometheus metrics of the controller (off unless metrics_port is set).

Gauges are set from the controller's state after each change; counters count events. The
PAT usage gauges are refreshed from conntrack (`ovs-appctl dpctl/dump-conntrack`) every few
seconds, so a scrape never waits on OVS. The app serves `exposition()` over HTTP on the
framework's green-thread hub (prometheus_client's own server uses real threads and calls
that eventlet's green socket module does not support).
"""

from __future__ import annotations

import logging

LOG = logging.getLogger("ovsnat")

try:
    import prometheus_client as prom
except ImportError:                       # metrics are optional
    prom = None


class Metrics:
    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.enabled = bool(port) and prom is not None
        if port and prom is None:
            LOG.error("ovsnat: metrics_port is set but prometheus_client is not installed")
        if not self.enabled:
            return
        r = self.registry = prom.CollectorRegistry()
        g = lambda n, h, *l: prom.Gauge(f"ovsnat_{n}", h, l, registry=r)   # noqa: E731
        c = lambda n, h, *l: prom.Counter(f"ovsnat_{n}", h, l, registry=r)  # noqa: E731
        self.vms = g("vms_programmed", "VM ports programmed, by NAT kind", "kind")
        self.fips_pending = g("fips_pending", "FIPs waiting for their VM to show up here")
        self.rejected = g("ports_skipped", "Ports skipped for bad input or clashes")
        self.flow_mods = c("flow_mods", "flow_mods sent to the switch")
        self.bundles = c("bundles", "OpenFlow bundles sent")
        self.of_errors = c("openflow_errors", "OpenFlow error replies")
        self.ovsdb_reconnects = c("ovsdb_reconnects", "OVSDB (re)connections")
        self.conflicts = c("fip_conflicts", "ARP claims of a live FIP seen on the uplink")
        self.activations = c("fip_activations", "FIPs activated on first frame")
        self.reconcile = g("reconcile_seconds", "Datapath connect to flows in sync")
        self.pat_in_use = g("pat_ports_in_use", "PAT source ports in use (conntrack)")
        self.pat_capacity = g("pat_ports_capacity", "PAT source ports in the range")
        self.pat_vm = g("pat_ports_in_use_by_vm", "PAT ports in use per VM", "fixed_ip")
        self.port, self.host = port, host

    def exposition(self) -> bytes:
        return prom.generate_latest(self.registry)

    def http_response(self, request: bytes) -> bytes:
        """A minimal HTTP/1.0 answer: the metrics for GET /metrics, else 404."""
        line = request.split(b"\r\n", 1)[0].split()
        if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] in (b"/metrics",
                                                                               b"/"):
            body, status = self.exposition(), b"200 OK"
        else:
            body, status = b"not found\n", b"404 Not Found"
        return (b"HTTP/1.0 " + status + b"\r\nContent-Type: " +
                prom.CONTENT_TYPE_LATEST.encode() + b"\r\nContent-Length: " +
                str(len(body)).encode() + b"\r\n\r\n" + body)

    def inc(self, name: str, amount: float = 1) -> None:
        if self.enabled:
            getattr(self, name).inc(amount)

    def set_state(self, fip: int, pat: int, pending: int, rejected: int) -> None:
        if self.enabled:
            self.vms.labels("fip").set(fip)
            self.vms.labels("pat").set(pat)
            self.fips_pending.set(pending)
            self.rejected.set(rejected)

    def set_pat(self, usage: dict) -> None:
        if self.enabled:
            self.pat_in_use.set(usage["ports_in_use"])
            self.pat_capacity.set(usage["capacity"])
            for ip, n in usage["per_vm"].items():
                self.pat_vm.labels(ip).set(n)

    def set_reconcile(self, seconds: float) -> None:
        if self.enabled:
            self.reconcile.set(seconds)
