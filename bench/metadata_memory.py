"""The metadata proxy's memory at 1,000 VM ports on 100 networks against 10 on 1 (issue 29
item 5), without OpenStack: bench/metadata.py's docstring says how it is measured; the
latency half is there."""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Result, say, spread
from ovsnat.lab import Lab, bulk
from ovsnat.lab.sh import LabError, run, wait_for
from ovsnat.model.metadata import ENCODED, META_MAC, PROXY_IP, encode

ROOT = str(Path(__file__).resolve().parent.parent)
PROXY = str(Path(sys.executable).parent / "ovsnat-metadata-proxy")
PATH = "/openstack/latest/meta_data.json"
NOVA_PORT = 8775  # the stand-in's, in its host's namespace
SECRET = "the bench's metadata_proxy_shared_secret"
PACED_RATE = 9.0  # requests a second per port when a few ports ask often (the proxy: 10)
HUB = "dp0"  # the datapath stand-in, in the host's namespace
VETH = "ovsnat-meta"  # the proxy's default --port


# --- the proxy's memory at 10 and 1,000 VM ports ------------------------------------------------
def serve_nova(port: int, secret_file: str) -> None:
    """Nova's metadata handler's checks (one instance id, its signature), then a
    meta_data.json of the shape and size Nova's has (about 1.2 kB) for that instance."""
    import hashlib
    import hmac
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    secret = Path(secret_file).read_text().strip().encode()
    seed = "A" * 684  # Nova's random_seed: 512 bytes, base64

    class Nova(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self):
            ids = self.headers.get_all("X-Instance-ID") or []
            sig = self.headers.get("X-Instance-ID-Signature", "")
            if len(ids) != 1:
                return self.answer(400, {"error": "one X-Instance-ID"})
            if not hmac.compare_digest(
                hmac.new(secret, ids[0].encode(), hashlib.sha256).hexdigest(), sig
            ):
                return self.answer(403, {"error": "Invalid proxy request signature."})
            self.answer(200, {
                "uuid": ids[0], "meta": {}, "hostname": f"vm-{ids[0][:8]}",
                "name": f"vm-{ids[0][:8]}", "launch_index": 0, "availability_zone": "nova",
                "project_id": self.headers.get("X-Tenant-ID"), "random_seed": seed,
                "public_keys": {"key": "ssh-ed25519 " + "B" * 68},
                "keys": [{"name": "key", "type": "ssh", "data": "ssh-ed25519 " + "B" * 68}],
                "devices": [], "dedicated_cpus": [],
            })  # fmt: skip

        def answer(self, status: int, data: dict) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Nova)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


# Every (source, instance) pair asks once, in order, one request every `period` seconds at
# most, a new connection each: the instance the answer names must be the port's own.
SWEEP = r"""
import http.client, json, sys, time
proxy, path, period = sys.argv[1], sys.argv[2], float(sys.argv[3])
bad, due = [], time.perf_counter()
for source, instance in json.loads(sys.stdin.read()):
    due += period
    time.sleep(max(0.0, due - period - time.perf_counter()))
    c = http.client.HTTPConnection(proxy, 80, timeout=10, source_address=(source, 0))
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        if r.status != 200 or json.loads(body)["uuid"] != instance:
            bad.append([source, r.status, body[:120].decode(errors="replace")])
    except OSError as e:
        bad.append([source, 0, str(e)])
    finally:
        c.close()
print(json.dumps({"bad": len(bad), "first_bad": bad[:3]}))
"""


def instance_id(i: int) -> str:
    return f"{i:08x}-0000-4000-8000-{i:012x}"


