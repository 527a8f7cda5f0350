"""How each event changes the read models.

Each event type maps to the SQL statements it runs (``statements``), one
argument row per event; the projector runs a batch of events in waves
(``waves``), each statement of a wave once for all its rows (the statements
take one array per argument), which is what lets it keep up with bulk
submissions and many agents reporting at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec

from eventstore import Recorded
from eventstore.events import (
    AgentLost,
    AgentRegistered,
    AgentStopped,
    AppInstalled,
    BatchAssigned,
    BatchFinished,
    Event,
    JobAssigned,
    JobCancelled,
    JobErrored,
    JobFailed,
    JobPassed,
    JobRequeued,
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
    KeysClaimed,
    TokenCreated,
)
from projections.schema import queries

Q = queries()
Statement = tuple[str, tuple[Any, ...]]
Handler = Callable[[Any, int], list[Statement]]
_HANDLERS: dict[type[Event], Handler] = {}


def handles(kind: type[Event]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _HANDLERS[kind] = fn
        return fn

    return register


def statements(rec: Recorded) -> list[Statement]:
    """The statements one recorded event runs; none for events without a projection."""
    handler = _HANDLERS.get(type(rec.event))
    return handler(rec.event, rec.seq) if handler is not None else []


# The rows each statement writes, as (table, number of leading arguments that
# are the row's key). Statements on different rows commute; statements on one
# row must keep their stream order.
_ROWS: dict[str, tuple[str, int]] = {
    **{
        Q[name]: ("jobs", 1)
        for name in (
            "job_submitted",
            "job_assigned",
            "job_started",
            "job_passed",
            "job_failed",
            "job_retry_scheduled",
            "job_requeued",
            "job_cancelled",
            "job_errored",
        )
    },
    **{Q[name]: ("batches", 1) for name in ("batch_assigned", "app_installed", "batch_finished")},
    **{
        Q[name]: ("agents", 1)
        for name in (
            "agent_batch_assigned",
            "agent_app_installed",
            "agent_batch_finished",
            "agent_registered",
            "agent_state",
        )
    },
    Q["keys_claimed"]: ("claim_groups", 3),
    Q["token_created"]: ("tokens", 1),
}


def waves(records: list[Recorded]) -> list[dict[str, list[tuple[Any, ...]]]]:
    """The statements of ``records`` in waves: each wave maps a statement to
    its argument rows, run together; a wave runs after every wave before it.

    A statement goes in the wave after the last one that wrote its row, so
    each row sees its statements in stream order, and no wave writes a row
    twice. Results also add to ``test_durations`` under the job's test, but
    as sums, which commute.
    """
    out: list[dict[str, list[tuple[Any, ...]]]] = []
    last: dict[tuple[Any, ...], int] = {}  # row -> wave of its last statement
    for rec in records:
        for sql, args in statements(rec):
            table, arity = _ROWS[sql]
            row = (table, *args[:arity])
            w = last.get(row, -1) + 1
            last[row] = w
            if w == len(out):
                out.append({})
            out[w].setdefault(sql, []).append(args)
    return out


async def apply_many(conn: asyncpg.Connection, records: list[Recorded]) -> None:
    """Apply events: each row sees its statements in stream order; each wave
    runs each of its statements once, with an array of each argument."""
    for wave in waves(records):
        for sql, rows in wave.items():
            await conn.execute(sql, *map(list, zip(*rows, strict=True)))


@handles(JobSubmitted)
def _job_submitted(e: JobSubmitted, seq: int) -> list[Statement]:
    return [
        (
            Q["job_submitted"],
            (
                e.job_id,
                e.org_id,
                e.app_version_id,
                e.test,
                e.target,
                e.priority,
                e.max_retries,
                e.run_id,
                msgspec.json.encode(e.labels).decode(),
                e.timeout_s,
                e.dedup_key,
                e.at,
                seq,
            ),
        )
    ]


@handles(JobAssigned)
def _job_assigned(e: JobAssigned, seq: int) -> list[Statement]:
    return [
        (
            Q["job_assigned"],
            (
                e.job_id,
                e.agent_id,
                e.batch_id,
                seq,
            ),
        )
    ]


@handles(JobStarted)
def _job_started(e: JobStarted, seq: int) -> list[Statement]:
    return [
        (
            Q["job_started"],
            (
                e.job_id,
                e.attempt,
                e.agent_id,
                e.batch_id,
                e.at,
                seq,
            ),
        )
    ]


@handles(JobPassed)
def _job_passed(e: JobPassed, seq: int) -> list[Statement]:
    return [
        (
            Q["job_passed"],
            (
                e.job_id,
                e.duration_ms,
                e.at,
                seq,
                e.log_tail or None,
            ),
        )
    ]


@handles(JobFailed)
def _job_failed(e: JobFailed, seq: int) -> list[Statement]:
    return [
        (
            Q["job_failed"],
            (
                e.job_id,
                e.final,
                e.duration_ms,
                e.error,
                e.at,
                seq,
                e.log_tail or None,
            ),
        )
    ]


@handles(JobRetryScheduled)
def _job_retry(e: JobRetryScheduled, seq: int) -> list[Statement]:
    return [
        (
            Q["job_retry_scheduled"],
            (
                e.job_id,
                seq,
            ),
        )
    ]


@handles(JobRequeued)
def _job_requeued(e: JobRequeued, seq: int) -> list[Statement]:
    return [
        (
            Q["job_requeued"],
            (
                e.job_id,
                seq,
            ),
        )
    ]


@handles(JobCancelled)
def _job_cancelled(e: JobCancelled, seq: int) -> list[Statement]:
    return [
        (
            Q["job_cancelled"],
            (
                e.job_id,
                e.at,
                e.reason,
                seq,
            ),
        )
    ]


@handles(JobErrored)
def _job_errored(e: JobErrored, seq: int) -> list[Statement]:
    return [
        (
            Q["job_errored"],
            (
                e.job_id,
                e.at,
                e.error,
                seq,
            ),
        )
    ]


@handles(BatchAssigned)
def _batch_assigned(e: BatchAssigned, seq: int) -> list[Statement]:
    return [
        (
            Q["batch_assigned"],
            (
                e.batch_id,
                e.agent_id,
                e.app_version_id,
                e.target,
                len(e.jobs),
                e.install,
                e.at,
                seq,
            ),
        ),
        (
            Q["agent_batch_assigned"],
            (
                e.agent_id,
                e.batch_id,
                e.at,
                seq,
            ),
        ),
    ]


@handles(AppInstalled)
def _app_installed(e: AppInstalled, seq: int) -> list[Statement]:
    return [
        (
            Q["app_installed"],
            (
                e.batch_id,
                seq,
            ),
        ),
        (
            Q["agent_app_installed"],
            (
                e.agent_id,
                e.app_version_id,
                e.at,
                seq,
            ),
        ),
    ]


@handles(BatchFinished)
def _batch_finished(e: BatchFinished, seq: int) -> list[Statement]:
    return [
        (
            Q["batch_finished"],
            (
                e.batch_id,
                e.at,
                seq,
            ),
        ),
        (
            Q["agent_batch_finished"],
            (
                e.agent_id,
                e.at,
                seq,
                e.batch_id,
            ),
        ),
    ]


@handles(AgentRegistered)
def _agent_registered(e: AgentRegistered, seq: int) -> list[Statement]:
    return [
        (
            Q["agent_registered"],
            (
                e.agent_id,
                e.target,
                e.slots,
                e.name,
                e.runner,
                e.at,
                seq,
            ),
        )
    ]


@handles(AgentStopped)
def _agent_stopped(e: AgentStopped, seq: int) -> list[Statement]:
    return [
        (
            Q["agent_state"],
            (
                e.agent_id,
                "stopped",
                e.at,
                seq,
            ),
        )
    ]


@handles(AgentLost)
def _agent_lost(e: AgentLost, seq: int) -> list[Statement]:
    return [
        (
            Q["agent_state"],
            (
                e.agent_id,
                "lost",
                e.at,
                seq,
            ),
        )
    ]


@handles(KeysClaimed)
def _keys_claimed(e: KeysClaimed, seq: int) -> list[Statement]:
    return [
        (
            Q["keys_claimed"],
            (
                e.org_id,
                e.app_version_id,
                e.target,
                seq,
            ),
        )
    ]


@handles(TokenCreated)
def _token_created(e: TokenCreated, seq: int) -> list[Statement]:
    return [
        (
            Q["token_created"],
            (
                e.token_id,
                e.org_id,
                e.admin,
                e.sha256,
                e.at,
                seq,
            ),
        )
    ]
