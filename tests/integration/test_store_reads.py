"""Reads the audit trail relies on, against a real JetStream: one consumer over
several filter subjects, and the last sequence stored at or before a time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from nats.aio.msg import Msg

from eventstore import EventStore, Recorded
from eventstore.client import Client
from eventstore.events import JobCancelled, JobSubmitted


def submitted(job_id: str, app: str) -> JobSubmitted:
    return JobSubmitted(
        job_id=job_id, org_id="acme", app_version_id=app, test="t.spec.js", target="emulator", run_id="r"
    )


async def test_a_read_over_several_subjects_merges_them_in_stream_order(store: EventStore) -> None:
    subjects = {n: store.subjects.job("v1", "emulator", "acme", f"j{n}") for n in range(4)}
    for n, subject in subjects.items():
        await store.append(subject, submitted(f"j{n}", "v1"))
    for n in (2, 0):
        await store.append(subjects[n], JobCancelled(job_id=f"j{n}"))

    got = [rec async for rec in store.read([subjects[0], subjects[2]])]
    assert [(getattr(r.event, "job_id", None), type(r.event).__name__) for r in got] == [
        ("j0", "JobSubmitted"),
        ("j2", "JobSubmitted"),
        ("j2", "JobCancelled"),
        ("j0", "JobCancelled"),
    ]
    assert [r.seq for r in got] == sorted(r.seq for r in got)
    assert [r.seq async for r in store.read([subjects[1]])] == [2]  # one subject in a list: a plain filter


async def test_last_seq_at_cuts_the_stream_at_a_moment(store: EventStore) -> None:
    assert await store.last_seq_at(datetime.now(UTC)) == 0  # an empty stream
    start = datetime.now(UTC) - timedelta(seconds=1)
    await store.append(store.subjects.job("v1", "emulator", "acme", "a"), submitted("a", "v1"))
    await store.append(store.subjects.job("v1", "emulator", "acme", "b"), submitted("b", "v1"))
    await asyncio.sleep(0.05)
    middle = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await store.append(store.subjects.job("v1", "emulator", "acme", "c"), submitted("c", "v1"))

    assert await store.last_seq_at(start) == 0
    assert await store.last_seq_at(middle) == 2
    assert await store.last_seq_at(datetime.now(UTC) + timedelta(hours=1)) == 3
    stored = [rec.time async for rec in store.read()]
    assert stored[1] is not None and await store.last_seq_at(stored[1]) == 2  # "at or before": inclusive


async def test_a_delivery_reads_its_sequence_time_and_pending_as_nats_py_does(store: EventStore) -> None:
    for n in range(3):
        await store.append(store.subjects.job("v1", "emulator", "acme", f"d{n}"), submitted(f"d{n}", "v1"))
    got: list[tuple[Recorded, Msg]] = []
    done = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        got.append((store.recorded(msg), msg))
        if len(got) == 3:
            done.set()

    sub = await store.js.subscribe(store.subjects.all, cb=on_msg, ordered_consumer=True, stream=store.stream)
    try:
        await asyncio.wait_for(done.wait(), 5)
    finally:
        await sub.unsubscribe()
    assert type(store.nc) is Client
    for rec, msg in got:
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == rec.event.event_id
        meta = msg.metadata
        assert (rec.seq, rec.time, rec.pending) == (meta.sequence.stream, meta.timestamp, meta.num_pending)
    assert [rec.pending for rec, _ in got] == [2, 1, 0]
    # the newer ack form, with a domain and an account, goes through nats-py
    rec, msg = got[0]
    reply = f"$JS.ACK._.ACCHASH.{store.stream}.c.1.{rec.seq}.1.{rec.stored_ns}.0.abc"
    again = store.recorded(Msg(store.nc, subject=msg.subject, reply=reply, data=msg.data))
    assert (again.seq, again.pending) == (rec.seq, 0)
    assert again.time is not None and rec.time is not None
    assert abs((again.time - rec.time).total_seconds()) < 1e-5
