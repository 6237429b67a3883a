"""OVSDB's JSON values (RFC 7047 section 5.1) as the watcher reads them from `update2`."""

from __future__ import annotations

import sys


def atom(value):
    """An atom; a UUID reference ["uuid", "..."] becomes its string, interned: each UUID is
    kept in several indexes, as one string object."""
    return sys.intern(value[1]) if isinstance(value, list) else value


def set_of(value) -> list:
    """A set column's elements: ["set", [...]] or, for exactly one element, the atom itself."""
    if isinstance(value, list) and value[0] == "set":
        return [atom(a) for a in value[1]]
    return [atom(value)]


def optional(value):
    """A column of at most one element (ofport, link_state): its value or None. In update2 a
    change of such a column carries the new value, not a difference."""
    values = set_of(value)
    return values[0] if values else None


def map_of(value) -> dict:
    return {sys.intern(k): v for k, v in value[1]}


def apply_map_diff(old: dict, diff: dict) -> dict:
    """update2's map difference: a new key is added, a key with its old value is removed,
    a key with another value is changed."""
    new = dict(old)
    for k, v in diff.items():
        if new.get(k) == v:
            del new[k]
        else:
            new[k] = v
    return new
