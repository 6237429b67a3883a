"""Per-port limits, so one VM's flood cannot slow another's boot (pure: takes `now`).

Every limit is keyed on the asking port's ofport, which the proxy knows from the source
address before it has read a byte: a flooding VM is answered 429 from its own empty
bucket without costing an OVSDB lookup or a request to Nova, and holds at most its own
share of connections. Key 0 stands for any source that is not an encoded port (nothing
the flows send; it gets one shared bucket, so it cannot flood either).

Connection slots are what a VM can hold without sending anything, so they are shared
fairly, not first come first served: a fixed per-port share alone let 32 ports with 8
slow connections each fill all 256 slots and turn every other VM away. And each
connection has one absolute deadline from accept to close (`Deadlines`), so a slot
held by a VM that sends or reads slowly comes back within a bounded time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PRUNE_AT = 4096  # entries kept before the idle ones are swept (ofports are at most 65279)
HOST = -1  # the log gate's key for what concerns the host, not one port (Nova, OVSDB)


DEFAULT_RATE = 10.0  # requests a second per VM port, sustained
# Requests a VM port may make at once: cloud-init's boot crawl of Nova's metadata is 27-28
# back to back (one key) and takes a refusal as final, some of them silently (with a
# burst of 20, one of 28 was refused and the read still "succeeded":
# tests/metadata_cases.py); 50 leaves room for more keys and devices.
DEFAULT_BURST = 50


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


@dataclass(frozen=True)
class Turned:
    """Why a connection was turned away: `kind` is the counter it counts in."""

    kind: str  # "overloaded" (the proxy is full) or "rate_limited" (the port has its share)
    reason: str


@dataclass
class Connections:
    """Open connections, per port and in all. Up to half of `total` in use, a port may
    hold `per_port`. Past half, a port that already holds connections may take another
    only while it holds less than its fair share, max(1, total // (ports holding + 1)):
    the +1 keeps a share for the next port to come, so ports at their share never fill
    the proxy. Nor may it take one unless more slots than it holds stay free, so ports
    that took bigger shares while the proxy was quieter cannot take the last slots.
    Hence a port holding none is admitted while any slot is free, and only such first
    connections can fill the proxy; full, everyone is turned away (and takes no slot)."""

    per_port: int
    total: int
    _open: dict[int, int] = field(default_factory=dict)
    _used: int = 0

    def open(self, key: int) -> Turned | None:
        """Take a slot for `key`: None when taken, else why not."""
        held, free = self._open.get(key, 0), self.total - self._used
        if free <= 0:
            return Turned("overloaded", f"all {self.total} connections in use")
        if held >= self.per_port:
            return Turned("rate_limited", f"holds {held} connections, a port's most")
        if held and self._used >= self.total // 2:
            share = max(1, self.total // (len(self._open) + 1))
            if held >= share or held >= free:
                busy = f"{self._used} of {self.total} in use by {len(self._open)} ports"
                return Turned("rate_limited", f"holds {held} connections ({busy})")
        self._open[key] = held + 1
        self._used += 1
        return None

    def close(self, key: int) -> None:
        left = self._open[key] - 1
        if left:
            self._open[key] = left
        else:
            del self._open[key]
        self._used -= 1

    def held(self, key: int | None = None) -> int:
        return self._used if key is None else self._open.get(key, 0)

    @property
    def ports(self) -> int:
        """Ports holding at least one connection."""
        return len(self._open)


@dataclass(frozen=True)
class Deadlines:
    """One connection's two deadlines, fixed at accept: its request (head and body) must
    have arrived by `request`, and it is closed by `close` whatever it is doing then
    (reading, asking OVSDB or Nova, relaying to a VM that reads slowly, lingering).
    Every wait of the connection takes the time left of one of them, so no step gets a
    fresh timeout of its own and a slot is held for at most `close - accept`."""

    request: float
    close: float

    @classmethod
    def at_accept(cls, now: float, request_timeout: float, whole: float) -> Deadlines:
        return cls(now + min(request_timeout, whole), now + whole)

    def request_left(self, now: float) -> float:
        return max(0.0, self.request - now)

    def left(self, now: float, at_most: float | None = None) -> float:
        """Seconds to `close` (no more than `at_most`, a step's own bound)."""
        left = max(0.0, self.close - now)
        return left if at_most is None else min(left, at_most)


@dataclass
class LogGate:
    """At most one log line per (port, kind) per `interval` seconds, so a VM that sends a
    thousand bad requests a second makes one line every `interval`, which says how many
    were not logged. What concerns the host (Nova or OVSDB away) is keyed on HOST by the
    caller: an outage is one line per interval, not one per VM."""

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
