"""The event store: event types, subject naming and JetStream persistence.

The bottom layer of qgjob. Everything above it appends and reads events
through :class:`eventstore.store.EventStore`.
"""

from eventstore.errors import (
    ConcurrencyConflict,
    EventStoreUnavailable,
    QgjobError,
    StreamConfigConflict,
)
from eventstore.events import Event, decode_event, encode_event
from eventstore.store import Append, EventStore, Recorded

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
