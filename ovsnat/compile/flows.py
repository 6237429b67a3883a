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
                bits (0xa4: two VLAN networks may use the same addresses)
    bits 23-0   digest of the flow's table, priority, match and actions (salted when two
                flows of one owner would share a cookie: ovsnat.compile.flowident)

The digest makes "is this exact flow installed?" a cookie comparison: a controller restart
diffs (table, cookie) sets and sends nothing when nothing changed. Open vSwitch itself knows a
flow by (table, priority, match); ovsnat.compile.flowident keeps the two views one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

COOKIE_HOST = 0xA1
COOKIE_VM = 0xA2
COOKIE_NET = 0xA3
COOKIE_VLAN_VM = 0xA4
COOKIE_GONE = 0xA6  # a PAT VM that left this host, during its handoff (owner: as 0xa2)
COOKIE_VLAN_GONE = 0xA7  # the same for a VLAN network's VM (owner: as 0xa4)
KINDS = (COOKIE_HOST, COOKIE_VM, COOKIE_NET, COOKIE_VLAN_VM, COOKIE_GONE, COOKIE_VLAN_GONE)
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
}
FIELD_ORDER = (
    "ct_state",
    "ct_mark",
    "proto",
    "reg4",
    "reg5",
    "reg6",
    "reg7",
    "in_port",
    "vlan_tci",
    "dl_vlan",
    "dl_src",
    "dl_dst",
    "nw_src",
    "nw_dst",
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


# --- actions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Output:
    port: int | str  # an ofport, or "IN_PORT" (OVS skips output to the in_port)

    def text(self) -> str:
        return "IN_PORT" if self.port == "IN_PORT" else f"output:{self.port}"


@dataclass(frozen=True)
class SetField:
    field: str  # eth_src eth_dst ip_src ip_dst arp_op arp_sha arp_spa
    value: str

    def text(self) -> str:
        return f"set_field:{self.value}->{self.field}"


NXM_NAMES = {
    "eth_src": "NXM_OF_ETH_SRC",
    "eth_dst": "NXM_OF_ETH_DST",
    "arp_sha": "NXM_NX_ARP_SHA",
    "arp_tha": "NXM_NX_ARP_THA",
    "arp_spa": "NXM_OF_ARP_SPA",
    "arp_tpa": "NXM_OF_ARP_TPA",
    "in_port": "NXM_OF_IN_PORT",
    "reg5": "NXM_NX_REG5",
    "reg6": "NXM_NX_REG6",
    "reg4": "NXM_NX_REG4",
    "reg7": "NXM_NX_REG7",
    "reg8": "NXM_NX_REG8",
    "ip_src": "NXM_OF_IP_SRC",
    "ip_dst": "NXM_OF_IP_DST",
}


def _bits(span: tuple[int, int] | None) -> str:
    return "" if span is None else f"{span[0]}..{span[1]}"


@dataclass(frozen=True)
class Move:
    """Copy a whole field into a field, or into bits lo..hi of it (`dst_bits`)."""

    src: str
    dst: str
    dst_bits: tuple[int, int] | None = None

    def text(self) -> str:
        return f"move:{NXM_NAMES[self.src]}[]->{NXM_NAMES[self.dst]}[{_bits(self.dst_bits)}]"


@dataclass(frozen=True)
class Load:
    field: str
    value: int
    bit: int | None = None  # one bit of the field (a flag register); None: the whole field
    span: tuple[int, int] | None = None  # or bits lo..hi

    def text(self) -> str:
        bits = str(self.bit) if self.bit is not None else _bits(self.span)
        return f"load:{self.value:#x}->{NXM_NAMES[self.field]}[{bits}]".replace("0x0->", "0->")


@dataclass(frozen=True)
class PushVlan:
    """Tag with VLAN `vid` (push_vlan, then set_field on vlan_vid with the present bit)."""

    vid: int

    def text(self) -> str:
        return f"push_vlan:0x8100,set_field:{0x1000 | self.vid}->vlan_vid"


@dataclass(frozen=True)
class PopVlan:
    def text(self) -> str:
        return "pop_vlan"


@dataclass(frozen=True)
class DecTtl:
    def text(self) -> str:
        return "dec_ttl"


@dataclass(frozen=True)
class Nat:
    kind: str | None = None  # "src", "dst", or None: apply the connection's existing NAT
    ip: str | None = None
    port_min: int | None = None
    port_max: int | None = None

    def text(self) -> str:
        if self.kind is None:
            return "nat"
        ports = f":{self.port_min}-{self.port_max}" if self.port_min is not None else ""
        return f"nat({self.kind}={self.ip}{ports})"


@dataclass(frozen=True)
class Ct:
    zone: int | str  # a number, or "reg4": the zone in register 4's low 16 bits
    table: int | None = None  # continue in this table after conntrack (recirculation)
    commit: bool = False
    nat: Nat | None = None
    mark: int | None = None  # with commit: set the connection's ct_mark

    def text(self) -> str:
        zone = "NXM_NX_REG4[0..15]" if self.zone == "reg4" else self.zone
        parts = (
            (["commit"] if self.commit else [])
            + ([f"table={self.table}"] if self.table is not None else [])
            + [f"zone={zone}"]
            + ([self.nat.text()] if self.nat else [])
            + ([f"exec(set_field:{self.mark:#x}->ct_mark)"] if self.mark is not None else [])
        )
        return f"ct({','.join(parts)})"


@dataclass(frozen=True)
class CtClear:
    def text(self) -> str:
        return "ct_clear"


@dataclass(frozen=True)
class Controller:
    """A packet-in. With `meter`, only the copy sent to the controller is metered (OVS's
    controller action with a meter_id): a flow that copies a frame up and forwards it on
    meters the copy without dropping the frame itself, as a meter instruction would."""

    max_len: int = 128
    meter: int | None = None

    def text(self) -> str:
        if self.meter is None:
            return f"CONTROLLER:{self.max_len}"
        size = f"max_len={self.max_len}," if self.max_len != 0xFFFF else ""
        return f"controller({size}meter_id={self.meter})"


@dataclass(frozen=True)
class Meter:
    """OpenFlow 1.3 meter instruction (rendered first, as OVS prints it)."""

    meter_id: int

    def text(self) -> str:
        return f"meter:{self.meter_id}"


@dataclass(frozen=True)
class Goto:
    """goto_table instruction (always last)."""

    table: int

    def text(self) -> str:
        return f"goto_table:{self.table}"


Action = (
    Output
    | SetField
    | Move
    | Load
    | PushVlan
    | PopVlan
    | DecTtl
    | Ct
    | CtClear
    | Controller
    | Meter
    | Goto
)


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
