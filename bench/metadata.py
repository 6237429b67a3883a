"""Metadata (issue 29 item 5): what ovsnat-metadata-proxy costs a request, and what it holds
per VM port.

Latency, on the OpenStack lab (`cloudlab.bring_up(("hv1",))`: Nova's own metadata API under
uWSGI, one proxy per hypervisor, docs/metadata.md). One server booted by Nova on hv1 asks
`/openstack/latest/meta_data.json` from inside its guest through 169.254.169.254 (its
host's flows, the proxy, its OVSDB lookup, signature and recheck, Nova); the baseline is
the same request sent straight to Nova's metadata API on 127.0.0.1:8775 from the services
namespace, with the four headers the proxy would add (the port's row gives the instance
and project, the signature is Nova's HMAC). Each request is a new TCP connection (the proxy
closes after every answer) timed with perf_counter by a small client inside the namespace;
both are paced at one request per PERIOD, under the proxy's per-port rate (10/s), in
alternating blocks (ABBA), so the machine's load hits both alike. To tell where the
difference goes: each path's TCP handshake (the guest's crosses the host's datapath), the
proxy's own OVSDB questions (the lookup and the recheck) timed alone on hv1's OVSDB after
each pair of blocks, and the proxy's CPU per request.

Memory, without OpenStack (as tests/test_metadata_proxy_lab.py runs the proxy): a lab host
with a real ovsdb-server and ovs-vswitchd holding the VM ports' rows (peerless patch ports:
a row and an ofport assigned by ovs-vswitchd, as a dummy port has, but nothing it polls;
1,000 dummy ports took as long to add, 0.8 s, but the sweeps took 8-19 s with them, 4-11 s
with patch ports), the proxy as a real process with its own namespace (--no-bridge), a
client namespace behind a hub-mode Linux bridge standing in for the datapath (its eth0
holds every port's encoded source address 169.254.0.0 + ofport, as the flows would write
it), and a Nova stand-in that checks the signature and answers a meta_data.json of Nova's
shape. Each round starts a fresh proxy: a request from every port (so it holds its per-port
state, token bucket and log gate, for all of them), then as many requests again from the
ports it knows (on the small host, round robin under the per-port rate), its PSS, RSS and
USS (/proc/PID/smaps_rollup) read after each. 1,000 VMs on 100 networks against 10 VMs on 1
network, the two hosts alternating.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from bench.common import Result, cpu_seconds, percentile, say, spread
from ovsnat.lab.sh import LabError, pid_cmdline, run, wait_for
from ovsnat.metadata.headers import sign

PATH = "/openstack/latest/meta_data.json"
PERIOD = 0.11  # s between requests: under the proxy's default 10/s per port
BLOCK = 25  # requests per block; the paths alternate block by block


# --- latency through the proxy against Nova's metadata API ---------------------------------
# Run inside a namespace with this interpreter: stdlib only, so the block starts fast; the
# first request of each process is untimed (it pays for http.client's lazy imports). Only
# answers with 200 are timed, from connect() to the body's last byte, and the TCP handshake
# apart; the others are counted by status (0: no answer).
TIMED = r"""
import http.client, json, sys, time
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
n, period, headers = int(sys.argv[4]), float(sys.argv[5]), json.loads(sys.argv[6])
headers["Connection"] = "close"
def get():
    c = http.client.HTTPConnection(host, port, timeout=10)
    try:
        t0 = time.perf_counter()
        c.connect()
        t1 = time.perf_counter()
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        body = r.read()
        return r.status, body, time.perf_counter() - t0, t1 - t0
    except OSError:
        return 0, b"", 0.0, 0.0
    finally:
        c.close()
get()
samples, connects, codes, uuids, lengths = [], [], {}, set(), set()
due = time.perf_counter()
for _ in range(n):
    due += period
    status, body, seconds, connect = get()
    codes[status] = codes.get(status, 0) + 1
    if status == 200:
        samples.append(seconds)
        connects.append(connect)
        uuids.add(json.loads(body)["uuid"])
        lengths.add(len(body))
    time.sleep(max(0.0, due - time.perf_counter()))
print(json.dumps({"samples": samples, "connects": connects, "codes": codes,
                  "uuids": sorted(uuids), "lengths": sorted(lengths)}))
