"""A socket made inside another network namespace, from a process that stays where it is.

A socket belongs to the namespace of the thread that created it, for life. So the calling
thread enters the namespace, makes the socket and comes back, with nothing in between
that could yield or start a thread (a thread started meanwhile would begin life there).
The metadata proxy listens this way, and bgp mode's netlink sockets can be opened in a
hypervisor's namespace in the lab and in the tests.
"""

from __future__ import annotations

import ctypes
import os
import socket

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


def socket_in(namespace: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """socket.socket(family, kind, proto) created inside /run/netns/<namespace>."""
    libc = ctypes.CDLL(None, use_errno=True)
    home_path = "/proc/thread-self/ns/net"  # this thread's (the main thread's is /proc/self's)
    with open(home_path, "rb") as home, open(f"{NETNS_DIR}/{namespace}", "rb") as ns:
        _setns(libc, ns.fileno(), namespace)
        try:
            return socket.socket(family, kind, proto)
        finally:
            _setns(libc, home.fileno(), "the process's own namespace")


def _setns(libc, fd: int, where: str) -> None:
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns into {where}: {os.strerror(err)}")
