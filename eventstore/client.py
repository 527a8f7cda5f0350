"""The NATS client the event store connects with: nats-py's, parsing headers faster.

Every stored event carries the headers of its append (``Nats-Msg-Id``, the
expected sequence, an atomic batch's id and sequence), and every consumer gets
them back with each delivery. nats-py checks each header name for white space
one character at a time in a generator, which costs a consumer more than
decoding the event itself; :func:`parse_header_lines` gives the same dict with
one ``str.split``. ``tests/unit/test_client.py`` checks it against nats-py's
own on arbitrary header blocks, and that nats-py still has the method.
"""

from __future__ import annotations

import nats.aio.client

_CRLF = b"\r\n"


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """``Name: Value`` lines as nats-py's ``Client._parse_header_lines`` reads them."""
    out: dict[str, str] = {}
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue  # a name that is not ASCII: skipped, as nats-py does
        if key and key.split() != [key]:
            continue  # white space inside the name: not a header
        out[key] = value.strip().decode("utf-8", "replace")
    return out


class Client(nats.aio.client.Client):
    _parse_header_lines = staticmethod(parse_header_lines)
