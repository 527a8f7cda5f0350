"""The projector's waves: each row keeps its statements in stream order and
no wave writes a row twice, however the events of many jobs interleave."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore import Recorded
from eventstore.events import (
    AgentLost,
    AgentRegistered,
    AppInstalled,
    BatchAssigned,
    BatchFinished,
    Event,
    JobAssigned,
    JobCancelled,
    JobFailed,
    JobPassed,
    JobRequeued,
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
)
from projections.apply import _ROWS, statements, waves

JOBS = ["job_a", "job_b", "job_c", "job_d"]
AGENTS = ["emu-1", "emu-2"]
BATCHES = ["bat_1", "bat_2", "bat_3"]
AT = datetime(2026, 12, 1, tzinfo=UTC)


def _job(job_id: str, kind: int, n: int) -> Event:
    common = {"job_id": job_id, "batch_id": BATCHES[n % 3], "agent_id": AGENTS[n % 2]}
    return [
        JobSubmitted(
            job_id=job_id,
            org_id="acme",
            app_version_id="v1",
            test=f"t/{n % 2}.spec.js",
            target="emulator",
            run_id="run-1",
        ),
        JobAssigned(**common),
        JobStarted(**common, attempt=1),
        JobPassed(**common, attempt=1, duration_ms=n),
        JobFailed(**common, attempt=1, duration_ms=n, error="boom", final=n % 2 == 0),
        JobRetryScheduled(job_id=job_id, attempt=2, not_before=AT),
        JobRequeued(job_id=job_id, reason="agent lost"),
        JobCancelled(job_id=job_id),
    ][kind]


def _other(kind: int, n: int) -> Event:
    agent, batch = AGENTS[n % 2], BATCHES[n % 3]
    return [
        AgentRegistered(agent_id=agent, target="emulator"),
        BatchAssigned(batch_id=batch, agent_id=agent, app_version_id="v1", target="emulator", jobs=[], install=True),
        AppInstalled(batch_id=batch, agent_id=agent, app_version_id="v1", target="emulator", duration_ms=n),
        BatchFinished(batch_id=batch, agent_id=agent),
        AgentLost(agent_id=agent, reason="silent"),
    ][kind]


events = st.one_of(
    st.builds(_job, st.sampled_from(JOBS), st.integers(0, 7), st.integers(0, 50)),
    st.builds(_other, st.integers(0, 4), st.integers(0, 50)),
)


def _row(sql: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    table, arity = _ROWS[sql]
    return (table, *args[:arity])


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=60))
def test_each_row_keeps_stream_order_and_no_wave_writes_a_row_twice(history: list[Event]) -> None:
    records = [Recorded(seq=n, subject="x", event=e) for n, e in enumerate(history, start=1)]
    in_stream = [s for rec in records for s in statements(rec)]
    out = waves(records)
    in_waves = [(sql, args) for wave in out for sql, rows in wave.items() for args in rows]
    assert sorted(map(repr, in_waves)) == sorted(map(repr, in_stream))  # each statement once
    for row in {_row(*s) for s in in_stream}:
        assert [s for s in in_waves if _row(*s) == row] == [s for s in in_stream if _row(*s) == row]
    for wave in out:  # one statement runs all of a wave's rows of its kind: each row once
        rows = [_row(sql, args) for sql, many in wave.items() for args in many]
        assert len(rows) == len(set(rows))


def test_the_jobs_of_a_burst_share_waves() -> None:
    """Four jobs each submitted, assigned, started and passed, one after the
    other: four waves of one statement for all four jobs, not sixteen runs."""
    history: list[Event] = []
    for n, job_id in enumerate(JOBS):
        history += [_job(job_id, kind, n) for kind in range(4)]
    out = waves([Recorded(seq=n, subject="x", event=e) for n, e in enumerate(history, start=1)])
    assert [[len(rows) for rows in wave.values()] for wave in out] == [[4], [4], [4], [4]]
