"""Packet-ins, metered per port: what the switch sends up may come from a VM that wants to
hurt, so each VM port gets its own share of the controller, by kind.

The switch meters every packet-in path (ovsnat.compile.compiler METERS: VM punts, claims on the
uplink, DHCP, punts from outside, copies for FIP presence), so the controller never sees
more than those rates in all. Within them, one VM must not use up what every VM shares: a
port may send `burst` packet-ins of a kind at once and `per_second` after that; a port over
its share is quarantined for that kind at the switch for QUARANTINE_S (temporary drop flows
with a hard timeout, ovsnat.compile.punt_flows.quarantine_flows), so its flood stops at the switch
instead of crowding out the others at the meter.

Kinds (what a VM port can make reach the controller): `dhcp` (its DHCP requests),
`presence` (copies of its frames while its FIP waits for it), `rarp` (QEMU's RARP, relayed to
the fabric), `ttl` (routed with TTL 1: answered with time exceeded), `icmp` (ICMP errors
through its FIP, translated).
"""

from __future__ import annotations

from dataclasses import dataclass

from ovsnat.compile.pipeline import EGRESS, EGRESS_OUT

QUARANTINE_S = 10
MAX_TRACKED = 4096  # buckets kept before the full ones are forgotten


@dataclass(frozen=True)
class Share:
    burst: int
    per_second: float


SHARES = {
    "dhcp": Share(10, 2.0),  # a client needs two per lease and retries every few s
    "presence": Share(20, 5.0),  # one frame proves the VM is here; the rest is a flood
    "rarp": Share(10, 2.0),  # QEMU sends five after a migration
    "ttl": Share(20, 5.0),  # traceroute: three per run at this hop
    "icmp": Share(20, 5.0),  # path MTU discovery, traceroute through a FIP
}


def vm_kind(table: int, frame: bytes, pending: bool) -> str:
    """Which of a VM port's kinds a packet-in from `table` is (see the module docstring)."""
    if table == EGRESS:
        return "ttl"
    if table == EGRESS_OUT:
        return "icmp"
    if _is_dhcp_request(frame):
        return "dhcp"
    if frame[12:14] == b"\x80\x35" and not pending:
        return "rarp"
    return "presence"


def _is_dhcp_request(frame: bytes) -> bool:
    """Cheap and total: an untagged IPv4 UDP frame to port 67 from 68 (the full read is
    ovsnat.packets.dhcp's)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return False
    start = 14 + (frame[14] & 0x0F) * 4
    return frame[start : start + 4] == b"\x00\x44\x00\x43"


class PortBudget:
    """Token buckets per (ofport, kind), and the quarantines they lead to."""

    def __init__(self):
        self.tokens: dict[tuple[int, str], tuple[float, float]] = {}  # -> (tokens, at)
        self.quarantined: dict[tuple[int, str], float] = {}  # -> until

    def admit(self, ofport: int, kind: str, now: float) -> str:
        """Take one token: "yes"; "quarantine" when the port has none left (it is
        quarantined from now on: install the drop flows); "dropped" while it is."""
        key = (ofport, kind)
        if self.quarantined.get(key, 0) > now:
            return "dropped"
        share = SHARES[kind]
        n, at = self.tokens.get(key, (share.burst, now))
        n = min(share.burst, n + (now - at) * share.per_second)
        if n < 1:
            self.quarantined[key] = now + QUARANTINE_S
            self.tokens.pop(key, None)
            return "quarantine"
        self.tokens[key] = (n - 1, now)
        if len(self.tokens) + len(self.quarantined) > MAX_TRACKED:
            self._forget(now)
        return "yes"

    def _forget(self, now: float) -> None:
        """Drop the buckets that are full again and the quarantines that are over: the maps
        stay bounded however many ports (or spoofed ofports) send."""
        self.tokens = {
            k: v
            for k, v in self.tokens.items()
            if v[1] + SHARES[k[1]].burst / SHARES[k[1]].per_second > now
        }
        self.quarantined = {k: t for k, t in self.quarantined.items() if t > now}

    def forget_port(self, ofport: int) -> None:
        """The port is gone: a new VM on that ofport starts with a full share."""
        for key in [k for k in self.tokens if k[0] == ofport]:
            del self.tokens[key]
        for key in [k for k in self.quarantined if k[0] == ofport]:
            del self.quarantined[key]