"""


def timed_block(ns: str, where: tuple[str, int], n: int, headers: dict | None = None) -> dict:
    """n paced requests from inside `ns` to `where` (host, port): their latencies (s), TCP
    connect times (s), status codes, the instances the answers name."""
    argv = [sys.executable, "-c", TIMED, where[0], str(where[1]), PATH, str(n), str(PERIOD)]
    out = json.loads(run([*argv, json.dumps(headers or {})], ns=ns, timeout=n * 11 + 30).stdout)
    out["codes"] = {int(k): v for k, v in out["codes"].items()}
    return out


def ovsdb_questions(db_sock: str, ofport: int, n: int) -> list[float]:
    """The proxy's own OVSDB questions for one request (its code, a connection each): the
    port's row by ofport, then the recheck of that row by uuid before Nova's answer goes
    to the VM; n times in a row, seconds for the two."""
    import asyncio

    from ovsnat.ovsdb.lookup import Remote, bridge_rows_with_ofport, row_by_uuid

    async def ask() -> list[float]:
        remote, out = Remote.parse(f"unix:{db_sock}"), []
        for _ in range(n):
            t0 = time.perf_counter()
            rows = await bridge_rows_with_ofport(remote, "br-int", ofport, 5.0)
            if len(rows) != 1 or await row_by_uuid(remote, rows[0].uuid, 5.0) is None:
                raise LabError(f"ofport {ofport}: {len(rows)} rows on br-int")
            out.append(time.perf_counter() - t0)
        return out

    return asyncio.run(ask())


def latency(requests: int, block: int = BLOCK) -> tuple[list[Result], dict]:
    """`requests` through the proxy and as many straight to Nova, after a warm-up of each."""
    from ovsnat.lab.openstack import cloudlab, metaproxy, servers  # openstacksdk: when asked
    from ovsnat.lab.openstack import stackconf as sc

    t0 = time.monotonic()
    cl = cloudlab.bring_up(("hv1",))
    raw: dict = {"bring-up s": round(time.monotonic() - t0, 1)}
    try:
        server = servers.boot(cl, "bench-metadata", "hv1")
        ids = _row_ids(cl.lab.hosts["hv1"], server.tap)
        instance, project = ids["ovsnat-device-id"], ids["ovsnat-project"]
        if instance != server.id:
            raise LabError(f"{server.tap}: ovsnat-device-id {instance}, server {server.id}")
        paths = {
            "proxy": (server.ns, ("169.254.169.254", 80), {}),
            "direct": (
                cl.stack.ns,
                ("127.0.0.1", sc.METADATA_PORT),
                {
                    "X-Instance-ID": instance,
                    "X-Tenant-ID": project,
                    "X-Instance-ID-Signature": sign(sc.METADATA_SECRET.encode(), instance),
                    "X-Forwarded-For": server.fixed_ip,
                },
            ),
        }
        wait_for(  # the guest reads its metadata (its lease, flows, the proxy all there)
            lambda: timed_block(server.ns, paths["proxy"][1], 1)["codes"].get(200),
            30,
            interval=0.5,
            what="the guest's first metadata answer",
        )
        pid = cl.lab.procs[metaproxy.proc_name("hv1")]["pid"]  # nsenter exec'd the proxy
        if "ovsnat.metadata.main" not in pid_cmdline(pid):
            raise LabError(f"pid {pid} is not hv1's metadata proxy: {pid_cmdline(pid)}")
        runs = {name: [] for name in paths}
        blocks = max(1, -(-requests // block))
        # The proxy's CPU while it serves (its blocks) and while it idles (the direct ones,
        # about as long): the difference is what the requests cost it.
        cpu = {name: 0.0 for name in paths}
        asked, lookups = 0, []
        hv1 = cl.lab.hosts["hv1"]
        db_sock, ofport = hv1.ovs.db_sock, hv1.ofport(server.tap)
        for i in range(-1, blocks):  # block -1: the warm-up, discarded
            n = 10 if i < 0 else min(block, requests - i * block)
            order = ("proxy", "direct") if i % 2 == 0 else ("direct", "proxy")
            for name in order:
                ns, where, headers = paths[name]
                cpu0 = cpu_seconds(pid)
                got = timed_block(ns, where, n, headers)
                cpu[name] += (cpu_seconds(pid) - cpu0) if i >= 0 else 0.0
                if got["uuids"] != [server.id] or set(got["codes"]) != {200}:
                    raise LabError(f"{name}: {got['codes']}, answers for {got['uuids']}")
                if i >= 0:
                    runs[name].append(got)
                    asked += (n + 1) if name == "proxy" else 0  # + the untimed first
            if i >= 0:
                lookups += ovsdb_questions(db_sock, ofport, n)  # the third, after the two
                say(
                    f"  metadata latency block {i + 1}/{blocks}: "
                    + ", ".join(
                        f"{k} p50 {statistics.median(v[-1]['samples']) * 1e3:.1f} ms"
                        for k, v in runs.items()
                    )
                )
        raw["proxy cpu s"] = {"serving": cpu["proxy"], "idle": cpu["direct"], "requests": asked}
        raw["proxy cpu s per request"] = (cpu["proxy"] - cpu["direct"]) / asked
        raw["ovsdb lookup s"] = lookups
        servers.delete(cl, server)
    finally:
        t1 = time.monotonic()
        cl.down()
        raw["teardown s"] = round(time.monotonic() - t1, 1)
    return latency_results(runs, raw), raw | {"runs": runs}


def latency_results(runs: dict[str, list[dict]], raw: dict) -> list[Result]:
    samples = {k: [s for r in v for s in r["samples"]] for k, v in runs.items()}
    connects = {k: [s for r in v for s in r["connects"]] for k, v in runs.items()}
    lookups = raw.get("ovsdb lookup s", [])
    codes = {k: _sum_codes(r["codes"] for r in v) for k, v in runs.items()}
    lengths = {k: sorted({n for r in v for n in r["lengths"]}) for k, v in runs.items()}
    block_ratios = [
        statistics.median(p["samples"]) / statistics.median(d["samples"])
        for p, d in zip(runs["proxy"], runs["direct"], strict=True)
    ]
    info = {
        "n": {k: len(v) for k, v in samples.items()},
        "codes": codes,
        "body_bytes": lengths,
        "block_p50_ratios": spread(block_ratios),
        "mean_ms": {k: statistics.mean(v) * 1e3 for k, v in samples.items()},
        "max_ms": {k: max(v) * 1e3 for k, v in samples.items()},
        "connect_p99_ms": {k: percentile(v, 99) * 1e3 for k, v in connects.items()},
        "proxy_cpu_ms_per_request": raw.get("proxy cpu s per request", 0) * 1e3,
        "ovsdb_lookup_ms": {
            "p50": percentile(lookups, 50) * 1e3,
            "p99": percentile(lookups, 99) * 1e3,
            "n": len(lookups),
        },
        **{k: v for k, v in raw.items() if k not in ("ovsdb lookup s", "proxy cpu s per request")},
    }
    name = f"metadata latency n={len(samples['proxy'])}"
    results = [
        Result(
            name,
            f"p{p} meta_data.json: guest -> 169.254.169.254 (proxy) / straight to Nova",
            percentile(samples["proxy"], p),
            percentile(samples["direct"], p),
            "s",
            "",
            info if p == 50 else {},
        )
        for p in (50, 99)
    ]
    results.append(
        Result(
            name,
            "p50 TCP connect: guest -> 169.254.169.254 / to Nova on loopback",
            percentile(connects["proxy"], 50),
            percentile(connects["direct"], 50),
            "s",
        )
    )
    results.append(
        Result(
            name,
            "p50 the proxy's OVSDB questions alone (lookup, recheck)",
            percentile(lookups, 50),
            None,
            "s",
        )
    )
    results.append(
        Result(
            name,
            "the proxy's CPU per request (utime+stime, less its idle rate)",
            raw.get("proxy cpu s per request", 0.0),
            None,
            "s",
        )
    )
    return results


def _sum_codes(dicts) -> dict[int, int]:
    total: dict[int, int] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total


def _row_ids(host, iface: str) -> dict[str, str]:
    out = host.vsctl("--format=json", "--columns=external_ids", "list", "Interface", iface)
    return dict(json.loads(out)["data"][0][0][1])
