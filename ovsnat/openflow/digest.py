"""A flow's body as a number: what the audit compares between the switch and the host state.

A cookie names one flow and carries a digest of its text, but an in-place `ovs-ofctl
mod-flows` keeps the cookie and changes the actions: comparing (table, cookie) keys cannot
see it. The audit therefore compares a CRC-32 of the flow's priority, match and
instructions, taken from the bytes on both sides: the packed flow_mod ovsnat keeps, and
each flow stats entry the switch returns. ovsnat writes matches in the order and form Open
vSwitch writes them back (ovsnat.openflow.messages), and OVS returns actions as it received them, so
an untouched flow has the same bytes, and the same digest, both ways (a lab test checks it
for every golden scenario). zlib's CRC runs in C over buffer slices: about a microsecond a
flow, so a whole dump of 100,000 flows costs a tenth of a second to compare.
"""

from __future__ import annotations

import zlib

from ovsnat.openflow.blobs import FLOW_MOD_HEAD, MATCH_AT, PRIORITY_AT, bad_blob

STATS_PRIORITY = 12  # offsets in an ofp_flow_stats entry
STATS_BODY = 48
GROUP_TYPE, GROUP_BUCKETS = 2, 8  # offsets in an ofp_group_desc entry


def _digest(buf, priority_at: int, body_from: int, body_to: int) -> int:
    return zlib.crc32(buf[body_from:body_to], zlib.crc32(buf[priority_at : priority_at + 2]))


def flow_mod_digest(msg: bytes) -> int:
    """The digest of one packed flow_mod (see the module docstring)."""
    view = memoryview(msg)
    return _digest(view, PRIORITY_AT, MATCH_AT, len(msg))


def stats_digest(buf, offset: int, length: int) -> int:
    """The digest of the flow stats entry at `offset` of a multipart reply (slices of an
    entry are small: copying them costs less than a memoryview per entry)."""
    return _digest(buf, offset + STATS_PRIORITY, offset + STATS_BODY, offset + length)


def group_digest(group_type: int, buckets) -> int:
    """A group's type and buckets as a number: groups carry no cookie, so the controller
    compares this, from the group_mod it would send and from the switch's group
    description (OVS returns a bucket's actions as it received them, as for flows)."""
    return zlib.crc32(buckets, group_type)


def group_desc_digest(buf, offset: int, length: int) -> int:
    """The digest of the group description entry at `offset` of a multipart reply."""
    return group_digest(buf[offset + GROUP_TYPE], buf[offset + GROUP_BUCKETS : offset + length])


def flow_mod_digests(blob: bytes):
    """((table, cookie), digest, offset, length) of each flow_mod in `blob` (packed
    flow_mods back to back, as ovsnat.core.state keeps them), without copying any."""
    view, offset, size, head = memoryview(blob), 0, len(blob), FLOW_MOD_HEAD.unpack_from
    while offset < size:
        length, cookie, table = head(blob, offset)
        if length < MATCH_AT or offset + length > size:
            raise bad_blob(offset, length)
        yield (
            (table, cookie),
            _digest(view, offset + PRIORITY_AT, offset + MATCH_AT, offset + length),
            offset,
            length,
        )
        offset += length
