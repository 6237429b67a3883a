"""A stand-in for the one part of Nova's API that Neutron calls: `POST
/v2.1/os-server-external-events` (nova/api/openstack/compute/server_external_events.py, Nova
34), until the lab runs Nova's own code.

    python -m ovsnat.lab.openstack.novaapi --listen 127.0.0.1:8774 --dir DIR

Neutron's Nova notifier (neutron/notifiers/nova.py) posts `network-vif-plugged`,
`-unplugged`, `-deleted` and `network-changed` here. The stand-in validates the body with
Nova's schema for the requested microversion (Neutron asks for 2.1), answers as Nova's
controller does (per event: 200 for an instance with a host, 404 unknown instance, 422 no
host yet; 200 overall when every event was accepted, else 207), and records each event as
Neutron sent it, with the code it got and its arrival time (time.time(), taken when the
request arrived), in DIR/events.jsonl: an accepted one is what nova-compute is handed. Nova's database is DIR/instances.json (instance uuid ->
its host), written by the lab's Nova steps (ovsnat.lab.openstack.nova) through `Records`.

It listens on the services namespace's loopback only, like Neutron. No Keystone: Neutron
reaches it with keystoneauth's `none` plugin and a fixed endpoint ([nova] auth_type = none,
endpoint = http://127.0.0.1:8774/v2.1), which sends `X-Auth-Token: notused`; the stand-in
checks no token, as the lab's Neutron runs with auth_strategy = noauth.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = 8774
ENDPOINT = f"http://127.0.0.1:{PORT}/v2.1"
EVENTS_PATH = "/v2.1/os-server-external-events"
VIF_PLUGGED = "network-vif-plugged"
STATUSES = ("failed", "completed", "in-progress")        # nova.objects.external_event
# Event names by the microversion that allows them (the schema's create ... create_v293).
NAMES = ((2, 1, ("network-changed", "network-vif-plugged", "network-vif-unplugged",
                 "network-vif-deleted")),
         (2, 51, ("volume-extended",)), (2, 76, ("power-update",)),
         (2, 82, ("accelerator-request-bound",)), (2, 93, ("volume-reimaged",)))
TAG_REQUIRED = ("volume-extended", "power-update", "accelerator-request-bound")
UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                  r"[0-9a-fA-F]{12}$")


class Records:
    """The stand-in's files: the instances Nova knows (written by the lab's Nova steps, read
    by the stand-in at each request) and the events it received (appended by the stand-in,
    read by the Nova steps that wait for them). One writer process per file; the lock
    orders that process's threads."""

    _lock = threading.Lock()

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.instances_file = os.path.join(directory, "instances.json")
        self.events_file = os.path.join(directory, "events.jsonl")

    def instances(self) -> dict[str, str | None]:
        try:
            with open(self.instances_file) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def set_instance(self, server_uuid: str, host: str | None) -> None:
        """Nova's record of an instance and its host (None: deleted). Replaced atomically:
        the stand-in may read it at any moment."""
        with self._lock:
            known = self.instances()
            if host is None:
                known.pop(server_uuid, None)
            else:
                known[server_uuid] = host
            tmp = f"{self.instances_file}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(known, f)
            os.replace(tmp, self.instances_file)

    def events(self, since: float = 0.0) -> list[dict]:
        """Events received at or after `since` (time.time()), in arrival order."""
        try:
            with open(self.events_file) as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            return []
        # the last element is "" or a line still being written: never parsed
        return [e for e in map(json.loads, lines[:-1]) if e["at"] >= since]

    def append(self, events: list[dict]) -> None:
        with self._lock, open(self.events_file, "a") as f:
            f.write("".join(json.dumps(e) + "\n" for e in events))
            f.flush()


def microversion(headers) -> tuple[int, int]:
    """The compute microversion a request asks for (Nova's default, 2.1, without one)."""
    value = headers.get("OpenStack-API-Version", "")
    m = re.match(r"\s*compute\s+(\d+)\.(\d+)\s*$", value) or \
        re.match(r"\s*(\d+)\.(\d+)\s*$", headers.get("X-OpenStack-Nova-API-Version", ""))
    return (int(m.group(1)), int(m.group(2))) if m else (2, 1)


