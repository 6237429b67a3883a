"""Flows and meters as framework (ryu/os-ken) OpenFlow 1.3 messages: the test oracle.

The controller packs its messages itself (ovsnat.openflow.messages); the framework's own
classes are an independent rendering of the same `Flow`. tests/test_ofmsgs.py has OVS decode
these messages (`ovs-ofctl ofp-parse`) and checks they read exactly as the golden text, and
tests/test_ofwire.py that the packed bytes read exactly as these.
Match fields and move/load targets use the NXM encodings OVS itself uses for these fields,
so a dump of flows installed by the controller reads exactly like the golden files.
"""

from __future__ import annotations

from ovsnat.compile.actions import (
    Conjunction,
    Controller,
    Ct,
    CtClear,
    DecTtl,
    Goto,
    Group,
    Load,
    Meter,
    Move,
    Output,
    OutputReg,
    PopVlan,
    PushVlan,
    SetField,
)
from ovsnat.compile.flows import PROTOCOLS, Flow, MeterSpec
from ovsnat.runtime import framework as fw

NX_NAT_F_SRC, NX_NAT_F_DST = 1 << 0, 1 << 1  # OVS nx_nat flags (ryu has no names for them)
CT_STATE_BITS = {"new": 0x01, "est": 0x02, "rel": 0x04, "rpl": 0x08, "inv": 0x10, "trk": 0x20}
MOVE_FIELDS = {
    "eth_src": ("eth_src_nxm", 48),
    "eth_dst": ("eth_dst_nxm", 48),
    "arp_sha": ("arp_sha_nxm", 48),
    "arp_tha": ("arp_tha_nxm", 48),
    "arp_spa": ("arp_spa_nxm", 32),
    "arp_tpa": ("arp_tpa_nxm", 32),
    "ip_src": ("ipv4_src_nxm", 32),
    "ip_dst": ("ipv4_dst_nxm", 32),
    "reg7": ("reg7", 32),
    "reg8": ("reg8", 32),
}
LOAD_FIELDS = {"eth_src": "eth_src_nxm"}
SET_FIELDS = {
    "eth_src": "eth_src",
    "eth_dst": "eth_dst",
    "ip_src": "ipv4_src",
    "ip_dst": "ipv4_dst",
    "arp_op": "arp_op",
    "arp_sha": "arp_sha",
    "arp_spa": "arp_spa",
}


def ct_state(text: str) -> tuple[int, int]:
    """ "+est+trk" -> (value, mask) over the conntrack state bits."""
    value = mask = 0
    for token in text.replace("+", " +").replace("-", " -").split():
        bit = CT_STATE_BITS[token[1:]]
        mask |= bit
        if token[0] == "+":
            value |= bit
    return value, mask


def _ip_mask(text: str):
    if "/" not in text:
        return text
    addr, plen = text.split("/")
    bits = (0xFFFFFFFF << (32 - int(plen))) & 0xFFFFFFFF
    return addr, ".".join(str(bits >> s & 0xFF) for s in (24, 16, 8, 0))


