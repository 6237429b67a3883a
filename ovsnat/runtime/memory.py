"""Giving memory back after a burst.

A snapshot of 10,000 OVSDB rows or a full sync of 115,000 flow_mods allocates tens of MB that
are free again a moment later. CPython returns its own small-object arenas to the system
once they are empty, but the larger blocks (packed bundles, big dicts and sets, JSON text)
come from glibc's heap, which keeps freed pages until asked. A hypervisor daemon should not
sit on its peak for days, so after each burst (never on the per-port path) the controller
collects garbage and asks glibc to trim. Elsewhere (musl, macOS) the trim is skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

_libc = None


def _trim() -> None:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


def release_memory() -> None:
    """Collect cycles, then return free heap pages to the system (glibc only)."""
    gc.collect()
    _trim()
