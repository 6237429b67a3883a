"""Keeping the switch equal to the host state: the dump on connect, the diff, bundles, and
what to do when the switch refuses one. Pure, like the rest of the host controller: it
returns messages (ovsnat.openflow.session packs them) and takes parsed replies.

- On datapath connect: dump ovsnat's flows and meters, diff against the desired state by
  (table, cookie), send only the difference in one atomic bundle. A restart with nothing
  changed sends no flow_mod, and flows keep their counters.
- A rejected bundle changed nothing: each owner it touched is brought to its desired state
  in a bundle of its own, so one bad VM never blocks the others; a second refusal is final
  for that owner until it changes, and is reported.
"""

from __future__ import annotations

import logging

import netaddr

from ovsnat.compile import routed_flows
from ovsnat.compile.flows import COOKIE_HOST, cookie_owner
from ovsnat.compile.punt_flows import METERS
from ovsnat.core.delta import Delta
from ovsnat.core.effects import Reconfigure, ReleaseMemory
from ovsnat.core.state import HOST, HostState
from ovsnat.core.status import Stats
from ovsnat.openflow.session import Bundle, SwitchSession

LOG = logging.getLogger("ovsnat")
FULL_SYNC = "(full sync)"


class Reconciler:
    def __init__(self, clock, stats: Stats):
        self.session = SwitchSession(clock)
        self.stats = stats
        self.host: HostState | None = None
        self.failed_owners: dict[int, str] = {}  # owner bits -> why the switch refused it
        self.dpid: int | None = None
        self.connected_at: float | None = None
        # bgp mode before the kernel's next hops are first heard: the switch's groups are
        # kept as they are (a restart must not empty the ToRs' group); missing ones added.
        self.adopt_groups = False

    # --- connection ----------------------------------------------------------------------
    def connect(self, dpid: int, now: float) -> list:
        LOG.info("ovsnat: datapath %016x connected", dpid)
        self.dpid, self.connected_at = dpid, now
        return self.session.connect()

    def disconnect(self) -> None:
        LOG.warning("ovsnat: datapath %016x disconnected", self.dpid or 0)
        self.session.disconnect()
        self.dpid = self.connected_at = None

    def redump(self, now: float) -> list:
        """Forget what the switch holds and ask again (after a fault)."""
        return self.connect(self.dpid, now) if self.dpid is not None else []

    # --- diffs ---------------------------------------------------------------------------
    def sync(self, now: float) -> list:
        """Send the difference between what the switch will hold and the desired state."""
        if self.host is None or not self.session.ready:
            return []
        self.stats.inc("syncs")
        out = self.session.meter_updates(METERS) + self._groups()
        desired, expected = self.host.all_keys(), self.session.expected()
        stale, missing = expected - desired, desired - expected
        if not stale and not missing:
            LOG.info("ovsnat: flows in sync (%d), nothing sent", len(desired))
            return out + self.settled(now)
        LOG.info("ovsnat: sync: %d to add, %d stale to delete", len(missing), len(stale))
        self._count(len(stale) + len(missing))
        bundle = self.session.bundle(
            sorted(stale), missing, self.host.iter_wire_for(missing), {FULL_SYNC}
        )
        return [*out, bundle]

    def send(self, delta: Delta, retry: bool = True) -> list:
        """One atomic bundle for a change (nothing while the switch is not in step), after
        the groups' changes: a new host config (a ToR's MAC learned) may change a group
        and no flow."""
        if not self.session.ready:
            return []
        groups = self._groups()
        if not delta:
            return groups
        add = delta.add
        self._count(len(delta.delete) + len(add))
        bundle = self.session.bundle(
            delta.delete, [(f.table, f.cookie) for f in add], add, delta.owners, retry
        )
        return [*groups, bundle]

    def _groups(self) -> list:
        """The group's changes, in bgp mode only: l2 mode never touches a group (another
        controller's group 1 is not ovsnat's). Sent before the bundle on the same
        connection, which OVS handles in order: the group exists before any flow uses it."""
        if self.host is None or self.host.cfg.bgp is None:
            return []
        group = routed_flows.group(self.host.cfg)  # always one in bgp mode
        out = self.session.group_updates([group], self.adopt_groups)
        if out:
            LOG.info("ovsnat: groups: %s", group.text())
        return out

    def repair(self, delete: list, adds: list, owners: set) -> list:
        """One bundle putting back what the audit found changed on the switch: deletes by
        (table, cookie), then ((table, cookie), packed flow_mod) adds."""
        self._count(len(delete) + len(adds))
        return [self.session.bundle(delete, [key for key, _ in adds], adds, owners)]

    def _count(self, flow_mods: int) -> None:
        self.stats.inc("flow_mods", flow_mods)
        self.stats.inc("bundles")

    def settled(self, now: float) -> list:
        """The first time nothing is in flight after a connect: in sync (and, then, a
        reconfiguration for the connection's settings: see Reconfigure)."""
        if self.connected_at is None or self.session.bundles:
            return []
        self.stats.reconcile_seconds = now - self.connected_at
        LOG.info(
            "ovsnat: in sync %.3f s after the datapath connected", self.stats.reconcile_seconds
        )
        self.connected_at = None
        return [ReleaseMemory(), Reconfigure()]

    # --- replies ---------------------------------------------------------------------------
    def barrier(self, xid: int, now: float) -> tuple[Bundle | None, list]:
        """A bundle finished: (the bundle, the retries its failure calls for)."""
        b = self.session.barrier_reply(xid)
        if b is None:
            return None, []
        # "sent at": when the bundle left ovsnat; the rest until "at" is the switch's.
        LOG.info(
            "ovsnat: programmed %s (%d flow_mods) at %.6f, sent at %.6f%s",
            _names(b.owners),
            b.size,
            now,
            b.sent_at,
            f" FAILED: {b.failed}" if b.failed else "",
        )
        prefixes = {c >> 24 for _, c in (*b.delete, *b.add_keys)}
        out = []
        if b.failed is None:
            for prefix in prefixes:
                self.failed_owners.pop(prefix & 0xFFFFFFFF, None)
        elif b.retry:
            LOG.warning("ovsnat: retrying %d owner(s) one by one", len(prefixes))
            out = self._resync_owners(prefixes)
        else:
            for prefix in prefixes:
                self.failed_owners[prefix & 0xFFFFFFFF] = b.failed
            LOG.error("ovsnat: giving up on %s: %s", self.owner_name(min(prefixes) << 24), b.failed)
        return b, out + self.settled(now)

    def _resync_owners(self, prefixes: set) -> list:
        have: dict[int, set] = {p: set() for p in prefixes}
        for key in self.session.expected():
            if key[1] >> 24 in have:
                have[key[1] >> 24].add(key)
        out = []
        for prefix in sorted(prefixes):
            owner = HOST if prefix >> 32 == COOKIE_HOST else self.host.owner_names.get(prefix)
            desired = set(self.host.owner_keys(owner)) if owner else set()
            missing = self.host.flows_for(desired - have[prefix])
            out += self.send(
                Delta(
                    sorted(have[prefix] - desired),
                    missing,
                    {owner or self.owner_name(prefix << 24)},
                ),
                retry=False,
            )
        return out

    def error(self, xid: int, type_: int, code: int) -> None:
        self.stats.inc("of_errors")
        bundle, key, what = self.session.blame(xid)
        self.session.group_refused(xid, f"type={type_} code={code}")
        if bundle is None:
            LOG.error(
                "ovsnat: OpenFlow error type=%d code=%d for %s",
                type_,
                code,
                what or f"xid {xid} (not ovsnat's)",
            )
            return
        if bundle.failed:
            return
        if key is not None:
            flows = self.host.flows_for({key}) if self.host else []
            text = flows[0].text() if flows else f"table={key[0]} cookie={key[1]:#x}"
            what = f"flow {text} of {self.owner_name(key[1])}"
        else:
            what = f"bundle {bundle.id}"
        bundle.failed = f"type={type_} code={code} on {what}"
        LOG.error("ovsnat: switch rejected %s: OpenFlow error type=%d code=%d", what, type_, code)

    def owner_name(self, cookie: int) -> str:
        if cookie >> 56 == COOKIE_HOST:
            return "host-level flows"
        ip = str(netaddr.IPAddress(cookie_owner(cookie)))
        name = self.host.owner_names.get(cookie >> 24) if self.host else None
        port = self.host.valid.get(name) if name else None
        return f"port {port.name} ({port.iface_id}, {ip})" if port else f"VM {ip}"

    def confirmed(self, name: str, busy: set) -> bool:
        """Every flow of port `name` is on the switch, none is being changed, none refused."""
        keys = self.host.owner_keys(name)
        if not keys:
            return False
        prefix = keys[0][1] >> 24
        installed = self.session.installed
        return (
            prefix not in busy
            and (prefix & 0xFFFFFFFF) not in self.failed_owners
            and all(k in installed for k in keys)
        )


def _names(owners: set) -> str:
    names = sorted(str(o) for o in owners)
    return ",".join(names[:5]) + (f",... ({len(names)} owners)" if len(names) > 5 else "")
