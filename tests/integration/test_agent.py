"""The agent against real JetStream: fenced reports, recorded rejections,
heartbeats, and dropping its work when declared lost."""

from __future__ import annotations

import asyncio

import pytest

from agents.agent import Agent
from agents.runners import SimulateRunner
from eventstore import Append, EventStore
from eventstore.events import (
    AgentLost,
    BatchAssigned,
    BatchFinished,
    BatchJob,
    JobAssigned,
    JobCancelled,
    JobRequeued,
    JobStarted,
    JobSubmitted,
    ResultRejected,
)


async def assign_one(store: EventStore, agent_id: str, job_id: str, test: str) -> str:
    s = store.subjects
    subject = s.job("v1", "emulator", "acme", job_id)
    seq = await store.append(
        subject,
        JobSubmitted(job_id=job_id, org_id="acme", app_version_id="v1", test=test, target="emulator", run_id="r"),
        expected=0,
    )
    job = BatchJob(job_id=job_id, org_id="acme", test=test, attempt=1, max_retries=0)
    batch = BatchAssigned(
        batch_id=f"bat_{job_id}", agent_id=agent_id, app_version_id="v1", target="emulator", jobs=[job], install=True
    )
    await store.append_many(
        [
            Append(s.batch("v1", "emulator", batch.batch_id), batch, 0),
            Append(subject, JobAssigned(job_id=job_id, batch_id=batch.batch_id, agent_id=agent_id), seq),
        ]
    )
    return subject


async def wait_for(store: EventStore, subject: str, kind: type, timeout: float = 10) -> list:  # type: ignore[type-arg]
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        found = [r.event for r in await store.history(subject) if isinstance(r.event, kind)]
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"no {kind.__name__} on {subject}: {[type(r.event).__name__ for r in await store.history(subject)]}"
    )


async def test_a_late_result_is_rejected_by_the_store_and_recorded(store: EventStore) -> None:
    agent = Agent(
        store, agent_id="emu-1", target="emulator", runner=SimulateRunner(duration_s=0.6, install_s=0.01), lease_s=30
    )
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.sleep(0.3)  # registered and listening
        subject = await assign_one(store, "emu-1", "job_late", "tests/slow.spec.js")
        (started,) = await wait_for(store, subject, JobStarted)
        assert started.agent_id == "emu-1"
        # Meanwhile the scheduler gave the job back (say the lease had expired).
        last = await store.last(subject)
        assert last is not None
        await store.append(subject, JobRequeued(job_id="job_late", reason="lease expired"), expected=last.seq)
        (rejected,) = await wait_for(store, store.subjects.agent("emulator", "emu-1"), ResultRejected)
        assert rejected.job_id == "job_late" and rejected.report == "JobPassed"
        assert "moved on" in rejected.reason
        kinds = [type(r.event).__name__ for r in await store.history(subject)]
        assert kinds == ["JobSubmitted", "JobAssigned", "JobStarted", "JobRequeued"]  # the late pass never landed
        assert agent.rejected == 1
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)


async def test_heartbeats_flow_while_the_agent_lives(store: EventStore) -> None:
    beats: list[bytes] = []

    async def on_beat(msg) -> None:  # type: ignore[no-untyped-def]
        beats.append(msg.data)

    sub = await store.nc.subscribe(store.subjects.heartbeats, cb=on_beat)
    agent = Agent(store, agent_id="dev-1", target="device", runner=SimulateRunner(), lease_s=0.5)
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.sleep(0.6)
        assert len(beats) >= 3  # every lease/5
        assert b'"agent_id":"dev-1"' in beats[0]
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)
        await sub.unsubscribe()
    assert await store.last(store.subjects.job("x", "y", "z", "none")) is None  # heartbeats are not stored


