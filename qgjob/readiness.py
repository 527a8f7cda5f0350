"""Starting before what a service needs is up: NATS, JetStream, Postgres.

Every service opens its connections through these, so one started before its
servers (a compose file starting everything at once, a cluster still electing
its JetStream leader, a database starting up) waits for them, saying so in
its log every try, rather than exiting; a refusal that waiting would not cure
(a stream configuration JetStream will not take, a wrong password) still
fails at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import nats.errors
import nats.js.errors

from eventstore import EventStore, EventStoreUnavailable
from eventstore.tasks import until_ready
from projections.schema import connect_pool
from qgjob.settings import Settings


def nats_not_ready(exc: BaseException) -> bool:
    """Whether a failure to connect or to set up the stream is worth waiting
    out: no server yet, a JetStream with no leader yet, a request unanswered.
    JetStream refusing what was asked (a stream configuration) is not."""
    if isinstance(exc, EventStoreUnavailable | nats.js.errors.ServiceUnavailableError):
        return True
    if isinstance(exc, nats.js.errors.APIError):
        return False
    return isinstance(exc, nats.errors.Error)


def postgres_not_ready(exc: BaseException) -> bool:
    """Whether a failure to connect to Postgres is worth waiting out: nothing
    listening yet, a server starting up or shutting down."""
    return isinstance(exc, OSError | TimeoutError | asyncpg.CannotConnectNowError)


async def open_store(
    settings: Settings, name: str, stop: asyncio.Event, waiting: Callable[[], object] | None = None
) -> EventStore | None:
    """The event store with its stream in place, waiting for NATS and
    JetStream as long as they are not ready; ``None`` if ``stop`` is set first."""

    async def attempt() -> EventStore:
        store = await EventStore.connect(
            settings.nats_url,
            stream=settings.stream,
            prefix=settings.prefix,
            name=name,
            replicas=settings.stream_replicas,
        )
        try:
            await store.ensure_stream()
        except BaseException:
            await store.close()
            raise
        return store

    return await until_ready(f"NATS JetStream at {settings.nats_url}", attempt, stop, nats_not_ready, waiting=waiting)


async def open_pool(
    settings: Settings, stop: asyncio.Event, waiting: Callable[[], object] | None = None, **options: Any
) -> asyncpg.Pool | None:
    """A Postgres pool (see ``connect_pool``), waiting while Postgres is not
    up; ``None`` if ``stop`` is set first."""
    return await until_ready(
        "Postgres",
        lambda: connect_pool(settings.database_url, settings.schema, **options),
        stop,
        postgres_not_ready,
        waiting=waiting,
    )
