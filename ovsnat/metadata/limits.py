"""Per-port limits, so one VM's flood cannot slow another's boot (pure: takes `now`).

Every limit is keyed on the asking port's ofport, which the proxy knows from the source
address before it has read a byte: a flooding VM is answered 429 from its own empty
bucket without costing an OVSDB lookup or a request to Nova, and holds at most its own
share of connections. Key 0 stands for any source that is not an encoded port (nothing
the flows send; it gets one shared bucket, so it cannot flood either).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PRUNE_AT = 4096  # entries kept before the idle ones are swept (ofports are at most 65279)


@dataclass
class TokenBuckets:
    """A token bucket per port: `rate` requests a second, up to `burst` at once."""

    rate: float
    burst: float
    _buckets: dict[int, tuple[float, float]] = field(default_factory=dict)  # tokens, when

    def take(self, key: int, now: float) -> float:
        """Spend one token of `key`'s bucket: 0.0 if there was one, else the seconds until
        there will be (the Retry-After the VM is told)."""
        tokens, then = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > PRUNE_AT:
                self._prune(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled: they hold nothing a new one would not."""
        full = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full}

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass
class Connections:
    """Open connections, per port and in all: a port beyond `per_port`, or anyone beyond
    `total`, is turned away at once (and its slot is never taken)."""

    per_port: int
    total: int
    _open: dict[int, int] = field(default_factory=dict)
    _total: int = 0

    def open(self, key: int) -> str | None:
        """Take a slot for `key`: None when taken, else the counter the refusal counts in
        ("overloaded": the proxy is full; "rate_limited": this port holds its share)."""
        if self._total >= self.total:
            return "overloaded"
        if self._open.get(key, 0) >= self.per_port:
            return "rate_limited"
        self._open[key] = self._open.get(key, 0) + 1
        self._total += 1
        return None

    def close(self, key: int) -> None:
        left = self._open[key] - 1
        if left:
            self._open[key] = left
        else:
            del self._open[key]
        self._total -= 1

    def held(self, key: int | None = None) -> int:
        return self._total if key is None else self._open.get(key, 0)


@dataclass
class LogGate:
    """At most one log line per (port, kind) per `interval` seconds, so a VM that sends a
    thousand bad requests a second makes one line every `interval`, which says how many
    were not logged."""

    interval: float
    _last: dict[tuple[int, str], tuple[float, int]] = field(default_factory=dict)

    def allow(self, key: int, kind: str, now: float) -> int | None:
        """None: stay silent. Else log now, and say this many like it went unlogged."""
        then, quiet = self._last.get((key, kind), (None, 0))
        if then is not None and now - then < self.interval:
            self._last[(key, kind)] = (then, quiet + 1)
            return None
        self._last[(key, kind)] = (now, 0)
        if len(self._last) > PRUNE_AT:
            self._prune(now)
        return quiet

    def _prune(self, now: float) -> None:
        """Forget keys silent for a whole interval (their unlogged count is lost, bounded
        memory matters more)."""
        self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
