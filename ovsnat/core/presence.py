"""Where is the VM? Decides when a FIP starts answering on this host, so that two hosts never
answer for one FIP and a VM that never speaks still gets its FIP (README "Live migration").

Pure: the host controller feeds it what it sees (a FIP waiting here, ARP for that FIP on the
uplink, a frame from the VM) with `now`, and asks it at its deadlines what to do. It answers
with small actions: send this probe, go live, light after the VM's first frame.

`probe` mode (the default), for a FIP waiting on a device not proven here:
- RFC 5227 probes ask the uplink whether anyone answers for the FIP (sender IP 0.0.0.0, sent
  from this host's own MAC, never the FIP's, so no switch moves the FIP's MAC here).
- No answer: go live at once. Another ovsnat host answers with the FIP's MAC (the VM is
  migrating): wait for the VM's first frame here, or for a round nobody answers (the source
  host let go). A foreign MAC answers: a conflict; stay dark and keep asking.
`first-packet` mode waits for the VM's first frame only; `immediate` never waits.

`echo` mode is bgp mode's (docs/bgp.md, section 2): there is no segment to probe, so the
question "does another host hold it?" is a lookup in the echo set, the other hosts' /32s as
the ToRs pass them back (EchoesSeen). No echo: live at once (a fresh VM, silent or not). An
echo: HELD until the VM's first frame here (a migration's destination), or until the echo
has been gone for ECHO_GONE (the other host withdrew; a set missing it only for a moment, as
while FRR comes back and the ToRs' routes follow their default, releases nothing). Until the
first echo set is known, a FIP waits for its VM's first frame.
"""

from __future__ import annotations

from dataclasses import dataclass

PROBE_GAP = 0.1  # between the probes of one round
PROBE_COUNT = 2
ANSWER_WAIT = 0.2  # after the round's last probe
REPROBE = 1.0  # while held by another host or in conflict
SETTLE = 0.1  # after the VM's first frame: the previous host yields on our GARP
MAX_PROBING = 64  # rounds at once: bounds probe answers to the metered packet-in
ECHO_GONE = 2.0  # echo mode: a HELD FIP's echo gone this long: the other host let go

IDLE, PROBING, HELD, CONFLICT, SETTLING = "idle", "probing", "held", "conflict", "settling"


@dataclass
class Waiting:
    """A FIP that is dark here, and why."""

    name: str
    fip: str
    state: str = IDLE
    round_started: float = 0.0
    probes_sent: int = 0
    ovsnat_answered: bool = False  # in the current round
    foreign_mac: str | None = None  # in the current round
    since: float = 0.0
    echo_gone: float | None = None  # echo mode: when a HELD FIP's echo went


@dataclass(frozen=True)
class SendProbe:
    name: str
    fip: str


@dataclass(frozen=True)
class GoLive:
    """Light the FIP. settle: announce it now and light it SETTLE later, once the host
    that held it has yielded (the VM's first frame arrived while another host answers)."""

    name: str
    why: str
    settle: bool = False


@dataclass(frozen=True)
class Conflict:
    name: str
    fip: str
    mac: str


