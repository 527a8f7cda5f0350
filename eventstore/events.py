"""Every event qgjob records: frozen, tagged msgspec Structs in one union.

Payloads are JSON and self-describing: ``type`` (the class name), ``event_id``
(also the ``Nats-Msg-Id``, so appends are idempotent), ``at`` (UTC), the schema
version ``v`` and the ids the event concerns. Unknown fields are ignored on
decode so older readers tolerate newer writers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from eventstore.ids import new_id

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    """The fields every event carries."""

    event_id: str = msgspec.field(default_factory=lambda: new_id("evt"))
    at: datetime = msgspec.field(default_factory=utcnow)
    v: int = SCHEMA_VERSION


# --- jobs -----------------------------------------------------------------


class JobSubmitted(Event, frozen=True, kw_only=True):
    job_id: str
    org_id: str
    app_version_id: str
    test: str
    target: str
    priority: int = 5
    max_retries: int = 3
    run_id: str
    labels: dict[str, str] = {}
    timeout_s: float | None = None
    dedup_key: str = ""


class JobAssigned(Event, frozen=True, kw_only=True):
    job_id: str
    batch_id: str
    agent_id: str


class JobStarted(Event, frozen=True, kw_only=True):
    job_id: str
    batch_id: str
    agent_id: str
    attempt: int


class JobPassed(Event, frozen=True, kw_only=True):
    job_id: str
    batch_id: str
    agent_id: str
    attempt: int
    duration_ms: int
    dedup_key: str = ""
    log_tail: str = ""  # the end of the attempt's output; the whole log is in the log store


class JobFailed(Event, frozen=True, kw_only=True):
    """One failed attempt; ``final`` when the retry budget is spent."""

    job_id: str
    batch_id: str
    agent_id: str
    attempt: int
    duration_ms: int
    error: str
    final: bool
    dedup_key: str = ""
    log_tail: str = ""


class JobRetryScheduled(Event, frozen=True, kw_only=True):
    job_id: str
    attempt: int
    not_before: datetime


class JobRequeued(Event, frozen=True, kw_only=True):
    """Back to the queue for an infrastructure reason; no retry is used."""

    job_id: str
    reason: str


class JobCancelled(Event, frozen=True, kw_only=True):
    job_id: str
    reason: str = "cancelled by request"
    dedup_key: str = ""


class JobErrored(Event, frozen=True, kw_only=True):
    job_id: str
    error: str
    dedup_key: str = ""


# --- batches and agents -----------------------------------------------------


class BatchJob(msgspec.Struct, frozen=True, kw_only=True):
    """What an agent needs to run one job of a batch."""

    job_id: str
    org_id: str
    test: str
    attempt: int
    max_retries: int
    timeout_s: float | None = None
    dedup_key: str = ""
    failures: int = 0  # failed attempts so far; infrastructure requeues do not count


class BatchAssigned(Event, frozen=True, kw_only=True):
    batch_id: str
    agent_id: str
    app_version_id: str
    target: str
    jobs: list[BatchJob]
    install: bool


class AppInstalled(Event, frozen=True, kw_only=True):
    batch_id: str
    agent_id: str
    app_version_id: str
    target: str
    duration_ms: int


class BatchFinished(Event, frozen=True, kw_only=True):
    batch_id: str
    agent_id: str


class AgentRegistered(Event, frozen=True, kw_only=True):
    agent_id: str
    target: str
    slots: int = 1
    name: str = ""
    runner: str = "simulate"


class AgentStopped(Event, frozen=True, kw_only=True):
    agent_id: str


class AgentLost(Event, frozen=True, kw_only=True):
    agent_id: str
    reason: str = "lease expired"


class ResultRejected(Event, frozen=True, kw_only=True):
    """An agent's report the event store refused: the job had moved on
    (cancelled, or requeued after the agent's lease expired)."""

    agent_id: str
    job_id: str
    batch_id: str
    report: str  # the event type that was refused
    reason: str


# --- dedup keys and tokens ----------------------------------------------------


class KeysClaimed(Event, frozen=True, kw_only=True):
    """New jobs of one (org, app version, target) claiming their dedup keys.

    Appended last in the submission's atomic batch, fenced by the claim
    subject's last sequence: two racing submissions of the same group cannot
    both pass their dedup check.
    """

    org_id: str
    app_version_id: str
    target: str
    keys: list[str]
    job_ids: list[str]


class SubmissionRecorded(Event, frozen=True, kw_only=True):
    """The answer to a submit request with an ``Idempotency-Key``: which job
    each item of the request became, and whether it was a duplicate."""

    key: str
    org_id: str
    run_id: str
    job_ids: list[str]
    duplicate: list[bool]


class TokenCreated(Event, frozen=True, kw_only=True):
    token_id: str
    org_id: str | None
    admin: bool
    sha256: str


AnyEvent = (
    JobSubmitted
    | JobAssigned
    | JobStarted
    | JobPassed
    | JobFailed
    | JobRetryScheduled
    | JobRequeued
    | JobCancelled
    | JobErrored
    | BatchAssigned
    | AppInstalled
    | BatchFinished
    | AgentRegistered
    | AgentStopped
    | AgentLost
    | ResultRejected
    | KeysClaimed
    | SubmissionRecorded
    | TokenCreated
)


class Unreadable(Event, frozen=True, kw_only=True):
    """Stands in for a stored event this version cannot decode (a newer type);
    readers skip it but still see its sequence."""

    reason: str = ""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in AnyEvent.__args__  # type: ignore[attr-defined]
}

TERMINAL_EVENTS = (JobPassed, JobCancelled, JobErrored)

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(AnyEvent)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> Event:
    """Decode one event; raises ``msgspec.ValidationError`` for an unknown type."""
    event: Event = _decoder.decode(data)
    return event


def is_terminal(event: Event) -> bool:
    """Whether this event ends its job."""
    if isinstance(event, JobFailed):
        return event.final
    return isinstance(event, TERMINAL_EVENTS)
