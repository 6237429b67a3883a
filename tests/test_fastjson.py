"""The OVSDB stream framer (ovsnat/ovsdb/fastjson.py): JSON-RPC messages sent back to back,
cut anywhere by the socket, come out whole and in order, decoded by the C decoder."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovsnat.ovsdb.fastjson import Framer

TRICKY = [
    {
        "id": 1,
        "result": {"Interface": {"u1": {"initial": {"name": "p0", "ofport": 5}}}},
        "error": None,
    },
    {"method": "update2", "params": ["ovsnat", {"x": {"k": "}{ ] [ {{"}}], "id": None},
    {"id": "echo", "result": ['quote " and \\ and \\" }{', "é ü 字 🙂"], "error": None},
    {"id": 3, "result": [[], {}, [{}], {"a": []}], "error": None},
]


def stream(messages: list, sep: str = "") -> bytes:
    return sep.join(
        json.dumps(m, ensure_ascii=False, separators=(",", ":")) for m in messages
    ).encode("utf-8")


def decode_in_pieces(data: bytes, cuts: list[int]) -> list:
    framer, out, last = Framer(), [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        framer.feed(data[last:cut])
        out += framer.values()
        last = cut
    return out


def test_messages_cut_at_every_byte_come_out_whole_and_in_order():
    data = stream(TRICKY)
    for cut in range(1, len(data)):
        assert decode_in_pieces(data, [cut]) == TRICKY, cut


def test_a_message_is_handed_over_as_soon_as_its_last_byte_arrives():
    data = stream(TRICKY[:2])
    first_end = len(stream(TRICKY[:1]))
    framer = Framer()
    framer.feed(data[: first_end - 1])
    assert framer.values() == []
    framer.feed(data[first_end - 1 : first_end])
    assert framer.values() == TRICKY[:1]
    framer.feed(data[first_end:])
    assert framer.values() == TRICKY[1:2]


def test_whitespace_between_messages_is_allowed():
    assert decode_in_pieces(stream(TRICKY, sep="\n "), [7, 100]) == TRICKY


def test_bytes_that_are_not_json_raise():
    framer = Framer()
    framer.feed(b'{"id": 1, "result": nope}{"id": 2}')
    with pytest.raises(ValueError):
        framer.values()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=4),
        min_size=1,
        max_size=4,
    ),
    st.lists(st.integers(min_value=1, max_value=400), max_size=6),
)
def test_any_objects_cut_anywhere_decode_to_themselves(messages, cuts):
    data = stream(messages)
    assert decode_in_pieces(data, [c for c in cuts if c < len(data)]) == messages
