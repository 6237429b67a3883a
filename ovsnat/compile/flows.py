"""OpenFlow flows as plain values, and their `ovs-ofctl` text.

The compiler builds `Flow`s; renderers turn them into ovs-ofctl text (golden files,
`ovs-ofctl --bundle` baselines) or framework flow_mods (tests/framework_render.py, the test
oracle). The text is written the way `ovs-ofctl dump-flows` prints it (OVS's field order and
spelling), so a rendered flow and a dumped flow can be compared as strings.

Cookies say who owns a flow, so a dump maps back to the objects that made it and stale flows
can be removed exactly:

    bits 63-56  kind: 0xa1 host-level, 0xa2 VM of an untagged network, 0xa3 network,
                0xa4 VM of a VLAN network           (other values: not ovsnat's)
    bits 55-24  owner: 0 for host-level flows; the VM's fixed IPv4 address (0xa2); the
                network's VLAN, 0 when untagged (0xa3); VLAN << 20 | the fixed IP's low 20
                bits (0xa4: two VLAN networks may use the same addresses); 0xa8-0xaa
                security groups (ovsnat.compile.sg_owners); 0xab a VIP's address; 0xac,
                0xad east-west (ovsnat.compile.eastwest)
    bits 23-0   digest of the flow's table, priority, match and actions (salted when two
                flows of one owner would share a cookie: ovsnat.compile.flowident)

The digest makes "is this exact flow installed?" a cookie comparison: a controller restart
diffs (table, cookie) sets and sends nothing when nothing changed. Open vSwitch itself knows a
flow by (table, priority, match); ovsnat.compile.flowident keeps the two views one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ovsnat.compile.actions import Action, Ct, Goto

COOKIE_HOST = 0xA1
COOKIE_VM = 0xA2
COOKIE_NET = 0xA3
COOKIE_VLAN_VM = 0xA4
COOKIE_GONE = 0xA6  # a PAT VM that left this host, during its handoff (owner: as 0xa2)
COOKIE_VLAN_GONE = 0xA7  # the same for a VLAN network's VM (owner: as 0xa4)
# Security groups (ovsnat.compile.sg_owners): a profile's rules, a remote group's
# conjunctions, a remote group member's address (owner: the profile id, conj id, address).
COOKIE_SG_PROFILE, COOKIE_SG_GROUP, COOKIE_SG_MEMBER = 0xA8, 0xA9, 0xAA
# An allowed-pair address local ports share (a VIP): the flows every holder-to-be needs,
# owned once however many local ports have it (owner: the address).
COOKIE_VIP = 0xAB
# East-west routing (ovsnat.compile.eastwest): a network routed to (owner: its VLAN, 0 when
# untagged), the hosts' routed MACs (owner 0).
COOKIE_EW, COOKIE_HOSTMACS = 0xAC, 0xAD
KINDS = (
    COOKIE_HOST,
    COOKIE_VM,
    COOKIE_NET,
    COOKIE_VLAN_VM,
    COOKIE_GONE,
    COOKIE_VLAN_GONE,
    COOKIE_SG_PROFILE,
    COOKIE_SG_GROUP,
    COOKIE_SG_MEMBER,
    COOKIE_VIP,
    COOKIE_EW,
    COOKIE_HOSTMACS,
)
# Flows with a hard timeout, outside the desired state: never dumped or reconciled, they
# expire by themselves (a DHCP-flooding port's quarantine, owner = its OpenFlow port).
COOKIE_QUARANTINE = 0xA5
OWNER_MASK = 0xFFFFFFFFFF000000  # kind + owner: every flow of one owner


def owner_cookie(kind: int, owner: int) -> int:
    return kind << 56 | (owner & 0xFFFFFFFF) << 24


def cookie_kind(cookie: int) -> int:
    return cookie >> 56


def cookie_owner(cookie: int) -> int:
    return cookie >> 24 & 0xFFFFFFFF


def is_ours(cookie: int) -> bool:
    return cookie_kind(cookie) in KINDS


# --- matches ---------------------------------------------------------------------------------
# OVS prints the protocol shorthand, then fields in this order (lib/match.c match_format()).
PROTOCOLS = {
    "ip": (0x0800, None),
    "arp": (0x0806, None),
    "ipv6": (0x86DD, None),
    "rarp": (0x8035, None),
    "tcp": (0x0800, 6),
    "udp": (0x0800, 17),
    "icmp": (0x0800, 1),
    "sctp": (0x0800, 132),
}
FIELD_ORDER = (
    "conj_id",
    "ct_state",
    "ct_mark",
    "proto",
    "reg2",
    "reg3",
    "reg4",
    "reg5",
    "reg6",
    "reg7",
    "reg9",
    "reg10",
    "reg11",
    "in_port",
    "vlan_tci",
    "dl_vlan",
    "dl_src",
    "dl_dst",
    "nw_src",
    "nw_dst",
    "nw_proto",
    "arp_spa",
    "arp_tpa",
    "arp_op",
    "arp_sha",
    "nw_ttl",
    "nw_frag",
    "tp_src",
    "tp_dst",
    "tcp_flags",
    "icmp_type",
    "icmp_code",
)
NO_VLAN = "0x0000/0x1fff"  # untagged frames only (OpenFlow 1.3 OFPVID_NONE)
RANK = {name: i for i, name in enumerate(FIELD_ORDER)}


@dataclass(frozen=True)
class Match:
    """Field name -> value text, in ovs-ofctl spelling; `proto` holds the shorthand."""

    fields: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, **kw) -> Match:
        unknown = kw.keys() - RANK.keys()
        if unknown:
            raise ValueError(f"unknown match fields {sorted(unknown)}")
        if "proto" in kw and kw["proto"] not in PROTOCOLS:
            raise ValueError(f"unknown protocol {kw['proto']}")
        items = sorted((RANK[k], k, str(v)) for k, v in kw.items() if v is not None)
        return cls(tuple((k, v) for _, k, v in items))

    def get(self, name: str) -> str | None:
        return dict(self.fields).get(name)

    def names(self) -> set[str]:
        return {k for k, _ in self.fields}

    def text(self) -> str:
        return ",".join(v if k == "proto" else f"{k}={v}" for k, v in self.fields)


# --- flows -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Flow:
    table: int
    priority: int
    match: Match
    actions: tuple[Action, ...]
    owner_cookie: int = field(default=0, compare=False)
    cookie: int = 0
    body_text: str = field(default="", compare=False, repr=False)  # cache of body()

    def body(self) -> str:
        """Everything but the cookie, as ovs-ofctl prints it (it leaves out table 0)."""
        return self.body_text or _body(self.table, self.priority, self.match, self.actions)

    def text(self) -> str:
        return f"cookie={self.cookie:#x}, {self.body()}"

    def gotos(self) -> set[int]:
        """Tables this flow can continue in (goto_table and ct recirculation)."""
        return {a.table for a in self.actions if isinstance(a, (Goto, Ct)) and a.table is not None}


def _body(table: int, priority: int, match: Match, actions) -> str:
    acts = ",".join([a.text() for a in actions]) or "drop"
    m = ("," + match.text()) if match.fields else ""
    t = f"table={table}, " if table else ""
    return f"{t}priority={priority}{m} actions={acts}"


def body_digest(body: str, salt: int = 0) -> int:
    """24 bits of BLAKE2b of a flow's body. A salt re-derives it when two flows of one owner
    would share a (table, cookie) (ovsnat.compile.flowident): the same flows, the same cookies."""
    data = (body if not salt else f"{body}#salt{salt}").encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=3).digest(), "big")


def make_flow(
    owner_cookie: int,
    table: int,
    priority: int,
    match: Match,
    actions: tuple[Action, ...] | list[Action],
) -> Flow:
    """A flow with its cookie: the owner's bits plus a 24-bit digest of its content."""
    actions = tuple(actions)
    body = _body(table, priority, match, actions)
    return Flow(
        table, priority, match, actions, owner_cookie, owner_cookie | body_digest(body), body
    )


def resalted(flow: Flow, used: set) -> Flow:
    """The flow with the digest of its body salted 1, 2, ... until its (table, cookie) is
    not in `used` (which gains it)."""
    salt, cookie = 0, flow.cookie
    while (flow.table, cookie) in used:
        salt += 1
        cookie = flow.owner_cookie | body_digest(flow.body(), salt)
    used.add((flow.table, cookie))
    return Flow(
        flow.table,
        flow.priority,
        flow.match,
        flow.actions,
        flow.owner_cookie,
        cookie,
        flow.body_text,
    )


METER_CONTROLLER = 0xFFFFFFFE  # OpenFlow 1.3 OFPM_CONTROLLER: every packet-in


@dataclass(frozen=True)
class MeterSpec:
    """An OpenFlow meter dropping packets above `rate_pps` (guards every packet-in path)."""

    meter_id: int
    rate_pps: int

    def text(self) -> str:
        name = "controller" if self.meter_id == METER_CONTROLLER else self.meter_id
        return f"meter={name},pktps,band=type=drop,rate={self.rate_pps}"


def ofctl_text(flows) -> str:
    """Flows as an `ovs-ofctl add-flows` file (also what the golden files hold)."""
    return "".join(f.text() + "\n" for f in flows)
