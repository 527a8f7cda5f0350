"""The projector: a durable JetStream consumer folding events into Postgres.

Each fetched batch of events is applied in one transaction together with the
checkpoint (the last stream sequence applied), and acknowledged only after the
commit. Events at or below the checkpoint are skipped, so redelivery after a
crash changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import asyncpg
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventstore import EventStore, QgjobError, Recorded
from eventstore.pull import Pull, PullFailed
from projections.apply import apply_many
from projections.metrics import APPLY_SECONDS, EVENTS_APPLIED
from projections.schema import queries

log = logging.getLogger(__name__)
Q = queries()

PROJECTION = "main"


async def checkpoint(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """The last stream sequence applied to the projections (0: none)."""
    seq = await conn.fetchval(Q["checkpoint_get"], PROJECTION)
    return int(seq or 0)


class ProjectionGap(QgjobError):
    """Events arrived past a gap after the checkpoint; the consumer must rewind."""


async def apply_batch(conn: asyncpg.Connection, records: Sequence[Recorded], *, first_seq: int = 1) -> int:
    """Apply events above the checkpoint in one transaction; returns the new checkpoint.

    Events must follow the checkpoint without a gap (the stream's sequences
    are contiguous from ``first_seq``), else :class:`ProjectionGap` and nothing
    is applied.
    """
    async with conn.transaction():
        done = await conn.fetchval(Q["checkpoint_lock"], PROJECTION)
        done = int(done or 0)
        top = done
        todo = []
        for rec in records:
            if rec.seq <= top:
                continue
            if rec.seq != top + 1 and top + 1 >= first_seq:
                raise ProjectionGap(f"expected event {top + 1}, got {rec.seq}")
            todo.append(rec)
            top = rec.seq
        await apply_many(conn, todo)
        if top > done:
            await conn.execute(Q["checkpoint_set"], PROJECTION, top)
            await conn.execute(Q["projection_notify"], top)
    return top


RETRY_FIRST_S = 0.5  # the wait before recreating a consumer that failed, doubling ...
RETRY_MAX_S = 5.0  # ... up to this


class Projector:
    """Runs the durable consumer until stopped."""

    def __init__(
        self,
        store: EventStore,
        pool: asyncpg.Pool,
        *,
        durable: str = "projector",
        batch: int = 1000,
        linger_s: float = 0.005,
    ) -> None:
        self.store = store
        self.pool = pool
        self.durable = durable
        self.batch = batch
        self.linger_s = linger_s
        self.applied = 0
        self.checkpoint = 0
        self.first_seq = 1
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def _consumer(self) -> Pull:
        """(Re)create the durable consumer at the checkpoint.

        Postgres holds the truth of what was applied; the consumer is only a
        cursor. Recreating it after a crash means messages a dead projector
        had fetched but not committed are delivered again, in order.
        """
        async with self.pool.acquire() as conn:
            self.checkpoint = await checkpoint(conn)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.store.js.delete_consumer(self.store.stream, self.durable)
        config = ConsumerConfig(
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.checkpoint + 1,
            max_ack_pending=-1,
            ack_wait=30,
        )
        await self.store.js.add_consumer(
            self.store.stream, config=config, durable_name=self.durable, filter_subject=self.store.subjects.all
        )
        info = await self.store.js.stream_info(self.store.stream)
        self.first_seq = int(info.state.first_seq or 1)
        log.info("projector consuming from %s", self.checkpoint + 1)
        return await Pull(self.store.nc, self.store.stream, self.durable).start()

    async def _fetch(self, pull: Pull) -> list[Msg]:
        """A batch; if the first fetch comes back short, what else arrives
        within the linger: a few events more per transaction costs their
        status a few milliseconds and saves most of the cost of a transaction each."""
        msgs = await pull.fetch(self.batch, wait=0.5)
        if msgs and len(msgs) < self.batch and self.linger_s > 0:
            await asyncio.sleep(self.linger_s)
            msgs += await pull.fetch(self.batch - len(msgs), wait=0)
        return msgs

    async def run(self) -> None:
        pull = await self._consume_again(delay=0)
        if pull is None:
            return
        try:
            while not self._stop.is_set():
                try:
                    msgs = await self._fetch(pull)
                except nats.errors.ConnectionClosedError:
                    if self._stop.is_set():
                        break
                    raise
                except (PullFailed, nats.errors.Error) as exc:
                    log.warning("projector fetch failed, consuming afresh: %s", exc)
                    await pull.close()
                    again = await self._consume_again()
                    if again is None:
                        break
                    pull = again
                    continue
                if msgs:
                    again = await self._apply(pull, msgs)
                    if again is None:
                        break
                    pull = again
        finally:
            with contextlib.suppress(nats.errors.Error):
                await pull.close()

    async def _consume_again(self, delay: float = RETRY_FIRST_S) -> Pull | None:
        """(Re)create the consumer, retrying while JetStream cannot answer (a
        cluster electing a new leader after a node died or still electing its
        first, a server restarting): the projector waits it out rather than
        exiting. ``None`` once the projector is stopped."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return None
            try:
                return await self._consumer()
            except nats.errors.ConnectionClosedError:
                raise
            except nats.errors.Error as exc:
                delay = min(max(delay * 2, RETRY_FIRST_S), RETRY_MAX_S)
                log.warning("projector cannot consume yet, retrying in %.1f s: %s", delay, exc)

    async def _apply(self, pull: Pull, msgs: list[Msg]) -> Pull | None:
        """Apply and acknowledge a batch; the pull to go on with (``None``: stopped)."""
        records = [self.store.recorded(m) for m in msgs]
        try:
            async with self.pool.acquire() as conn:
                with APPLY_SECONDS.time():
                    self.checkpoint = await apply_batch(conn, records, first_seq=self.first_seq)
        except ProjectionGap as exc:
            log.warning("projector rewinds: %s", exc)
            await pull.close()
            return await self._consume_again(delay=0)
        self.applied += len(records)
        EVENTS_APPLIED.inc(len(records))
        await msgs[-1].ack()
        return pull
