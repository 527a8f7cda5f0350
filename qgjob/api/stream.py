"""``GET /v1/stream``: server-sent events of job status changes.

The projector commits each batch of events with ``pg_notify('qgjob.<schema>',
checkpoint)``; one listening connection per API process wakes every open
stream, and each stream reads the jobs whose ``last_seq`` passed its cursor.
A message carries a job's whole current state, so a job that changed several
times between wake-ups is sent once, in its latest state.

Message ids are stream sequences. Several jobs can share one sequence (a
batch assignment touches all its jobs), so only the last message of such a
group carries the ``id`` field: a client that reconnects with
``Last-Event-ID`` after a cut inside a group gets the whole group again rather
than losing its tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from eventstore.tasks import cancel_and_wait
from projections import queries as read
from projections.schema import queries

log = logging.getLogger(__name__)
Q = queries()

PAGE = 500
KEEPALIVE_S = 15.0
STATUSES = frozenset(read.STATUSES)


def channel(schema: str) -> str:
    """The notification channel the projector signals for ``schema``."""
    return f"qgjob.{schema}"


class Changes:
    """Wakes waiting streams whenever the projector commits.

    A stream reads :attr:`seq` before it queries and then waits for it to
    move: a commit that lands after the read is either seen by the query or
    moves ``seq`` afterwards, so no change is missed. If the listening
    connection is lost, waits time out after ``poll_s`` and streams fall
    back to polling until it is back.
    """

    def __init__(self, dsn: str, schema: str, *, poll_s: float = 1.0) -> None:
        self.dsn = dsn
        self.channel = channel(schema)
        self.poll_s = poll_s
        self.seq = 0
        self.listening = False
        self._moved = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="stream-listener")

    def shutdown(self) -> None:
        """End every open stream (the server is stopping)."""
        self._closed.set()
        self._wake()

    async def close(self) -> None:
        self.shutdown()
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _wake(self) -> None:
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self.seq = max(self.seq + 1, int(payload))
        self._wake()

    async def _listen(self) -> None:
        while not self.closed:
            try:
                self._conn = await asyncpg.connect(self.dsn, server_settings={"application_name": "qgjob-stream"})
                await self._conn.add_listener(self.channel, self._on_notify)
                self.listening = True
                self.seq += 1  # anything committed while we were not listening: look again
                self._wake()
                lost = asyncio.Event()
                self._conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await lost.wait()
                self.listening = False
                log.warning("stream listener lost its connection; streams poll until it is back")
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("stream listener cannot listen: %s", exc)
            await asyncio.sleep(self.poll_s)

    async def wait(self, seen: int, timeout: float) -> None:
        """Return once :attr:`seq` moves past ``seen``, or after ``timeout``.

        Without a listening connection, waits at most ``poll_s``.
        """
        if self.seq != seen or self.closed:
            return
        if not self.listening:
            timeout = min(timeout, self.poll_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._moved.wait(), max(timeout, 0.0))


@dataclass(frozen=True, slots=True)
class Filter:
    org_id: str | None
    run_id: str | None = None
    job_ids: Sequence[str] | None = None
    status: str | None = None


async def changed_jobs(pool: asyncpg.Pool, f: Filter, after: int) -> list[asyncpg.Record]:
    """Jobs matching ``f`` whose last change is past ``after``, in sequence order.

    A page never ends inside a group of jobs sharing one sequence.
    """
    args = (f.org_id, f.run_id, list(f.job_ids) if f.job_ids else None, f.status)
    rows: list[asyncpg.Record] = await pool.fetch(Q["stream_changed"], after, *args, PAGE)
    if len(rows) == PAGE:  # a page may have cut a group of jobs sharing one sequence
        last = rows[-1]
        rows += await pool.fetch(Q["stream_same_seq"], last["last_seq"], last["job_id"], *args)
    return rows


def message(row: asyncpg.Record, *, with_id: bool) -> bytes:
    head = f"id: {row['last_seq']}\n" if with_id else ""
    return f"{head}event: job\ndata: ".encode() + msgspec.json.encode(read.job_view(row)) + b"\n\n"


async def events(
    pool: asyncpg.Pool, changes: Changes, f: Filter, cursor: int, *, keepalive_s: float | None = None
) -> AsyncIterator[bytes]:
    """The event stream for one client, from ``cursor`` on, until the server closes."""
    keepalive_s = KEEPALIVE_S if keepalive_s is None else keepalive_s
    yield b"retry: 1000\n\n"
    loop = asyncio.get_running_loop()
    announced = False
    last_out = loop.time()
    while not changes.closed:
        seen = changes.seq
        rows = await changed_jobs(pool, f, cursor)
        for i, row in enumerate(rows):
            last_of_group = i + 1 == len(rows) or rows[i + 1]["last_seq"] != row["last_seq"]
            yield message(row, with_id=last_of_group)
        if rows:
            last_out = loop.time()
            cursor = rows[-1]["last_seq"]
            if len(rows) >= PAGE:
                continue  # more backlog
        if not announced:
            announced = True
            last_out = loop.time()
            yield b"event: caught-up\ndata: " + msgspec.json.encode({"seq": cursor}) + b"\n\n"
        if changes.seq != seen:
            continue
        await changes.wait(seen, keepalive_s - (loop.time() - last_out))
        if changes.seq == seen and loop.time() - last_out >= keepalive_s:
            last_out = loop.time()
            yield b": keepalive\n\n"