class Presence:
    def __init__(self, mode: str, host_mac: str):
        self.mode = mode
        self.host_mac = host_mac  # this host's probe sender (never a FIP MAC)
        self.waiting: dict[str, Waiting] = {}
        self.queue: dict[str, None] = {}  # names waiting for a probe slot, in order
        self.probing = 0  # rounds in progress
        self.echoes: frozenset[str] | None = None  # echo mode: None until the first set

    def wait(self, name: str, fip: str, now: float) -> float | None:
        """A FIP is dark on this host. Returns when to call `due` for it (None: nothing to
        schedule; it waits for the VM's first frame or for a probe slot)."""
        old = self.waiting.get(name)
        if old is not None and old.fip == fip:
            return None
        self.forget(name)
        self.waiting[name] = Waiting(name, fip, since=now)
        return self._start_round(name, now) if self.mode == "probe" else None

    def forget(self, name: str) -> None:
        """Gone, live, or no longer a FIP port."""
        w = self.waiting.pop(name, None)
        if w is not None:
            self.queue.pop(name, None)
            self._set(w, IDLE)

    def state(self, name: str) -> str | None:
        w = self.waiting.get(name)
        return w.state if w else None

    def _set(self, w: Waiting, state: str) -> None:
        self.probing += (state == PROBING) - (w.state == PROBING)
        w.state = state

    def _start_round(self, name: str, now: float) -> float | None:
        if self.probing >= MAX_PROBING:
            self.queue[name] = None
            return None
        w = self.waiting[name]
        self._set(w, PROBING)
        w.round_started, w.probes_sent = now, 0
        w.ovsnat_answered, w.foreign_mac = False, None
        return now

    # --- what the host sees --------------------------------------------------------------
    def answered(self, name: str, sha: str, fip_mac: str) -> Conflict | None:
        """ARP from someone else with the FIP as sender address (an answer to our probe, or
        a GARP). The FIP's own MAC means another ovsnat host holds it; the round's end
        decides what the answers mean."""
        w = self.waiting.get(name)
        if w is None:
            return None
        if sha == fip_mac:
            w.ovsnat_answered = True
            return None
        w.foreign_mac = sha
        return Conflict(name, w.fip, sha)

    def probed_by_other(self, name: str, sha: str) -> None:
        """Another host probes the FIP we are probing (both got a new device at once): the
        lower MAC goes on, the other counts it as held (RFC 5227 section 2.1.1)."""
        w = self.waiting.get(name)
        if w is not None and w.state == PROBING and sha < self.host_mac:
            w.ovsnat_answered = True

    def first_frame(self, name: str) -> GoLive | None:
        """The VM sent a frame on this host: it runs here. Unless a foreign device claims
        the FIP: then it stays dark until that device stops answering."""
        w = self.waiting.get(name)
        if w is None or w.state in (SETTLING, CONFLICT) or w.foreign_mac is not None:
            return None
        self.queue.pop(name, None)
        self._set(w, SETTLING)
        # echo mode: no GARP to yield to; the route's MOVED community wins instead
        return GoLive(name, "first frame seen", settle=self.mode != "echo")

    # --- deadlines -----------------------------------------------------------------------
    def due(self, name: str, now: float) -> tuple[list, float | None]:
        """The work due for `name`: (actions, its next deadline or None)."""
        w = self.waiting.get(name)
        if self.mode == "echo":
            return self._echo_due(w, now)
        if w is None or w.state not in (PROBING, HELD, CONFLICT):
            return [], None
        if w.state != PROBING and self._start_round(name, now) is None:
            return [], None  # queued for a probe slot
        if w.probes_sent < PROBE_COUNT:
            w.probes_sent += 1
            wait = PROBE_GAP if w.probes_sent < PROBE_COUNT else ANSWER_WAIT
            return [SendProbe(name, w.fip)], now + wait
        if w.foreign_mac is not None:
            self._set(w, CONFLICT)
        elif w.ovsnat_answered:
            self._set(w, HELD)
        else:
            self._set(w, SETTLING)
            return [GoLive(name, "no other host answered the probes")], None
        return [], w.round_started + REPROBE

    def _echo_due(self, w: Waiting | None, now: float) -> tuple[list, float | None]:
        """echo mode's whole decision, made whenever the FIP or the echo set changes and at
        the deadline it returns: nothing is asked of the network."""
        if w is None or w.state == SETTLING or self.echoes is None:
            return [], None
        if w.fip in self.echoes:
            self._set(w, HELD)
            w.echo_gone = None
            return [], None
        if w.state != HELD:
            self._set(w, SETTLING)
            return [GoLive(w.name, "no other host announces it")], None
        if w.echo_gone is None:
            w.echo_gone = now
        if now - w.echo_gone < ECHO_GONE:
            return [], w.echo_gone + ECHO_GONE
        self._set(w, SETTLING)
        return [GoLive(w.name, "the other host withdrew it")], None

    def echoes_seen(self, echoes: frozenset[str]) -> list[str]:
        """A new echo set: the names whose answer may have changed (call `due` for each)."""
        self.echoes = echoes
        return [n for n, w in self.waiting.items() if w.state in (IDLE, HELD)]

    def start_queued(self, now: float) -> list[str]:
        """Names whose round starts now that probe slots are free (call `due` for each)."""
        started = []
        while self.queue and self.probing < MAX_PROBING:
            name = next(iter(self.queue))
            del self.queue[name]
            if name in self.waiting:
                self._start_round(name, now)
                started.append(name)
        return started
