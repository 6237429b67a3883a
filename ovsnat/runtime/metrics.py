"""Prometheus metrics of the controller (off unless metrics_port is set).

A custom collector reads the controller's status (ovsnat.core.status: the same store the status
file is written from) at each scrape, so metrics and `ovsnat status` never disagree and
nothing is counted twice. The shim serves `http_response()` (serve_metrics) on the
framework's green-thread hub (prometheus_client's own server uses real threads, which
eventlet does not support).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ovsnat.core.status import COUNTERS
from ovsnat.runtime import framework as fw

LOG = logging.getLogger("ovsnat")

try:
    import prometheus_client as prom
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError:  # metrics are optional
    prom = None

# Counter names kept as they were first published (dashboards depend on them).
PUBLISHED = {
    "of_errors": "openflow_errors",
    "activations": "fip_activations",
    "yields": "fip_yields",
    "probes": "fip_probes",
}


class Metrics:
    def __init__(self, port: int, host: str, status: Callable[[], dict]):
        self.enabled = bool(port) and prom is not None
        self.port, self.host = port, host
        if port and prom is None:
            LOG.error("ovsnat: metrics_port is set but prometheus_client is not installed")
        if self.enabled:
            self.registry = prom.CollectorRegistry()
            self.registry.register(_Collector(status))

    def http_response(self, request: bytes) -> bytes:
        """A minimal HTTP/1.0 answer: the metrics for GET /metrics, else 404."""
        line = request.split(b"\r\n", 1)[0].split()
        if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] in (b"/metrics", b"/"):
            body, status = prom.generate_latest(self.registry), b"200 OK"
        else:
            body, status = b"not found\n", b"404 Not Found"
        return (
            b"HTTP/1.0 "
            + status
            + b"\r\nContent-Type: "
            + prom.CONTENT_TYPE_LATEST.encode()
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )


LOOP = {
    "loop_max_stall_ms": "Longest time one green thread ran without yielding (every "
    "other waited), worst of the last 30-60 s",
    "handler_max_ms": "Longest run of one event handler (events queued behind it "
    "waited), worst of the last 30-60 s",
}


class _Collector:
    def __init__(self, status: Callable[[], dict]):
        self.status = status

    def collect(self):
        st = self.status()
        for name, help_text in COUNTERS.items():
            yield CounterMetricFamily(
                f"ovsnat_{PUBLISHED.get(name, name)}", help_text, value=st["stats"][name]
            )
        drops = CounterMetricFamily(
            "ovsnat_packet_in_drops", "Packet-ins dropped, by reason", labels=["reason"]
        )
        for reason, n in st.get("packet_in_drops", {}).items():
            drops.add_metric([reason], n)
        yield drops
        vms = GaugeMetricFamily(
            "ovsnat_vms_programmed", "VM ports programmed, by NAT kind", labels=["kind"]
        )
        vms.add_metric(["fip"], st["fips"])
        vms.add_metric(["pat"], st["vms"] - st["fips"])
        yield vms
        yield _gauge("fips_pending", "FIPs dark on this host, waiting", len(st["pending_fips"]))
        yield _gauge(
            "fips_in_conflict",
            "FIPs another device answers for (dark here)",
            sum(1 for w in st["waiting"].values() if w["state"] == "conflict"),
        )
        yield _gauge("ports_skipped", "Ports skipped for bad input or clashes", len(st["rejected"]))
        yield _gauge(
            "flows_left_out",
            "Desired flows left out: another flow of this host has their table, priority and match",
            len(st.get("duplicate_flows", [])),
        )
        if st["reconcile_seconds"] is not None:
            yield _gauge(
                "reconcile_seconds", "Datapath connect to flows in sync", st["reconcile_seconds"]
            )
        for name, help_text in LOOP.items():
            if name in st:
                yield _gauge(name.replace("_ms", "_seconds"), help_text, st[name] / 1e3)
        refused = CounterMetricFamily(
            "ovsnat_conn_refused",
            "New connections refused by the VM's conn_limit (packets)",
            labels=["port"],
        )
        for port, n in st.get("conn_refused", {}).items():
            refused.add_metric([port], n)
        yield refused
        sg = st.get("security_groups", {})
        dropped = CounterMetricFamily(
            "ovsnat_sg_dropped",
            "Packets the port's security groups refused (packets), per direction",
            labels=["port", "direction"],
        )
        for port, per in sg.get("dropped_by_port", {}).items():
            for direction, n in per.items():
                dropped.add_metric([port, direction], n)
        yield dropped
        invalid = CounterMetricFamily(
            "ovsnat_sg_host_dropped",
            "Packets the security-group tables dropped for every port: invalid, dead "
            "(a connection a rule change no longer allows)",
            labels=["reason"],
        )
        for reason, n in sg.get("dropped", {}).items():
            invalid.add_metric([reason], n)
        yield invalid
        pat = st.get("pat")
        if pat:
            yield _gauge(
                "pat_ports_in_use", "PAT source ports in use (conntrack)", pat["ports_in_use"]
            )
            yield _gauge("pat_ports_capacity", "PAT source ports in the range", pat["capacity"])
            per_vm = GaugeMetricFamily(
                "ovsnat_pat_ports_in_use_by_vm", "PAT ports in use per VM", labels=["fixed_ip"]
            )
            for ip, n in pat["per_vm"].items():
                per_vm.add_metric([ip], n)
            yield per_vm


def _gauge(name: str, help_text: str, value) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"ovsnat_{name}", help_text, value=value)


def serve_metrics(metrics, failures) -> None:
    """The metrics endpoint, on the framework's hub (a green thread per request). An address
    it cannot listen on (in use, not local) is reported and tried again every 10 s."""

    def handle(sock, addr):
        try:
            sock.settimeout(5)
            sock.sendall(metrics.http_response(sock.recv(4096)))
        except OSError:
            pass  # the scraper went away: its problem
        finally:
            sock.close()

    while True:
        try:
            server = fw.hub.StreamServer((metrics.host, metrics.port), handle)
            break
        except OSError as e:
            failures.failed(
                "metrics",
                f"{metrics.host}:{metrics.port}: {e}",
                "no metrics are served until it can listen (tried every 10 s)",
                time.time(),
            )
            fw.hub.sleep(10)
    failures.ok("metrics")
    LOG.info("ovsnat: metrics on http://%s:%d/metrics", metrics.host, metrics.port)
    server.serve_forever()
