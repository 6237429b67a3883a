"""The shim's switch connections: every one that connected, by datapath id, and the one
the host controller adopted (AdoptSwitch; which switch is ours is decided in
ovsnat.core.datapaths), which alone is written to and heard."""

from __future__ import annotations

SEND_TIMEOUT = 60.0  # seconds a switch may read nothing before sends fail


def patient_sends(dp) -> None:
    """ryu and os-ken give a send 5 s (--socket-timeout) to make progress, then shut the
    socket mid-message: the switch sees a truncated message ("Protocol error"), drops the
    connection, and the next full sync starts over. A busy ovs-vswitchd (10,000 ports,
    a 115,000-flow bundle) can read nothing for longer than that, so ovsnat gives its
    switch a minute. Receives are unaffected (the frameworks retry a timed-out read)."""
    sock = getattr(dp, "socket", None)
    if sock is not None and (sock.gettimeout() or SEND_TIMEOUT) < SEND_TIMEOUT:
        sock.settimeout(SEND_TIMEOUT)


class Switches:
    def __init__(self, failures):
        self.failures = failures
        self.ours = None
        self.all: dict = {}

    def connected(self, dp) -> None:
        self.all[dp.id] = dp
        patient_sends(dp)

    def adopt(self, dpid: int) -> None:
        self.ours = self.all.get(dpid)

    def refuse(self, dpid: int) -> None:
        dp = self.all.pop(dpid, None)
        if dp is self.ours:
            self.ours = None
        if dp is not None:
            dp.close()

    def gone(self, dp) -> str | None:
        """A connection closed: "ours", "other" (it waited), or None (refused, or an older
        connection's late event)."""
        if dp.id is None or self.all.get(dp.id) is not dp:
            return None
        del self.all[dp.id]
        if dp is self.ours:
            self.ours = None
            return "ours"
        return "other"

    def send(self, data: bytes, now: float) -> bool:
        if self.ours is None:
            return False
        if self.ours.send(data):
            self.failures.ok("switch_send")
            return True
        self.failures.failed(
            "switch_send",
            "the connection is closing",
            "what was not sent goes again once the switch reconnects (full resync)",
            now,
        )
        return False
