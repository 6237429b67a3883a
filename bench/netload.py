"""Run inside lab namespaces as a script (`python bench/netload.py MODE ...`):

accept PORT...               accept TCP connections and close them at once; prints READY
connect HOST PORT SECONDS MAX
                            open and close TCP connections one after the other for SECONDS
                            (at most MAX); prints {"connects": n, "errors": n, "seconds": s}
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time


def accept(ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for port in ports:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen(1024)
        sel.register(srv, selectors.EVENT_READ)
    print("READY", flush=True)
    while True:
        for key, _ in sel.select():
            conn, _ = key.fileobj.accept()
            conn.close()


def connect(host: str, port: int, seconds: float, most: int) -> None:
    connects = errors = 0
    t0 = time.monotonic()
    deadline = t0 + seconds
    while time.monotonic() < deadline and connects + errors < most:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect((host, port))
            connects += 1
        except OSError:
            errors += 1
        finally:
            s.close()
    print(
        json.dumps({"connects": connects, "errors": errors, "seconds": time.monotonic() - t0}),
        flush=True,
    )


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "accept":
        accept([int(a) for a in args])
    elif mode == "connect":
        connect(args[0], int(args[1]), float(args[2]), int(args[3]))
    else:
        sys.exit(__doc__)
