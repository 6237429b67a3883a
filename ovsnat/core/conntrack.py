"""ovs-vswitchd's conntrack as the controller reads it: one dump of every zone
(`ovs-appctl dpctl/dump-conntrack`) serves every reader, tallied line by line.

- the handoff (ovsnat.core.handoff): live TCP sessions per (zone, original source), to end a
  departed VM's handoff once its sessions are over;
- PAT usage (`ovsnat status`, the metrics): source ports in use per VM in the PAT zone.

Pure. A dump of a busy host holds tens of thousands of lines: the shim feeds them to a
`Tally` a chunk at a time and yields to its other green threads between chunks, so
parsing never stalls the controller (ovsnat.runtime.calls).
"""

from __future__ import annotations

import re
from collections import Counter

from ovsnat.core.effects import Reading

ENDED = ("TIME_WAIT", "CLOSED", "CLOSE")  # TCP states of a session that is over
LINE = re.compile(
    r"(?P<proto>\w+),orig=\(src=(?P<src>[\d.]+),dst=[\d.]+"
    r"(?:,sport=\d+,dport=\d+|,id=\d+,type=\d+,code=\d+)?\),"
    r"reply=\(src=[\d.]+,dst=(?P<rdst>[\d.]+)"
    r"(?:,sport=\d+,dport=(?P<rport>\d+)|,id=\d+,type=\d+,code=\d+)?\)"
    r"(?:,zone=(?P<zone>\d+))?(?:,.*?state=(?P<state>[A-Z_0-9]+))?"
)


class Tally:
    """Fed the dump's lines in chunks; `reading()` once they are all in."""

    def __init__(self, pat_zone: int, snat_ip: str):
        self.pat_zone, self.snat_ip = str(pat_zone), snat_ip
        self.entries = 0
        self.sessions: Counter = Counter()
        self.ports: dict[str, set] = {}

    def feed(self, lines) -> None:
        match, sessions, ports = LINE.match, self.sessions, self.ports
        for line in lines:
            m = match(line.strip())
            if m is None:
                continue
            self.entries += 1
            proto, src, zone = m.group("proto"), m.group("src"), m.group("zone") or "0"
            if proto == "tcp" and m.group("state") not in ENDED:
                sessions[(int(zone), src)] += 1
            if zone == self.pat_zone and m.group("rdst") == self.snat_ip and m.group("rport"):
                ports.setdefault(src, set()).add((proto, int(m.group("rport"))))

    def reading(self, seconds: float = 0.0) -> Reading:
        in_use = {port for held in self.ports.values() for _, port in held}
        return Reading(
            True,
            entries=self.entries,
            sessions=self.sessions,
            pat_ports={src: len(held) for src, held in sorted(self.ports.items())},
            pat_in_use=len(in_use),
            seconds=seconds,
        )


def tally(text: str, pat_zone: int = 0, snat_ip: str = "") -> Reading:
    """A whole dump at once (the CLI and the tests; the controller feeds chunks)."""
    t = Tally(pat_zone, snat_ip)
    t.feed(text.splitlines())
    return t.reading()


def pat_usage(reading: Reading, capacity: int) -> dict:
    """PAT ports in use per VM (fixed IP), as `ovsnat status` and the metrics show them."""
    return {
        "per_vm": dict(reading.pat_ports),
        "ports_in_use": reading.pat_in_use,
        "capacity": capacity,
        "share": round(reading.pat_in_use / capacity, 4),
    }
