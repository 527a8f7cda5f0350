"""The root of qgjob's exceptions and the event store's own.

Each subclass's docstring is its default message.
"""

from __future__ import annotations


class QgjobError(Exception):
    """Something went wrong in qgjob."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class EventStoreUnavailable(QgjobError):
    """The event store (NATS JetStream) could not be reached."""


class StreamConfigConflict(QgjobError):
    """The existing stream's configuration conflicts with the one asked for."""


class ConcurrencyConflict(QgjobError):
    """An append was rejected: the subject moved past the expected sequence."""

    def __init__(self, message: str | None = None, *, subject: str | None = None) -> None:
        super().__init__(message)
        self.subject = subject


class AppendRejected(QgjobError):
    """JetStream rejected an append."""

    def __init__(self, message: str | None = None, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