@dataclass
class ProxyHost:
    """A lab host with `vms` VM ports on `networks` networks, its Nova stand-in, the client
    namespace on the hub, and the proxy started fresh for each round. Each round asks from
    every port once, then makes `requests` more from the same ports (round robin, paced
    under the per-port rate when that means more than one request a port)."""

    lab: Lab
    name: str
    vms: int
    networks: int
    requests: int
    port_type: str = "patch"
    sources: list[tuple[str, str]] = field(default_factory=list)  # (encoded address, instance)
    rounds: int = 0
    add_seconds: float = 0.0

    def build(self) -> ProxyHost:
        self.host = self.lab.add_host(self.name, dummy=True)
        self.hv = self.host.ns
        self.meta = self.lab.ns_name(f"meta-{self.name}")
        self.secret = os.path.join(self.host.rundir, "metadata-secret")
        with open(os.open(self.secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(SECRET + "\n")
        self.status_path = os.path.join(self.host.rundir, "metadata-status.json")
        specs = []
        for i in range(self.vms):
            spec = bulk.vm_spec(i, fip=False, networks=self.networks)
            spec.external_ids.update(
                {"ovsnat-device-id": instance_id(i), "ovsnat-project": f"project-{i % 10}"}
            )
            specs.append(spec)
        self.add_seconds = bulk.add_ports(self.host, specs, port_type=self.port_type, timeout=300)
        out = json.loads(
            self.host.vsctl("--format=json", "--columns=name,ofport", "list", "Interface")
        )
        ofports = {name: ofport for name, ofport in out["data"]}
        self.sources = [
            (str(encode(ofports[s.name])), s.external_ids["ovsnat-device-id"]) for s in specs
        ]
        self._datapath()
        self._spawn("nova", [sys.executable, "-c", self._nova_code()])
        wait_for(lambda: "ready" in self._log("nova"), 15, what=f"{self.name}'s Nova stand-in")
        return self

    def _nova_code(self) -> str:
        return (
            f"import sys; sys.path.insert(0, {ROOT!r})\n"
            "from bench.metadata_memory import serve_nova\n"
            f"serve_nova({NOVA_PORT}, {self.secret!r})"
        )

    def _datapath(self) -> None:
        """The hub (every frame flooded, nothing learned) and the client: META_MAC on its
        eth0, as tests/test_metadata_proxy_lab.py explains; every port's encoded address."""
        self.cl = self.lab._add_ns(f"cl-{self.name}")
        run(["ip", "-n", self.hv, "link", "add", HUB, "type", "bridge", "ageing_time", "0"])
        run(["ip", "-n", self.hv, "link", "set", HUB, "up"])
        self.lab._veth(self.hv, "cl", self.cl, "eth0")
        run(["ip", "-n", self.hv, "link", "set", "cl", "master", HUB])
        run(["ip", "-n", self.cl, "link", "set", "eth0", "address", META_MAC])
        batch = "".join(f"addr add {src}/{ENCODED.prefixlen} dev eth0\n" for src, _ in self.sources)
        run(["ip", "-n", self.cl, "-batch", "-"], input=batch)
        run(["ip", "-n", self.cl, "neigh", "replace", str(PROXY_IP), "lladdr", META_MAC,
             "dev", "eth0", "nud", "permanent"])  # fmt: skip

    def _spawn(self, role: str, argv: list[str]):
        """argv in the host's network namespace only (nsenter, not `ip netns exec`: the
        proxy's own `ip netns add` must land in the shared mount namespace)."""
        entered = ["nsenter", f"--net=/run/netns/{self.hv}", *argv]
        return self.lab.spawn(f"{role}-{self.name}", entered)

    def _log(self, role: str) -> str:
        return Path(self.lab.procs[f"{role}-{self.name}"]["log"]).read_text()

    def round(self) -> dict:
        """A fresh proxy: its memory serving, after a request from every port, and after
        `requests` more from ports it already knows."""
        self.rounds += 1
        role = f"proxy{self.rounds}"
        if os.path.exists(self.status_path):
            os.unlink(self.status_path)
        argv = [
            PROXY, "--namespace", self.meta, "--no-bridge", "--db", f"unix:{self.host.ovs.db_sock}",
            "--nova-metadata-host", "127.0.0.1", "--nova-metadata-port", str(NOVA_PORT),
            "--shared-secret-file", self.secret, "--status-file", self.status_path,
        ]  # fmt: skip
        proc = self._spawn(role, argv)
        try:

            def serving():
                if proc.poll() is not None:
                    raise LabError(f"the proxy exited: {self._log(role)[-2000:]}")
                try:
                    status = json.loads(Path(self.status_path).read_text())
                except (OSError, ValueError):
                    return False
                return status.get("pid") == proc.pid and status.get("serving")

            wait_for(serving, 30, what=f"{self.name}'s proxy serving")
            run(["ip", "-n", self.hv, "link", "set", VETH, "master", HUB])
            if "ovsnat-metadata-proxy" not in Path(f"/proc/{proc.pid}/cmdline").read_text():
                raise LabError(f"pid {proc.pid} is not the proxy")
            out = {"serving": smaps_rollup(proc.pid), "sweeps": []}
            again = [self.sources[i % self.vms] for i in range(self.requests)]
            paced = 1 / (self.vms * PACED_RATE) if self.requests > self.vms else 0.0
            for pairs, period in ((self.sources, 0.0), (again, paced)):
                t0 = time.monotonic()
                swept = self.sweep(pairs, period)
                out["sweeps"].append({**swept, "seconds": round(time.monotonic() - t0, 2)})
                if swept["bad"]:
                    raise LabError(f"{self.name}: {swept['bad']} ports not answered: {swept}")
                out[f"after sweep {len(out['sweeps'])}"] = smaps_rollup(proc.pid)
            return out
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            finally:
                self.lab.stop_proc(f"{role}-{self.name}")

    def sweep(self, pairs: list[tuple[str, str]], period: float) -> dict:
        argv = [sys.executable, "-c", SWEEP, str(PROXY_IP), PATH, str(period)]
        done = run(argv, ns=self.cl, input=json.dumps(pairs), timeout=600)
        return json.loads(done.stdout)


def smaps_rollup(pid: int) -> dict[str, int]:
    """kB of the process's memory: Rss, Pss and the private (USS) parts."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Anonymous"):
                out[key] = int(value.split()[0])
    out["Uss"] = out.pop("Private_Clean") + out.pop("Private_Dirty")
    return out


def memory(vms: int = 1000, networks: int = 100, rounds: int = 2) -> tuple[list[Result], dict]:
    """The proxy's memory with `vms` ports on `networks` networks against 10 on 1, each
    asked from every port once and then `vms` times more."""
    hosts: dict[str, ProxyHost] = {}
    seen: dict[str, list[dict]] = {"small": [], "big": []}
    with Lab() as lab:
        lab.up()
        hosts["small"] = ProxyHost(lab, "md10", 10, 1, vms).build()
        hosts["big"] = ProxyHost(lab, "md1k", vms, networks, vms).build()
        for r in range(rounds):
            for key in ("small", "big") if r % 2 == 0 else ("big", "small"):
                seen[key].append(hosts[key].round())
                last = seen[key][-1]
                say(
                    f"  metadata memory round {r + 1}/{rounds} {key}: PSS serving "
                    f"{last['serving']['Pss'] / 1024:.1f} MB, after the sweeps "
                    f"{last['after sweep 2']['Pss'] / 1024:.1f} MB; sweeps "
                    + " and ".join(f"{s['seconds']:.1f} s" for s in last["sweeps"])
                )
    raw = {
        "rounds": seen,
        "ports added s": {k: round(h.add_seconds, 2) for k, h in hosts.items()},
        "port type": hosts["big"].port_type,
    }
    return memory_results(seen, vms, networks), raw


def memory_results(seen: dict[str, list[dict]], vms: int, networks: int) -> list[Result]:
    name = f"metadata proxy {vms} VMs/{networks} nets vs 10/1"

    def result(metric: str, of) -> Result:
        big, small = [of(r) for r in seen["big"]], [of(r) for r in seen["small"]]
        return Result(
            name,
            metric,
            statistics.median(big),
            statistics.median(small),
            "MB",
            "",
            {"value": spread(big), "baseline": spread(small)},
        )

    def grew(at: int, since: int):  # USS added from one reading to the next
        names = ("serving", "after sweep 1", "after sweep 2")
        return lambda r: (r[names[at]]["Uss"] - r[names[since]]["Uss"]) / 1024

    return [
        *(
            result(
                f"proxy {key} after a request from each port and {vms:,} more (MB)",
                lambda r, key=key: r["after sweep 2"][key] / 1024,
            )
            for key in ("Pss", "Rss", "Uss")
        ),
        result("proxy USS growth: a first request from each port (MB)", grew(1, 0)),
        result(f"proxy USS growth: {vms:,} more requests (MB)", grew(2, 1)),
    ]
