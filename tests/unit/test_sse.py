"""The event-stream line parser follows the HTML rules for server-sent events."""

from __future__ import annotations

from qgjob.sse import Event, Parser


def parse(text: str, parser: Parser | None = None) -> list[Event]:
    return list((parser or Parser()).parse(text.splitlines()))


def test_fields_comments_and_dispatch() -> None:
    events = parse(
        "retry: 1000\n\n"
        ": keepalive\n\n"
        'id: 7\nevent: job\ndata: {"job_id": "a"}\n\n'
        'event: caught-up\ndata: {"seq": 7}\n\n'
    )
    assert events == [
        Event(event="job", data='{"job_id": "a"}', id="7", retry=1000),
        Event(event="caught-up", data='{"seq": 7}', id="7", retry=1000),  # the last id persists
    ]
    assert events[0].json() == {"job_id": "a"}


def test_messages_without_id_keep_the_last_one() -> None:
    p = Parser()
    events = parse("event: job\ndata: 1\n\nevent: job\ndata: 2\nid: 12\n\nevent: job\ndata: 3\n\n", p)
    assert [(e.data, e.id) for e in events] == [("1", None), ("2", "12"), ("3", "12")]
    assert p.last_event_id == "12"


def test_multiline_data_space_and_colon_rules() -> None:
    events = parse("data:first\ndata:  second\ndata\ndata: a: b\n\n")
    # only one leading space is dropped; a bare field name is an empty value; later colons stay
    assert events == [Event(data="first\n second\n\na: b")]


def test_no_data_no_event_but_id_counts_and_bad_fields_are_ignored() -> None:
    p = Parser(last_event_id="3")
    assert parse("id: 4\n\nretry: soon\nid: 5\0x\nbogus: 1\nevent: job\n\n", p) == []
    assert p.last_event_id == "4"  # an id with NUL is ignored
    assert p.retry is None
    assert parse("data: x\n\n", p) == [Event(data="x", id="4")]


def test_an_unfinished_message_is_not_dispatched() -> None:
    p = Parser()
    assert parse("id: 9\nevent: job\ndata: {}", p) == []
    assert p.last_event_id == "9"
