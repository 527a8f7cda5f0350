"""The event store's NATS client reads headers exactly as nats-py does (pure, no servers)."""

from __future__ import annotations

import nats.aio.client
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.client import Client, parse_header_lines

_pieces = st.sampled_from(
    [b"Nats-Msg-Id", b"Nats-Expected-Last-Subject-Sequence", b"a", b"", b" ", b"\t", b"\x1c", b"\x85", b"\xc3\xa9"]
)
_names = st.lists(st.one_of(_pieces, st.binary(max_size=4)), max_size=4).map(b"".join)
_values = st.one_of(st.binary(max_size=12), st.sampled_from([b" evt_01", b"\t42 ", b"\xff\xfe", b": x"]))
_lines = st.one_of(
    st.tuples(_names, st.sampled_from([b":", b": ", b":\t"]), _values).map(b"".join),
    st.binary(max_size=10),
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(_lines, max_size=6).map(b"\r\n".join))
def test_headers_parse_as_nats_py_parses_them(raw: bytes) -> None:
    assert parse_header_lines(raw) == nats.aio.client.Client._parse_header_lines(raw)


def test_a_stored_events_headers() -> None:
    raw = b"Nats-Msg-Id: evt_01jd3x\r\nNats-Expected-Last-Subject-Sequence: 7\r\nBad Name: x\r\n\r\n"
    assert parse_header_lines(raw) == {"Nats-Msg-Id": "evt_01jd3x", "Nats-Expected-Last-Subject-Sequence": "7"}


def test_the_client_replaces_a_method_nats_py_still_has() -> None:
    assert "_parse_header_lines" in vars(nats.aio.client.Client)
    assert Client._parse_header_lines is parse_header_lines