def match_kwargs(flow: Flow) -> dict:
    m = dict(flow.match.fields)
    kw: dict = {}
    proto = m.pop("proto", None)
    if proto:
        eth_type, ip_proto = PROTOCOLS[proto]
        kw["eth_type"] = eth_type
        if ip_proto:
            kw["ip_proto"] = ip_proto
    for name, value in m.items():
        if name in ("reg2", "reg3", "reg4", "reg5", "reg6", "reg7", "reg9", "reg10", "reg11"):
            v, _, mask = value.partition("/")
            kw[name] = (int(v, 0), int(mask, 0)) if mask else int(v, 0)
        elif name == "dl_vlan":
            kw["vlan_vid"] = 0x1000 | int(value)
        elif name == "in_port":
            kw["in_port"] = int(value)
        elif name == "vlan_tci":
            kw["vlan_vid"] = 0  # OFPVID_NONE: no 802.1Q header (= 0x0000/0x1fff)
        elif name in ("dl_src", "dl_dst"):
            kw["eth_" + name[3:]] = value
        elif name in ("nw_src", "nw_dst"):
            kw["ipv4_" + name[3:]] = _ip_mask(value)
        elif name in ("arp_spa", "arp_tpa", "arp_sha"):
            kw[name] = _ip_mask(value) if name != "arp_sha" else value
        elif name == "arp_op":
            kw["arp_op"] = int(value)
        elif name == "nw_ttl":
            kw["nw_ttl"] = int(value)
        elif name == "nw_frag":
            kw["ip_frag"] = {"yes": (1, 1), "no": (0, 1), "first": (1, 3), "later": (3, 3)}[value]
        elif name in ("tp_src", "tp_dst"):
            v, _, mask = str(value).partition("/")
            kw[f"{proto}_{name[3:]}"] = (int(v, 0), int(mask, 0)) if mask else int(v, 0)
        elif name == "conj_id":
            kw["conj_id"] = int(value)
        elif name == "nw_proto":
            kw["ip_proto"] = int(value)
        elif name == "icmp_code":
            kw["icmpv4_code"] = int(value)
        elif name == "ct_state":
            kw["ct_state"] = ct_state(value)
        elif name == "ct_mark":
            v, _, m = value.partition("/")
            kw["ct_mark"] = (int(v, 0), int(m, 0)) if m else int(v, 0)
        elif name == "icmp_type":
            kw["icmpv4_type"] = int(value)
        elif name == "tcp_flags":
            kw["tcp_flags_nxm"] = (2 if value == "+syn" else 0, 2)
        else:
            raise ValueError(f"no framework rendering for match field {name}")
    return kw


def _controller2(a):
    """controller(max_len=..., meter_id=...): the framework's NXActionController2 knows no
    meter_id property (OVS added it later), so the oracle adds that property's bytes
    (NXAC2PT_METER_ID, a 32-bit value) to what the framework serializes."""
    import struct

    base = fw.parser.NXActionController2(**({} if a.max_len == 0xFFFF else {"max_len": a.max_len}))

    class WithMeter(type(base)):
        def serialize_body(self):
            return base.serialize_body() + struct.pack("!HHI", 5, 8, a.meter)

    return WithMeter(**({} if a.max_len == 0xFFFF else {"max_len": a.max_len}))


def action(a):
    p, ofp, nx = fw.parser, fw.ofproto, fw.nicira_ext
    if isinstance(a, Output):
        return p.OFPActionOutput(ofp.OFPP_IN_PORT if a.port == "IN_PORT" else int(a.port), 0)
    if isinstance(a, Group):
        return p.OFPActionGroup(a.id)
    if isinstance(a, Controller):
        if a.meter is not None:
            return _controller2(a)
        return p.OFPActionOutput(ofp.OFPP_CONTROLLER, a.max_len)
    if isinstance(a, SetField):
        value = int(a.value) if a.field == "arp_op" else a.value
        return p.OFPActionSetField(**{SET_FIELDS[a.field]: value})
    if isinstance(a, Move):
        (src, bits), (dst, _) = MOVE_FIELDS[a.src], MOVE_FIELDS[a.dst]
        if a.dst_bits:
            lo, hi = a.dst_bits
            return p.NXActionRegMove(src_field=src, dst_field=dst, n_bits=hi - lo + 1, dst_ofs=lo)
        return p.NXActionRegMove(src_field=src, dst_field=dst, n_bits=bits)
    if isinstance(a, Load):
        if a.field == "in_port":
            return p.NXActionRegLoad(
                ofs_nbits=nx.ofs_nbits(0, 15), dst="in_port_nxm", value=a.value
            )
        if a.span is not None:
            return p.NXActionRegLoad(
                ofs_nbits=nx.ofs_nbits(*a.span),
                dst=LOAD_FIELDS.get(a.field, a.field),
                value=a.value,
            )
        bits = nx.ofs_nbits(0, 31) if a.bit is None else nx.ofs_nbits(a.bit, a.bit)
        return p.NXActionRegLoad(ofs_nbits=bits, dst=a.field, value=a.value)
    if isinstance(a, DecTtl):
        return p.OFPActionDecNwTtl()
    if isinstance(a, PopVlan):
        return p.OFPActionPopVlan()
    if isinstance(a, CtClear):
        return p.NXActionCTClear()
    if isinstance(a, Ct):
        nat = []
        if a.nat is not None:
            flags, kw = 0, {}
            if a.nat.kind:
                flags = NX_NAT_F_SRC if a.nat.kind == "src" else NX_NAT_F_DST
                kw = {"range_ipv4_min": a.nat.ip, "range_ipv4_max": a.nat.ip}
                if a.nat.port_min is not None:
                    kw.update(range_proto_min=a.nat.port_min, range_proto_max=a.nat.port_max)
            nat = [p.NXActionNAT(flags=flags, **kw)]
        if a.mark is not None:
            nat.append(p.OFPActionSetField(ct_mark=a.mark))
        from_reg = isinstance(a.zone, str)
        return p.NXActionCT(
            flags=nx.NX_CT_F_COMMIT if a.commit else 0,
            zone_src=a.zone if from_reg else "",
            zone_ofs_nbits=nx.ofs_nbits(0, 15) if from_reg else a.zone,
            recirc_table=a.table if a.table is not None else nx.NX_CT_RECIRC_NONE,
            alg=0,
            actions=nat,
        )
    if isinstance(a, OutputReg):
        return p.NXActionOutputReg2(ofs_nbits=nx.ofs_nbits(0, 15), src=a.field, max_len=0)
    if isinstance(a, Conjunction):
        return p.NXActionConjunction(clause=a.clause - 1, n_clauses=a.n_clauses, id_=a.id)
    raise ValueError(f"no framework rendering for action {a!r}")


