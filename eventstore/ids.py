"""Server-generated identifiers: time-sortable, URL-safe, prefixed by kind.

An id is ``<prefix>_`` followed by 26 characters of Crockford's base32
alphabet (lower case) spelling 128 bits: 48 bits of milliseconds since the
epoch, then 80 random bits. The alphabet is in ASCII order, so ids sort by
creation time.
"""

from __future__ import annotations

import base64
import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_FROM_RFC4648 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())
_CHARS = frozenset(_ALPHABET)


def new_id(prefix: str, *, now_ms: int | None = None) -> str:
    """A new id such as ``job_01jd3x...``; ``now_ms`` is for tests."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    raw = (ms & 0xFFFF_FFFF_FFFF).to_bytes(6, "big") + os.urandom(10)
    return f"{prefix}_{base64.b32encode(raw)[:26].translate(_FROM_RFC4648).decode()}"


def is_id(value: str, prefix: str) -> bool:
    """Whether ``value`` has the shape of an id of this kind."""
    head, sep, body = value.partition("_")
    return sep == "_" and head == prefix and len(body) == 26 and _CHARS.issuperset(body)
