"""The projector: a durable JetStream consumer folding events into Postgres.

Each fetched batch of events is applied in one transaction together with the
checkpoint (the last stream sequence applied), and acknowledged only after the
commit. Events at or below the checkpoint are skipped, so redelivery after a
crash changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventstore import EventStore, Recorded
from projections.apply import apply
from projections.schema import queries

log = logging.getLogger(__name__)
Q = queries()

PROJECTION = "main"


async def checkpoint(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """The last stream sequence applied to the projections (0: none)."""
    seq = await conn.fetchval(Q["checkpoint_get"], PROJECTION)
    return int(seq or 0)


async def apply_batch(conn: asyncpg.Connection, records: Sequence[Recorded]) -> int:
    """Apply events above the checkpoint in one transaction; returns the new checkpoint."""
    async with conn.transaction():
        done = await conn.fetchval(Q["checkpoint_lock"], PROJECTION)
        done = int(done or 0)
        top = done
        for rec in records:
            if rec.seq <= done:
                continue
            await apply(conn, rec)
            top = max(top, rec.seq)
        if top > done:
            await conn.execute(Q["checkpoint_set"], PROJECTION, top)
    return top


class Projector:
    """Runs the durable consumer until stopped."""

    def __init__(
        self,
        store: EventStore,
        pool: asyncpg.Pool,
        *,
        durable: str = "projector",
        batch: int = 1000,
    ) -> None:
        self.store = store
        self.pool = pool
        self.durable = durable
        self.batch = batch
        self.applied = 0
        self.checkpoint = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        async with self.pool.acquire() as conn:
            self.checkpoint = await checkpoint(conn)
        try:
            await self.store.js.consumer_info(self.store.stream, self.durable)
            config = None
        except nats.js.errors.NotFoundError:
            config = ConsumerConfig(
                ack_policy=AckPolicy.ALL,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.checkpoint + 1,
                max_ack_pending=-1,
                ack_wait=30,
            )
        sub = await self.store.js.pull_subscribe(
            self.store.subjects.all, durable=self.durable, stream=self.store.stream, config=config
        )
        log.info("projector started at checkpoint %s", self.checkpoint)
        while not self._stop.is_set():
            try:
                msgs = await sub.fetch(self.batch, timeout=0.5)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            except nats.errors.ConnectionClosedError:
                if self._stop.is_set():
                    break
                raise
            except nats.js.errors.APIError as exc:
                log.warning("projector fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            records = [r for r in (self.store.recorded(m) for m in msgs) if r is not None]
            async with self.pool.acquire() as conn:
                self.checkpoint = await apply_batch(conn, records)
            self.applied += len(records)
            await msgs[-1].ack()
