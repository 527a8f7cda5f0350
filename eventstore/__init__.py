"""The event store: event types, subject naming and JetStream persistence.

The bottom layer of qgjob. Everything above it appends and reads events
through :class:`eventstore.store.EventStore`.
"""

from typing import TYPE_CHECKING, Any

from eventstore.errors import (
    ConcurrencyConflict,
    EventStoreUnavailable,
    QgjobError,
    StreamConfigConflict,
)
from eventstore.events import Event, decode_event, encode_event

if TYPE_CHECKING:
    from eventstore.store import Append, EventStore, Recorded

_STORE = frozenset({"Append", "EventStore", "Recorded"})


def __getattr__(name: str) -> Any:
    """The store's names, imported on first use: the codec and the errors need no NATS client."""
    if name in _STORE:
        from eventstore import store

        return getattr(store, name)
    raise AttributeError(f"module 'eventstore' has no attribute {name!r}")


__all__ = [
    "Append",
    "ConcurrencyConflict",
    "Event",
    "EventStore",
    "EventStoreUnavailable",
    "QgjobError",
    "Recorded",
    "StreamConfigConflict",
    "decode_event",
    "encode_event",
]
