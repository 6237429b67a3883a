"""Enter a lab network namespace from Python, for the calling thread only.

The OpenStack services listen on the loopback of their own lab namespace, never in the root
namespace. A test (or the demo) that talks to them with openstacksdk in-process enters that
namespace with setns(2): it changes the namespace of the calling thread alone, and every
socket created meanwhile belongs to the lab namespace. Python 3.11 has no os.setns, hence
ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(ns: str):
    """Run the body with this thread in network namespace `ns` (/run/netns/<ns>); the
    thread's own namespace is restored afterwards, also on errors."""
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)
