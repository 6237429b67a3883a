"""Actions of flows as plain values, each with its `ovs-ofctl` text as OVS prints it back
(ovsnat.openflow.actions packs them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Output:
    port: int | str  # an ofport, or "IN_PORT" (OVS skips output to the in_port)

    def text(self) -> str:
        return "IN_PORT" if self.port == "IN_PORT" else f"output:{self.port}"


@dataclass(frozen=True)
class Group:
    """To an OpenFlow group (ovsnat.compile.groups)."""

    id: int

    def text(self) -> str:
        return f"group:{self.id}"


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
    "reg2": "NXM_NX_REG2",
    "reg3": "NXM_NX_REG3",
    "reg5": "NXM_NX_REG5",
    "reg6": "NXM_NX_REG6",
    "reg4": "NXM_NX_REG4",
    "reg7": "NXM_NX_REG7",
    "reg8": "NXM_NX_REG8",
    "reg9": "NXM_NX_REG9",
    "reg10": "NXM_NX_REG10",
    "reg11": "NXM_NX_REG11",
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
    zone: int | str  # a number, or a register ("reg4"): the zone in its low 16 bits
    table: int | None = None  # continue in this table after conntrack (recirculation)
    commit: bool = False
    nat: Nat | None = None
    mark: int | None = None  # with commit: set the connection's ct_mark

    def text(self) -> str:
        zone = f"{NXM_NAMES[self.zone]}[0..15]" if isinstance(self.zone, str) else self.zone
        parts = (
            (["commit"] if self.commit else [])
            + ([f"table={self.table}"] if self.table is not None else [])
            + [f"zone={zone}"]
            + ([self.nat.text()] if self.nat else [])
            + ([f"exec(set_field:{self.mark:#x}->ct_mark)"] if self.mark is not None else [])
        )
        return f"ct({','.join(parts)})"


@dataclass(frozen=True)
class OutputReg:
    """Out of the port whose number is in bits 0-15 of a register: one flow delivers to
    every port (security groups' last step, where the port was chosen earlier)."""

    field: str

    def text(self) -> str:
        return f"output:{NXM_NAMES[self.field]}[0..15]"


@dataclass(frozen=True)
class Conjunction:
    """Dimension `clause` of `n_clauses` of conjunctive match `id` (1-based, as OVS prints
    it): a packet that matches one flow of every dimension matches `conj_id=id`."""

    id: int
    clause: int
    n_clauses: int

    def text(self) -> str:
        return f"conjunction({self.id},{self.clause}/{self.n_clauses})"


@dataclass(frozen=True)
class Resubmit:
    """Continue in `table` (NXAST_RESUBMIT_TABLE). Only in packet-outs: a frame the
    controller rewrote enters the pipeline where it would have been (an ICMP error for a
    filtered port meets the port's ingress rules)."""

    table: int

    def text(self) -> str:
        return f"resubmit(,{self.table})"


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
    | OutputReg
    | Conjunction
    | Controller
    | Meter
    | Goto
)