def validate(body, version: tuple[int, int]) -> str | None:
    """Nova's request schema for this microversion: why the body is invalid, or None."""
    if not isinstance(body, dict) or set(body) != {"events"}:
        return "'events' is a required property (and the only one)"
    events = body["events"]
    if not isinstance(events, list) or not events:
        return "'events' must be a non-empty array"
    names = {n for major, minor, ns in NAMES if version >= (major, minor) for n in ns}
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            return f"events[{i}] is not an object"
        extra = set(event) - {"name", "server_uuid", "status", "tag"}
        if extra or "name" not in event or "server_uuid" not in event:
            return f"events[{i}]: name and server_uuid required; no other than status, tag"
        if event["name"] not in names:
            return f"events[{i}].name {event['name']!r} is not one of {sorted(names)}"
        if not isinstance(event["server_uuid"], str) or not UUID.match(event["server_uuid"]):
            return f"events[{i}].server_uuid {event['server_uuid']!r} is not a 'uuid'"
        if "status" in event and event["status"] not in STATUSES:
            return f"events[{i}].status {event['status']!r} is not one of {list(STATUSES)}"
        tag = event.get("tag")
        if "tag" in event and not (isinstance(tag, str) and len(tag) <= 255):
            return f"events[{i}].tag is not a string of at most 255 characters"
    return None


def answer(events: list[dict], instances: dict[str, str | None]) -> tuple[int, list[dict]]:
    """Nova's ServerExternalEventsController.create: each event as answered (an accepted
    event's status reads `completed`, a refused one's `failed`, with a code) and the overall
    code. nova-compute is handed an accepted event with the status Neutron gave it."""
    result, answered = 200, []
    for event in events:
        host = instances.get(event["server_uuid"])
        if event["server_uuid"] not in instances:
            code = 404
        elif event["name"] in TAG_REQUIRED and event.get("tag") is None:
            code = 400
        else:
            code = 200 if host else 422
        result = result if code == 200 else 207
        answered.append({**event, "status": "completed" if code == 200 else "failed",
                         "code": code})
    return result, answered


class Handler(BaseHTTPRequestHandler):
    records: Records        # set by serve()
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        arrived = time.time()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") != EVENTS_PATH:
            return self._reply(404, {"itemNotFound": {"code": 404, "message": "Not found"}})
        version = microversion(self.headers)
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        error = validate(request, version)
        if error:
            return self._reply(400, {"badRequest": {"code": 400, "message":
                                                    f"Invalid input: {error}"}}, version)
        code, answered = answer(request["events"], self.records.instances())
        self.records.append([{**sent, "status": sent.get("status", "completed"),
                              "code": reply["code"], "at": arrived}
                             for sent, reply in zip(request["events"], answered)])
        self._reply(code, {"events": answered}, version)

    def do_GET(self) -> None:
        self._reply(404, {"itemNotFound": {"code": 404, "message": "Not found"}})

    def _reply(self, code: int, body: dict, version=(2, 1)) -> None:
        data = json.dumps(body).encode()
        request_id = f"req-{uuid.uuid4()}"
        self.send_response(code)
        for name, value in (("Content-Type", "application/json"),
                            ("Content-Length", str(len(data))),
                            ("OpenStack-API-Version", "compute %d.%d" % version),
                            ("X-OpenStack-Nova-API-Version", "%d.%d" % version),
                            ("Vary", "OpenStack-API-Version, X-OpenStack-Nova-API-Version"),
                            ("x-openstack-request-id", request_id),
                            ("x-compute-request-id", request_id)):
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args) -> None:
        sys.stderr.write(f"{time.time():.6f} {self.address_string()} {fmt % args}\n")
        sys.stderr.flush()


def serve(listen: str, directory: str) -> None:
    host, port = listen.rsplit(":", 1)
    os.makedirs(directory, exist_ok=True)
    Handler.records = Records(directory)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    print(f"nova-api stand-in listening on {listen}, records in {directory}", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovsnat.lab.openstack.novaapi")
    parser.add_argument("--listen", default=f"127.0.0.1:{PORT}")
    parser.add_argument("--dir", required=True, help="instances.json and events.jsonl")
    args = parser.parse_args(argv)
    serve(args.listen, args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