async def test_declared_lost_it_drops_its_batch_and_registers_again(store: EventStore) -> None:
    agent = Agent(
        store, agent_id="emu-2", target="emulator", runner=SimulateRunner(duration_s=5, install_s=0.01), lease_s=30
    )
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.sleep(0.3)
        subject = await assign_one(store, "emu-2", "job_dropped", "tests/long.spec.js")
        await wait_for(store, subject, JobStarted)
        agent_subject = store.subjects.agent("emulator", "emu-2")
        await store.append(agent_subject, AgentLost(agent_id="emu-2", reason="no heartbeat for 31s"))
        deadline = asyncio.get_running_loop().time() + 5
        while asyncio.get_running_loop().time() < deadline:
            kinds = [type(r.event).__name__ for r in await store.history(agent_subject)]
            if kinds[-1:] == ["AgentRegistered"] and "AgentLost" in kinds:
                break
            await asyncio.sleep(0.05)
        assert kinds == ["AgentRegistered", "AgentLost", "AgentRegistered"], kinds
        await asyncio.sleep(0.2)
        assert not agent._tasks  # the 5 s test was abandoned, not finished
        kinds = [type(r.event).__name__ for r in await store.history(subject)]
        assert "JobPassed" not in kinds
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("notice", ["delivered", "lost"])
async def test_cancelling_a_running_job_stops_its_test(store: EventStore, notice: str) -> None:
    """The notice the API sends stops the test at once; with no notice (lost
    to a reconnect), the read-back of running jobs stops it within a heartbeat."""
    job_id = f"job_cancel_{notice}"
    agent = Agent(
        store,
        agent_id=f"emu-{notice}",
        target="emulator",
        runner=SimulateRunner(duration_s=8, install_s=0.01),
        lease_s=30,
        heartbeat_s=0.3 if notice == "lost" else 30,  # with the notice delivered, no read-back can be what stops it
    )
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.sleep(0.3)
        subject = await assign_one(store, f"emu-{notice}", job_id, "tests/long.spec.js")
        await wait_for(store, subject, JobStarted)
        assert job_id in agent._running
        last = await store.last(subject)
        assert last is not None
        if notice == "delivered":  # a notice is only a hint: without JobCancelled stored, the test runs on
            await store.notify_cancelled(f"emu-{notice}", job_id)
            await asyncio.sleep(0.3)
            assert job_id in agent._running
        started = asyncio.get_running_loop().time()
        await store.append(subject, JobCancelled(job_id=job_id), expected=last.seq)
        if notice == "delivered":
            await store.notify_cancelled(f"emu-{notice}", job_id)
        while job_id in agent._running and asyncio.get_running_loop().time() - started < 5:
            await asyncio.sleep(0.02)
        assert job_id not in agent._running
        assert asyncio.get_running_loop().time() - started < 2  # stopped, not run to its 8 s end
        await wait_for(store, store.subjects.batch("v1", "emulator", f"bat_{job_id}"), BatchFinished)
        kinds = [type(r.event).__name__ for r in await store.history(subject)]
        assert kinds == ["JobSubmitted", "JobAssigned", "JobStarted", "JobCancelled"]
        assert agent.rejected == 0 and agent.jobs_run == 0
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)


async def test_each_result_is_stored_before_the_next_job_starts(store: EventStore) -> None:
    """The agent starts the next job while a result is on its way; the stream
    still holds every result before the JobStarted that follows it."""
    s = store.subjects
    ids = [f"job_pipe_{n}" for n in range(12)]
    seqs = []
    for job_id in ids:
        submitted = JobSubmitted(
            job_id=job_id, org_id="acme", app_version_id="v1", test=f"t/{job_id}.spec.js", target="emulator", run_id="r"
        )
        seqs.append(await store.append(s.job("v1", "emulator", "acme", job_id), submitted, expected=0))
    jobs = [BatchJob(job_id=j, org_id="acme", test=f"t/{j}.spec.js", attempt=1, max_retries=0) for j in ids]
    batch = BatchAssigned(
        batch_id="bat_pipe", agent_id="emu-pipe", app_version_id="v1", target="emulator", jobs=jobs, install=True
    )
    appends = [Append(s.batch("v1", "emulator", "bat_pipe"), batch, 0)]
    appends += [
        Append(s.job("v1", "emulator", "acme", j), JobAssigned(job_id=j, batch_id="bat_pipe", agent_id="emu-pipe"), q)
        for j, q in zip(ids, seqs, strict=True)
    ]
    agent = Agent(store, agent_id="emu-pipe", target="emulator", runner=SimulateRunner(duration_s=0, install_s=0))
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.sleep(0.3)
        await store.append_many(appends)
        await wait_for(store, s.batch("v1", "emulator", "bat_pipe"), BatchFinished)
        order = [
            (type(r.event).__name__, r.event.job_id)  # type: ignore[attr-defined]
            async for r in store.read(s.jobs("v1", "emulator"))
            if type(r.event).__name__ in ("JobStarted", "JobPassed", "JobFailed")
        ]
        results = ("JobPassed", "JobFailed")
        assert len(order) == 2 * len(ids), order
        for n, job_id in enumerate(ids):
            assert order[2 * n][0] == "JobStarted" and order[2 * n][1] == job_id, order
            assert order[2 * n + 1][0] in results and order[2 * n + 1][1] == job_id, order
        assert agent.jobs_run == len(ids) and agent.rejected == 0
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)
