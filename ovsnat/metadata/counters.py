"""The proxy's counters and the status file they are published in.

Counting is pure; the file is written whole and renamed into place (a reader never sees
half of it), once a second however fast the counters move, so a flood costs no disk
writes to speak of. It is rewritten even when nothing changed: `updated` is then the
proxy's heartbeat, and a reader that saw `updated` pass a moment knows the counters it
reads include everything before that moment (the tests rely on it). `pid` says which
process wrote it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, fields


@dataclass
class Counters:
    requests: int = 0  # connections accepted (one request each)
    answered: int = 0  # Nova's answers relayed (any status)
    refused_unknown_port: int = 0  # 404: not a VM port, or one Neutron does not vouch for
    rate_limited: int = 0  # 429, or turned away beyond the port's connections
    backend_errors: int = 0  # 502 (Nova unreachable, broken answer) and 504 (no answer)
    bad_requests: int = 0  # 4xx/5xx for what the VM sent (malformed, too big, too slow)
    overloaded: int = 0  # turned away beyond the proxy's connections
    ovsdb_errors: int = 0  # 503: OVSDB could not be asked
    lookups: int = 0  # OVSDB asked who a port is (a rate-limited request never is)
    rechecks: int = 0  # OVSDB asked again, before Nova's answer goes to the VM
    port_changed: int = 0  # 503: the port's row changed or went while Nova answered
    body_cut: int = 0  # Nova's answer relayed in part (also in `answered`)
    client_gone: int = 0  # the VM went away, or did not take its answer in time
    errors: int = 0  # unexpected exceptions: a bug in the proxy, logged with its traceback

    def bump(self, kind: str) -> None:
        """One more of `kind`, a field's name; any other name is a bug (AttributeError),
        never a count silently lost."""
        if kind not in _FIELDS:
            raise AttributeError(f"no counter {kind!r}")
        setattr(self, kind, getattr(self, kind) + 1)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


_FIELDS = frozenset(f.name for f in fields(Counters))


class StatusFile:
    """Writes the counters and what the caller says about itself to `path`, every
    `interval` seconds (`due` takes `now`; `write` is the I/O)."""

    def __init__(self, path: str | None, interval: float = 1.0):
        self.path, self.interval = path, interval
        self._written_at: float | None = None

    def due(self, now: float) -> bool:
        if self.path is None:
            return False
        return self._written_at is None or now - self._written_at >= self.interval

    def write(self, counters: Counters, now: float, info: dict) -> None:
        """Write unconditionally (start, stop, or when due). An OSError propagates: a
        status file that cannot be written is the operator's to fix, and they are told."""
        if self.path is None:
            return
        data = {**info, "pid": os.getpid(), "updated": time.time(), "counters": counters.as_dict()}
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, self.path)
        self._written_at = now
