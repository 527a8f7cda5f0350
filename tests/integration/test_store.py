"""The event store against a real JetStream: conflicts, atomic appends,
history and subscriptions."""

from __future__ import annotations

import asyncio

import nats.js.errors
import pytest
from nats.js.api import StorageType, StreamConfig

from eventstore import Append, ConcurrencyConflict, EventStore, StreamConfigConflict
from eventstore.events import JobAssigned, JobCancelled, JobStarted, JobSubmitted


def submitted(job_id: str, app: str = "v1.2.3", target: str = "emulator") -> JobSubmitted:
    return JobSubmitted(job_id=job_id, org_id="acme", app_version_id=app, test="t.spec.js", target=target, run_id="r")


async def test_append_fences_on_the_subjects_last_sequence(store: EventStore) -> None:
    subject = store.subjects.job("v1.2.3", "emulator", "acme", "job_1")
    first = await store.append(subject, submitted("job_1"), expected=0)
    with pytest.raises(ConcurrencyConflict):
        await store.append(subject, JobCancelled(job_id="job_1"), expected=0)
    second = await store.append(subject, JobAssigned(job_id="job_1", batch_id="b", agent_id="a"), expected=first)
    assert second > first
    with pytest.raises(ConcurrencyConflict):  # a stale writer still holding `first`
        await store.append(subject, JobStarted(job_id="job_1", batch_id="b", agent_id="a", attempt=1), expected=first)
    assert [type(r.event).__name__ for r in await store.history(subject)] == ["JobSubmitted", "JobAssigned"]


async def test_a_retried_append_is_idempotent(store: EventStore) -> None:
    subject = store.subjects.job("v1", "device", "acme", "job_2")
    event = submitted("job_2", "v1", "device")
    seq = await store.append(subject, event, expected=0)
    assert await store.append(subject, event, expected=0) == seq  # same event id: same answer
    assert await store.append(subject, event) == seq  # the duplicate window, no fencing
    assert len(await store.history(subject)) == 1


async def test_append_many_is_all_or_nothing(store: EventStore) -> None:
    taken = store.subjects.job("v1", "emulator", "acme", "taken")
    await store.append(taken, submitted("taken", "v1"), expected=0)
    before = await store.last_seq()
    batch = [
        Append(store.subjects.job("v1", "emulator", "acme", f"j{i}"), submitted(f"j{i}", "v1"), 0) for i in range(5)
    ]
    batch.append(Append(taken, submitted("taken-again", "v1"), 0))  # conflicts
    with pytest.raises(ConcurrencyConflict):
        await store.append_many(batch)
    assert await store.last_seq() == before
    for i in range(5):
        assert await store.last(store.subjects.job("v1", "emulator", "acme", f"j{i}")) is None
    last = await store.append_many(batch[:-1])
    assert last == before + 5


async def test_append_many_takes_more_than_a_thousand_events(store: EventStore) -> None:
    batch = [
        Append(store.subjects.job("big", "device", "o", f"j{i}"), submitted(f"j{i}", "big", "device"), 0)
        for i in range(2500)
    ]
    last = await store.append_many(batch)
    assert last == await store.last_seq() == 2500
    seqs = [r.seq async for r in store.read(store.subjects.jobs(app_version_id="big"))]
    assert seqs == list(range(1, 2501))


async def test_subscribe_from_a_sequence_then_live(store: EventStore) -> None:
    for i in range(5):
        await store.append(store.subjects.job("v", "emulator", "o", f"s{i}"), submitted(f"s{i}", "v"))
    got: list[int] = []

    async def consume() -> None:
        async for rec in store.subscribe(from_seq=3):
            got.append(rec.seq)
            if len(got) == 4:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    await store.append(store.subjects.job("v", "emulator", "o", "live"), submitted("live", "v"))
    await asyncio.wait_for(task, 5)
    assert got == [3, 4, 5, 6]


async def test_filters_follow_the_subject_map(store: EventStore) -> None:
    await store.append(store.subjects.job("build 42/rc", "emulator", "acme", "a"), submitted("a", "build 42/rc"))
    await store.append(
        store.subjects.job("build 42/rc", "device", "acme", "b"), submitted("b", "build 42/rc", "device")
    )
    await store.append(store.subjects.job("v2", "emulator", "acme", "c"), submitted("c", "v2"))
    group = [r.event.job_id async for r in store.read(store.subjects.jobs("build 42/rc", "emulator"))]  # type: ignore[attr-defined]
    assert group == ["a"]
    assert store.subjects.jobs("build 42/rc", "emulator").split(".")[2] == "build%2042/rc"


async def test_ensure_stream_is_idempotent_and_updates(store: EventStore) -> None:
    before = await store.ensure_stream()
    again = await store.ensure_stream()
    assert again.config.subjects == before.config.subjects == [store.subjects.all]
    assert again.config.allow_atomic and again.config.allow_msg_schedules
    bounded = await store.ensure_stream(max_age=3600)
    assert bounded.config.max_age == 3600


async def test_ensure_stream_refuses_what_cannot_change(nats_url: str) -> None:
    store = await EventStore.connect(nats_url, stream="MEMSTREAM", prefix="memx")
    try:
        await store.js.add_stream(StreamConfig(name="MEMSTREAM", subjects=["memx.>"], storage=StorageType.MEMORY))
        with pytest.raises(StreamConfigConflict, match="storage"):
            await store.ensure_stream()
    finally:
        try:
            await store.js.delete_stream("MEMSTREAM")
        except nats.js.errors.NotFoundError:
            pass
        await store.close()
