"""Traffic endpoints run inside lab namespaces: `python -m ovsnat.lab.peer MODE ...`.

Servers answer every client with the address they saw it come from ("PEER ip:port"), which is
exactly what a NAT test needs to know: the far end's view of the source. Servers print READY
once bound, so the spawner knows when to start sending.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time


def _peer_line(addr) -> bytes:
    return f"PEER {addr[0]}:{addr[1]}\n".encode()


def _serve_tcp(port: int, handler) -> None:
    """Accept forever on port, one thread per connection; READY once listening."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(128)
    print("READY", flush=True)
    while True:
        conn, addr = srv.accept()
        threading.Thread(target=handler, args=(conn, addr), daemon=True).start()


def tcp_server(port: int) -> None:
    _serve_tcp(port, _tcp_serve)


def _tcp_serve(conn: socket.socket, addr) -> None:
    """Say who connected, then echo until the client closes (long-lived sessions echo a
    counter every few ms, so both directions stay busy)."""
    with conn:
        conn.sendall(_peer_line(addr))
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass


def tcp_client(host: str, port: int, timeout: float, hold: float, src_port: int) -> int:
    """Connect, print the server's PEER line; with --hold keep echoing for that many seconds
    and report bytes exchanged and whether the session broke."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if src_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", src_port))
    try:
        s.connect((host, port))
        line = s.makefile("rb").readline().decode().strip()
    except OSError as e:
        print(f"ERROR {type(e).__name__}: {e}", flush=True)
        return 1
    print(line, flush=True)
    if hold <= 0:
        s.close()
        return 0
    sent = received = 0
    tag = f"{os.getpid():07d}".encode()  # a reply meant for another client shows at once
    deadline = time.monotonic() + hold
    start = last = time.monotonic()
    longest, longest_at = 0.0, 0.0
    try:
        while time.monotonic() < deadline:
            msg = tag + f"{sent:08d}".encode()
            s.sendall(msg)
            sent += 1
            got = b""
            while len(got) < len(msg):
                chunk = s.recv(len(msg) - len(got))
                if not chunk:
                    raise ConnectionResetError("peer closed")
                got += chunk
            if got != msg:
                print(f"MIXED got {got!r} for {msg!r}", flush=True)
                return 3
            received += 1
            now = time.monotonic()
            if now - last > longest:
                longest, longest_at = now - last, last - start
            last = now
            time.sleep(0.01)
    except OSError as e:
        print(f"BROKEN {type(e).__name__} after {received} echoes", flush=True)
        return 2
    print(f"HELD {received} echoes longest_gap={longest:.2f} from={longest_at:.2f}", flush=True)
    s.close()
    return 0


def tcp_push_server(port: int) -> None:
    """Send a line every 10 ms to each client, never read: a receive-only session for the
    client."""
    _serve_tcp(port, _push)


def _push(conn: socket.socket, addr) -> None:
    with conn:
        conn.sendall(_peer_line(addr))
        n = 0
        try:
            while True:
                conn.sendall(f"{n:08d}\n".encode())
                n += 1
                time.sleep(0.01)
        except OSError:
            pass


def tcp_sink_client(host: str, port: int, hold: float) -> int:
    """Receive for `hold` seconds; report how much arrived and the longest silence."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(0.2)
    s.connect((host, port))
    t0 = last = time.monotonic()
    got, longest, state = 0, 0.0, "OPEN"
    while time.monotonic() - t0 < hold:
        try:
            data = s.recv(65536)
        except TimeoutError:
            continue
        except OSError as e:
            state = f"BROKEN {type(e).__name__}"
            break
        if not data:
            state = "CLOSED"
            break
        now = time.monotonic()
        longest, last, got = max(longest, now - last), now, got + len(data)
    longest = max(longest, time.monotonic() - last)
    print(f"{state} received={got} longest_silence={longest:.2f}", flush=True)
    return 0


def udp_server(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    print("READY", flush=True)
    while True:
        data, addr = s.recvfrom(65535)
        reply = _peer_line(addr).strip() + f" len={len(data)}\n".encode()
        if len(data) > 1000:  # large requests get a large reply (fragmented inbound)
            reply += b"x" * (len(data) - len(reply))
        s.sendto(reply, addr)


def udp_client(host: str, port: int, size: int, timeout: float, src_port: int) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    if src_port:
        s.bind(("0.0.0.0", src_port))
    payload = b"u" * size
    for _ in range(3):  # UDP: retry a lost datagram twice
        s.sendto(payload, (host, port))
        try:
            data, _ = s.recvfrom(65535)
        except TimeoutError:
            continue
        line = data.split(b"\n", 1)[0].decode()
        print(f"{line} reply_len={len(data)}", flush=True)
        return 0
    print("ERROR timeout", flush=True)
    return 1


def send_raw(
    iface: str, hexframes: list[str], count: int, interval: float = 0.0, step: float = 0.0
) -> int:
    """Send prebuilt Ethernet frames (hex) as-is: crafted packets for attack tests, and the
    GARP/RARP announcements of a booting or migrated VM. Says when the first went, on the
    system's monotonic clock (a migration's first frame, timed by the caller)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    first = time.monotonic()  # CLOCK_MONOTONIC: the caller's clock too
    for i in range(count):
        if i and (interval or step):
            time.sleep(interval + (i - 1) * step)
        for h in hexframes:
            s.send(bytes.fromhex(h))
    print(f"SENT first at {first:.6f}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ovsnat.lab.peer")
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("tcp-server", "udp-server", "tcp-push-server"):
        sp = sub.add_parser(name)
        sp.add_argument("--port", type=int, required=True)
    for name in ("tcp-client", "udp-client"):
        sp = sub.add_parser(name)
        sp.add_argument("host")
        sp.add_argument("port", type=int)
        sp.add_argument("--timeout", type=float, default=2.0)
        sp.add_argument("--src-port", type=int, default=0)
    sub.choices["tcp-client"].add_argument("--hold", type=float, default=0.0)
    sub.choices["udp-client"].add_argument("--size", type=int, default=32)
    sp = sub.add_parser("tcp-sink-client")
    sp.add_argument("host")
    sp.add_argument("port", type=int)
    sp.add_argument("--hold", type=float, default=5.0)
    sp = sub.add_parser("send")
    sp.add_argument("--iface", default="eth0")
    sp.add_argument("--count", type=int, default=1)
    sp.add_argument("--interval", type=float, default=0.0)
    sp.add_argument("--step", type=float, default=0.0, help="each gap grows by this much")
    sp.add_argument("--go-on-stdin", action="store_true", help="ready, then send on a line")
    sp.add_argument("frames", nargs="+")
    a = p.parse_args(argv)
    if a.mode == "tcp-server":
        tcp_server(a.port)
    elif a.mode == "udp-server":
        udp_server(a.port)
    elif a.mode == "tcp-push-server":
        tcp_push_server(a.port)
    elif a.mode == "tcp-sink-client":
        return tcp_sink_client(a.host, a.port, a.hold)
    elif a.mode == "tcp-client":
        return tcp_client(a.host, a.port, a.timeout, a.hold, a.src_port)
    elif a.mode == "udp-client":
        return udp_client(a.host, a.port, a.size, a.timeout, a.src_port)
    elif a.mode == "send":
        if a.go_on_stdin:  # started ahead, so the caller's moment is not our start-up
            print("READY", flush=True)
            sys.stdin.readline()
        return send_raw(a.iface, a.frames, a.count, a.interval, a.step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
