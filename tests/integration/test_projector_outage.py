"""The projector waits out a NATS server that goes away and comes back,
instead of exiting: a cluster electing a leader after a node died looks the
same to it (its pull refused, then no answer from JetStream for a while)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import asyncpg
import pytest

from eventstore import EventStore, QgjobError
from eventstore.events import JobSubmitted
from eventstore.ids import new_id
from projections.projector import Projector
from projections.schema import connect_pool
from qgjob.services import ProjectorService
from qgjob.settings import Settings
from qgjob.stack.servers import NatsServer

pytestmark = pytest.mark.timeout(90)


async def _append_job(store: EventStore, deadline_s: float = 30) -> str:
    """Append a JobSubmitted, retrying while the server is coming back."""
    job_id = new_id("job")
    event = JobSubmitted(
        job_id=job_id, org_id="acme", app_version_id="v1", test="tests/a.spec.js", target="emulator", run_id="r"
    )
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            await store.append(store.subjects.job("v1", "emulator", "acme", job_id), event, expected=0)
            return job_id
        except QgjobError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _projected(pool: asyncpg.Pool, job_id: str, task: asyncio.Task[None], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert not task.done(), f"the projector stopped: {task.exception() if not task.cancelled() else 'cancelled'}"
        try:
            if await pool.fetchval("SELECT count(*) FROM jobs WHERE job_id = $1", job_id):
                return
        except asyncpg.UndefinedTableError:
            pass  # not migrated yet
        assert time.monotonic() < deadline, f"{job_id} was not projected within {timeout} s"
        await asyncio.sleep(0.05)


async def test_the_projector_waits_out_a_nats_restart(database_url: str, names: dict[str, str], tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    url = server.start()
    settings = Settings(
        nats_url=url, database_url=database_url, stream=names["stream"], prefix=names["prefix"], schema=names["schema"]
    )
    store = await EventStore.connect(url, stream=names["stream"], prefix=names["prefix"])
    await store.ensure_stream()
    pool = await connect_pool(database_url, names["schema"], max_size=2)
    service = ProjectorService(settings)
    task = asyncio.create_task(service.run())
    try:
        await _projected(pool, await _append_job(store), task)

        # Its consumer goes (its pull is refused) and the server with it: the
        # projector cannot recreate the consumer until the server is back.
        await store.js.delete_consumer(names["stream"], f"projector_{names['schema']}")
        server.kill()
        await asyncio.sleep(7)  # longer than a JetStream API request waits (5 s)
        server.start()  # same port and data

        await _projected(pool, await _append_job(store), task)
        assert not task.done()
    finally:
        service.stop()
        await asyncio.wait_for(task, 20)
        await store.close()
        async with pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{names["schema"]}" CASCADE')
        await pool.close()
        server.stop()


async def test_the_projector_waits_for_a_stream_that_is_not_there_yet(
    settings: Settings, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    """Started before anything created the stream (JetStream refuses its
    consumer), the projector retries instead of exiting, and stops promptly
    while it waits."""
    store = await EventStore.connect(settings.nats_url, stream=settings.stream, prefix=settings.prefix)
    projector = Projector(store, pool, durable=f"projector_{settings.schema}")
    task = asyncio.create_task(projector.run())
    try:
        with caplog.at_level(logging.WARNING, logger="projections.projector"):
            await asyncio.sleep(1.2)  # the first attempt and a retry fail
        assert not task.done(), f"the projector stopped: {task.exception() if not task.cancelled() else 'cancelled'}"
        assert "projector cannot consume yet" in caplog.text

        await store.ensure_stream()
        await _projected(pool, await _append_job(store), task)
    finally:
        projector.stop()
        await asyncio.wait_for(task, 10)
        with contextlib.suppress(Exception):
            await store.js.delete_stream(settings.stream)
        await store.close()


async def test_a_projector_stopped_while_it_waits_for_jetstream_ends_at_once(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    store = await EventStore.connect(settings.nats_url, stream=settings.stream, prefix=settings.prefix)
    projector = Projector(store, pool, durable=f"projector_{settings.schema}")
    task = asyncio.create_task(projector.run())
    try:
        await asyncio.sleep(2.0)  # failed at about 0, 0.5 and 1.5 s: now 0.5 s into a 2 s wait
        assert not task.done()
        started = time.monotonic()
        projector.stop()
        await asyncio.wait_for(task, 10)
        assert time.monotonic() - started < 1.0, "the stop waited out the backoff (about 1.5 s more)"
    finally:
        await store.close()
