"""Server-sent events: a line parser (the WHATWG event-stream rules) and a
streaming reader over httpx that remembers the last event id for resuming."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from eventstore.errors import QgjobError


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched message. ``id`` is the last event id in force when it came."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        return msgspec.json.decode(self.data)


class Parser:
    """Turns event-stream lines into :class:`Event` objects.

    Follows the HTML event-stream interpretation: ``field: value`` lines (one
    leading space of the value dropped), ``:`` comments ignored, several
    ``data`` lines joined with newlines, a blank line dispatches, a message
    without data is not dispatched (but its ``id`` still counts), an ``id``
    containing NUL is ignored, ``retry`` only when all digits. The last event
    id persists across messages, as a browser's ``EventSource`` keeps it.
    """

    def __init__(self, last_event_id: str | None = None) -> None:
        self.last_event_id = last_event_id
        self.retry: int | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        """One line without its terminator; returns an event when a blank line ends one."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return Event(event=event or "message", data="\n".join(data), id=self.last_event_id, retry=self.retry)

    def parse(self, lines: Iterable[str]) -> Iterator[Event]:
        for line in lines:
            event = self.feed(line)
            if event is not None:
                yield event


class StreamUnavailable(QgjobError):
    """The event stream could not be opened or broke off."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def stream(
    http: httpx.Client,
    path: str,
    *,
    params: list[tuple[str, str]] | None = None,
    parser: Parser | None = None,
    read_timeout: float | None = None,
) -> Iterator[Event]:
    """Events from ``GET path`` as they arrive; resumes after ``parser.last_event_id``.

    Raises :class:`StreamUnavailable` when the server answers anything but
    ``200 text/event-stream`` (``status`` says what), when the connection
    fails or breaks, and when it ends. ``httpx.ReadTimeout`` passes through
    unchanged, so a caller can tell "nothing came for ``read_timeout``
    seconds" from a broken stream.
    """
    parser = parser or Parser()
    headers = {"accept": "text/event-stream", "cache-control": "no-cache"}
    if parser.last_event_id:
        headers["last-event-id"] = parser.last_event_id
    timeout = httpx.Timeout(10.0, read=read_timeout)
    try:
        with http.stream("GET", path, params=params, headers=headers, timeout=timeout) as response:
            kind = response.headers.get("content-type", "")
            if response.status_code != 200 or not kind.startswith("text/event-stream"):
                response.read()
                raise StreamUnavailable(
                    f"GET {path} answered HTTP {response.status_code} ({kind or 'no content type'})",
                    status=response.status_code,
                )
            yield from parser.parse(response.iter_lines())
    except httpx.ReadTimeout:
        raise
    except httpx.TransportError as exc:
        raise StreamUnavailable(f"the event stream broke: {exc}") from exc
    raise StreamUnavailable("the server ended the event stream", status=200)
