"""The pipeline's numbers: its tables, the registers that carry a packet's facts from one
table to a later one, and the flags of register 5. Which table may match and do what is
declared in ovsnat.compile.tables, which holds every generated flow to it; flows/pipeline.md
documents the same tables (a test keeps the two in sync).
"""

from __future__ import annotations

from dataclasses import dataclass

from ovsnat.compile.actions import Move

CLASSIFY, FABRIC_IN, VM_ARP, UPLINK_ARP, VM_ROUTE, HANDOFF_IN = 0, 5, 10, 15, 20, 25
CONN_COUNT, CONN_VERDICT = 22, 23
EGRESS, NET_PAT_OUT, NET_PAT_DONE, PAT_OUT, PAT_GUARD, EGRESS_OUT = 30, 31, 32, 35, 38, 40
INGRESS, PAT_IN, PAT_IN_NET, NET_PAT_IN, DELIVER, VM_L2 = 50, 55, 56, 57, 60, 70
SG_OUT_CT, SG_OUT, SG_IN_CT, SG_IN = 16, 17, 71, 72
EW_IN, EW_IN_PORT, EW_ROUTE = 6, 7, 21  # east-west routing (ovsnat.compile.eastwest)
META_REPLY = 65  # the metadata proxy's replies (ovsnat.compile.metadata_flows)

# Register 5 carries flags from one table to a later one (registers start at 0 for every
# packet and survive goto, recirculation and ct_clear); register 6 the packet's network;
# register 7 the address vm_l2 delivers to (IP destination or ARP target); register 8 the
# sending VM's FIP (with the HAS_FIP flag), set where its port is classified, or, with the
# METADATA flag instead (never both), the port's encoded address for the metadata proxy
# (ovsnat.compile.metadata_flows). Registers 9-11
# carry a filtered port's security profile, conntrack zone and OpenFlow port to the
# security-group tables (ovsnat.compile.sg_flows). Register 3 holds the tag of the router
# of the packet's network when that network is routed east-west (ovsnat.compile.eastwest).
LEAVING, FIP_DONE, FROM_FABRIC, ROUTED, HAS_FIP = 0, 1, 2, 3, 4  # bits of reg5
HANDED, ARRIVED = 5, 6  # came over the handoff VLAN; sent by a VM in its arrival grace
LIMITED = 7  # sent by a PAT VM with a connection limit (its zone in reg4)
OUTSIDE = 8  # arrived on the uplink (a remote group's member is never its source)
METADATA = 9  # a VM's own request to 169.254.169.254:80 (its encoded port in reg8)

# The delivery key vm_l2 matches: the IP destination or the ARP target, in register 7.
TO_KEY_IP, TO_KEY_ARP = Move("ip_dst", "reg7"), Move("arp_tpa", "reg7")


def flag(bit: int) -> str:
    """reg5 match: the flag is set."""
    return f"{1 << bit:#x}/{1 << bit:#x}"


def no_flag(bit: int) -> str:
    return f"0/{1 << bit:#x}"


def reg6(net) -> str:
    """reg6 match: the network (its VLAN, 0 when untagged)."""
    return f"{net.id:#x}" if net.id else "0"


@dataclass(frozen=True)
class Table:
    id: int
    name: str
    purpose: str
    matches: frozenset[str]
    actions: frozenset[type]
    next_tables: frozenset[int] = frozenset()


def declare(id, name, purpose, matches, actions, next_tables=()) -> Table:
    """A table's declaration: `matches` the fields its flows may match (space-separated),
    `actions` the action types they may use, `next_tables` where they may go."""
    return Table(
        id, name, purpose, frozenset(matches.split()), frozenset(actions), frozenset(next_tables)
    )
