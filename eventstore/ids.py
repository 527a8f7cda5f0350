"""Server-generated identifiers: time-sortable, URL-safe, prefixed by kind.

An id is ``<prefix>_`` followed by 26 characters of Crockford's base32
alphabet (lower case) spelling 128 bits: 48 bits of milliseconds since the
epoch, then 80 random bits. The alphabet is in ASCII order, so ids sort by
creation time.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits -> two characters
_SHIFTS = range(120, -1, -10)
_CHARS = frozenset(_ALPHABET)


def new_id(prefix: str, *, now_ms: int | None = None) -> str:
    """A new id such as ``job_01jd3x...``; ``now_ms`` is for tests."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{prefix}_{_spell(ms, os.urandom(10))}"


def _spell(ms: int, rand: bytes) -> str:
    """The 26 characters of 48 bits of ``ms`` and 80 of ``rand``: base32 of
    the 128 bits and two zero bits, two characters per lookup."""
    bits = ((ms & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(rand, "big")) << 2
    return "".join([_PAIRS[bits >> shift & 1023] for shift in _SHIFTS])


def is_id(value: str, prefix: str) -> bool:
    """Whether ``value`` has the shape of an id of this kind."""
    head, sep, body = value.partition("_")
    return sep == "_" and head == prefix and len(body) == 26 and _CHARS.issuperset(body)
