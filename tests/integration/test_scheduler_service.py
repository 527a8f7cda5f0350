"""The scheduler service on real JetStream: a pending retry survives a
restart, because the retry's time is an event in the stream."""

from __future__ import annotations

import asyncio

from eventstore import EventStore
from eventstore.events import (
    AgentRegistered,
    BatchFinished,
    JobAssigned,
    JobFailed,
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
)
from scheduler import policy
from scheduler.service import SchedulerService


async def events_of(store: EventStore, subject: str, kind: type) -> list:  # type: ignore[type-arg]
    return [r for r in await store.history(subject) if isinstance(r.event, kind)]


async def wait_for(store: EventStore, subject: str, kind: type, count: int, timeout: float) -> list:  # type: ignore[type-arg]
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        found = await events_of(store, subject, kind)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} x {kind.__name__} did not come")


async def test_a_restarted_scheduler_keeps_a_pending_retry(store: EventStore) -> None:
    s = store.subjects
    config = policy.Config(retry_backoff_s=2.0)
    first = SchedulerService(store, config, tick_s=0.1, lease_s=120)
    running = asyncio.create_task(first.run())
    await store.append(s.agent("emulator", "emu-1"), AgentRegistered(agent_id="emu-1", target="emulator"))
    subject = s.job("v1", "emulator", "acme", "job_r")
    await store.append(
        subject,
        JobSubmitted(
            job_id="job_r", org_id="acme", app_version_id="v1", test="t.spec.js", target="emulator", run_id="r"
        ),
        expected=0,
    )
    (assigned,) = await wait_for(store, subject, JobAssigned, 1, 10)
    batch_id = assigned.event.batch_id
    seq = await store.append(
        subject, JobStarted(job_id="job_r", batch_id=batch_id, agent_id="emu-1", attempt=1), expected=assigned.seq
    )
    await store.append(
        subject,
        JobFailed(
            job_id="job_r", batch_id=batch_id, agent_id="emu-1", attempt=1, duration_ms=5, error="x", final=False
        ),
        expected=seq,
    )
    (retry,) = await wait_for(store, subject, JobRetryScheduled, 1, 10)
    not_before = retry.event.not_before
    assert 1.0 <= (not_before - retry.event.at).total_seconds() < 3.0  # 2 s with jitter
    first.stop()
    await asyncio.wait_for(running, 10)  # the scheduler is gone before the retry is due
    await store.append(s.batch("v1", "emulator", batch_id), BatchFinished(batch_id=batch_id, agent_id="emu-1"))

    second = SchedulerService(store, config, tick_s=0.1, lease_s=120)
    running = asyncio.create_task(second.run())
    try:
        assignments = await wait_for(store, subject, JobAssigned, 2, 10)
        again = assignments[1]
        assert again.time is not None and again.time >= not_before  # not before the backoff ran out
        assert (again.time - not_before).total_seconds() < 2  # and soon after it
        assert second.state.jobs["job_r"].attempts == 1
    finally:
        second.stop()
        await asyncio.wait_for(running, 10)