def instructions(flow: Flow) -> list:
    p, ofp = fw.parser, fw.ofproto
    out, applied = [], []
    for a in flow.actions:
        if isinstance(a, Meter):
            out.append(p.OFPInstructionMeter(a.meter_id))
        elif isinstance(a, PushVlan):
            applied += [p.OFPActionPushVlan(0x8100), p.OFPActionSetField(vlan_vid=0x1000 | a.vid)]
        elif not isinstance(a, Goto):
            applied.append(action(a))
    if applied:
        out.append(p.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, applied))
    out += [p.OFPInstructionGotoTable(a.table) for a in flow.actions if isinstance(a, Goto)]
    return out


# Prerequisites first: OVS rejects a match whose fields precede their prerequisites
# (OFPBMC_BAD_PREREQ), and ryu's default order (by OXM class) puts Nicira fields such as
# nw_ttl before eth_type.
PREREQ_FIRST = (
    "reg2",
    "reg3",
    "reg4",
    "reg5",
    "reg6",
    "reg7",
    "in_port",
    "vlan_vid",
    "eth_src",
    "eth_dst",
    "eth_type",
    "ip_proto",
)


def match(flow: Flow):
    kw = match_kwargs(flow)
    ordered = [k for k in PREREQ_FIRST if k in kw] + [k for k in kw if k not in PREREQ_FIRST]
    return fw.parser.OFPMatch(
        _ordered_fields=[fw.ofproto.oxm_normalize_user(k, kw[k]) for k in ordered]
    )


def flow_add(datapath, flow: Flow):
    return fw.parser.OFPFlowMod(
        datapath,
        cookie=flow.cookie,
        table_id=flow.table,
        command=fw.ofproto.OFPFC_ADD,
        priority=flow.priority,
        match=match(flow),
        instructions=instructions(flow),
    )


def flow_delete(datapath, table: int, cookie: int):
    """Delete exactly the flows of `table` with this cookie (cookies are per flow)."""
    p, ofp = fw.parser, fw.ofproto
    return p.OFPFlowMod(
        datapath,
        cookie=cookie,
        cookie_mask=0xFFFFFFFFFFFFFFFF,
        table_id=table,
        command=ofp.OFPFC_DELETE,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=p.OFPMatch(),
    )


def meter_add(datapath, meter: MeterSpec, command: int | None = None):
    p, ofp = fw.parser, fw.ofproto
    return p.OFPMeterMod(
        datapath,
        command=ofp.OFPMC_ADD if command is None else command,
        flags=ofp.OFPMF_PKTPS,
        meter_id=meter.meter_id,
        bands=[p.OFPMeterBandDrop(rate=meter.rate_pps, burst_size=0)],
    )
