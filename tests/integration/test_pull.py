"""Pull requests on one inbox against a real JetStream durable consumer."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from eventstore import EventStore
from eventstore.events import JobSubmitted
from eventstore.pull import Pull, PullFailed


def submitted(n: int) -> JobSubmitted:
    return JobSubmitted(
        job_id=f"j{n}", org_id="acme", app_version_id="v1", test="t.spec.js", target="emulator", run_id="r"
    )


async def append(store: EventStore, first: int, count: int) -> None:
    for n in range(first, first + count):
        await store.append(store.subjects.job("v1", "emulator", "acme", f"j{n}"), submitted(n))


async def durable(store: EventStore, name: str = "pulled") -> Pull:
    await store.js.add_consumer(
        store.stream,
        config=ConsumerConfig(ack_policy=AckPolicy.ALL, max_ack_pending=-1),
        durable_name=name,
        filter_subject=store.subjects.all,
    )
    return await Pull(store.nc, store.stream, name).start()


async def test_a_fetch_takes_what_waits_in_order_up_to_the_batch(store: EventStore) -> None:
    await append(store, 0, 25)
    pull = await durable(store)
    try:
        first = await pull.fetch(10, wait=0.5)
        rest = await pull.fetch(100, wait=0.5)
        assert [store.recorded(m).seq for m in first] == list(range(1, 11))
        assert [store.recorded(m).seq for m in rest] == list(range(11, 26))
        await rest[-1].ack()
        started = time.monotonic()
        assert await pull.fetch(100, wait=0.3) == []  # nothing more: empty once the wait is over
        assert 0.25 < time.monotonic() - started < 2.0
        assert await pull.fetch(100, wait=0) == []  # no wait: at once
    finally:
        await pull.close()


async def test_a_waiting_fetch_returns_as_soon_as_an_event_arrives(store: EventStore) -> None:
    pull = await durable(store)
    try:

        async def soon() -> None:
            await asyncio.sleep(0.2)
            await append(store, 0, 1)

        later = asyncio.create_task(soon())
        started = time.monotonic()
        got = await pull.fetch(100, wait=5)
        await later
        assert [store.recorded(m).event.job_id for m in got] == ["j0"]  # type: ignore[attr-defined]
        assert time.monotonic() - started < 2.0
        await asyncio.sleep(0.05)
        await append(store, 1, 3)
        assert [store.recorded(m).seq for m in await pull.fetch(100, wait=1)] == [2, 3, 4]
    finally:
        await pull.close()


async def test_an_acknowledged_batch_is_not_delivered_again_to_a_new_pull(store: EventStore) -> None:
    await append(store, 0, 5)
    pull = await durable(store)
    got = await pull.fetch(3, wait=0.5)
    await got[-1].ack()
    await pull.close()
    again = await Pull(store.nc, store.stream, "pulled").start()
    try:
        assert [store.recorded(m).seq for m in await again.fetch(100, wait=0.5)] == [4, 5]
    finally:
        await again.close()


async def test_a_pull_from_a_deleted_consumer_fails_clearly(store: EventStore) -> None:
    pull = await durable(store, "gone")
    await store.js.delete_consumer(store.stream, "gone")
    try:
        with pytest.raises(PullFailed, match="refused"):
            await pull.fetch(10, wait=0.2)
    finally:
        await pull.close()
