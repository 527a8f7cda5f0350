"""How each event changes the read models: ``apply(conn, recorded)``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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
Handler = Callable[[asyncpg.Connection, Any, int], Awaitable[None]]
_HANDLERS: dict[type[Event], Handler] = {}


def handles(kind: type[Event]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _HANDLERS[kind] = fn
        return fn

    return register


async def apply(conn: asyncpg.Connection, rec: Recorded) -> None:
    """Apply one recorded event; events without a projection are ignored."""
    handler = _HANDLERS.get(type(rec.event))
    if handler is not None:
        await handler(conn, rec.event, rec.seq)


@handles(JobSubmitted)
async def _job_submitted(conn: asyncpg.Connection, e: JobSubmitted, seq: int) -> None:
    await conn.execute(
        Q["job_submitted"],
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
    )


@handles(JobAssigned)
async def _job_assigned(conn: asyncpg.Connection, e: JobAssigned, seq: int) -> None:
    await conn.execute(Q["job_assigned"], e.job_id, e.agent_id, e.batch_id, seq)


@handles(JobStarted)
async def _job_started(conn: asyncpg.Connection, e: JobStarted, seq: int) -> None:
    await conn.execute(Q["job_started"], e.job_id, e.attempt, e.agent_id, e.batch_id, e.at, seq)


@handles(JobPassed)
async def _job_passed(conn: asyncpg.Connection, e: JobPassed, seq: int) -> None:
    await conn.execute(Q["job_passed"], e.job_id, e.attempt, e.duration_ms, e.at, seq)


@handles(JobFailed)
async def _job_failed(conn: asyncpg.Connection, e: JobFailed, seq: int) -> None:
    await conn.execute(Q["job_failed"], e.job_id, e.final, e.duration_ms, e.error, e.at, seq)


@handles(JobRetryScheduled)
async def _job_retry(conn: asyncpg.Connection, e: JobRetryScheduled, seq: int) -> None:
    await conn.execute(Q["job_retry_scheduled"], e.job_id, seq)


@handles(JobRequeued)
async def _job_requeued(conn: asyncpg.Connection, e: JobRequeued, seq: int) -> None:
    await conn.execute(Q["job_requeued"], e.job_id, seq)


@handles(JobCancelled)
async def _job_cancelled(conn: asyncpg.Connection, e: JobCancelled, seq: int) -> None:
    await conn.execute(Q["job_cancelled"], e.job_id, e.at, e.reason, seq)


@handles(JobErrored)
async def _job_errored(conn: asyncpg.Connection, e: JobErrored, seq: int) -> None:
    await conn.execute(Q["job_errored"], e.job_id, e.at, e.error, seq)


@handles(BatchAssigned)
async def _batch_assigned(conn: asyncpg.Connection, e: BatchAssigned, seq: int) -> None:
    await conn.execute(
        Q["batch_assigned"], e.batch_id, e.agent_id, e.app_version_id, e.target, len(e.jobs), e.install, e.at, seq
    )
    await conn.execute(Q["agent_batch_assigned"], e.agent_id, e.batch_id, e.at, seq)


@handles(AppInstalled)
async def _app_installed(conn: asyncpg.Connection, e: AppInstalled, seq: int) -> None:
    await conn.execute(Q["app_installed"], e.batch_id, seq)
    await conn.execute(Q["agent_app_installed"], e.agent_id, e.app_version_id, e.at, seq)


@handles(BatchFinished)
async def _batch_finished(conn: asyncpg.Connection, e: BatchFinished, seq: int) -> None:
    await conn.execute(Q["batch_finished"], e.batch_id, e.at, seq)
    await conn.execute(Q["agent_batch_finished"], e.agent_id, e.at, seq, e.batch_id)


@handles(AgentRegistered)
async def _agent_registered(conn: asyncpg.Connection, e: AgentRegistered, seq: int) -> None:
    await conn.execute(Q["agent_registered"], e.agent_id, e.target, e.slots, e.name, e.runner, e.at, seq)


@handles(AgentStopped)
async def _agent_stopped(conn: asyncpg.Connection, e: AgentStopped, seq: int) -> None:
    await conn.execute(Q["agent_state"], e.agent_id, "stopped", e.at, seq)


@handles(AgentLost)
async def _agent_lost(conn: asyncpg.Connection, e: AgentLost, seq: int) -> None:
    await conn.execute(Q["agent_state"], e.agent_id, "lost", e.at, seq)


@handles(KeysClaimed)
async def _keys_claimed(conn: asyncpg.Connection, e: KeysClaimed, seq: int) -> None:
    await conn.execute(Q["keys_claimed"], e.org_id, e.app_version_id, e.target, seq)


@handles(TokenCreated)
async def _token_created(conn: asyncpg.Connection, e: TokenCreated, seq: int) -> None:
    await conn.execute(Q["token_created"], e.token_id, e.org_id, e.admin, e.sha256, e.at, seq)
