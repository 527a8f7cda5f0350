"""The scheduler service: feeds the policy core every event and publishes its
decisions as events, fenced by each job's expected subject sequence."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from eventstore import Append, ConcurrencyConflict, EventStore, QgjobError
from eventstore.events import BatchAssigned, JobAssigned, JobRequeued, JobRetryScheduled
from eventstore.ids import new_id
from scheduler import policy

log = logging.getLogger(__name__)


class SchedulerService:
    """Runs until :meth:`stop`; rebuilds its state from the stream on start."""

    def __init__(self, store: EventStore, config: policy.Config | None = None, *, tick_s: float = 0.5) -> None:
        self.store = store
        self.state = policy.State(config=config or policy.Config())
        self.tick_s = tick_s
        self.caught_up = asyncio.Event()
        self.last_seq = 0
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        consume = asyncio.create_task(self._consume())
        tick = asyncio.create_task(self._tick())
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({consume, tick, stop}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in (consume, tick, stop):
                task.cancel()
            await asyncio.gather(consume, tick, stop, return_exceptions=True)

    async def _consume(self) -> None:
        end = await self.store.last_seq()
        if end == 0:
            self.caught_up.set()
        async for batch in self.store.subscribe_batches(from_seq=1):
            for rec in batch:
                policy.apply(self.state, rec.seq, rec.event)
                self.last_seq = rec.seq
            if not self.caught_up.is_set() and (self.last_seq >= end or batch[-1].pending == 0):
                log.info("scheduler caught up at sequence %s", self.last_seq)
                self.caught_up.set()
            if self.caught_up.is_set():
                await self.decide()

    async def _tick(self) -> None:
        await self.caught_up.wait()
        while True:
            await asyncio.sleep(self.tick_s)
            await self.decide()

    async def decide(self) -> None:
        async with self._lock:
            decisions = policy.decide(self.state, time.time(), lambda: new_id("bat"))
            if decisions:
                await asyncio.gather(*(self._publish(d) for d in decisions))

    def _job_subject(self, job_id: str) -> str:
        job = self.state.jobs[job_id]
        return self.store.subjects.job(job.app_version_id, job.target, job.org_id, job.job_id)

    async def _publish(self, decision: policy.Decision) -> None:
        try:
            if isinstance(decision, policy.Assign):
                appends = [
                    Append(
                        self.store.subjects.batch(decision.app_version_id, decision.target, decision.batch_id),
                        BatchAssigned(
                            batch_id=decision.batch_id,
                            agent_id=decision.agent_id,
                            app_version_id=decision.app_version_id,
                            target=decision.target,
                            jobs=list(decision.jobs),
                            install=decision.install,
                        ),
                        0,
                    )
                ]
                for job, expected in zip(decision.jobs, decision.expected, strict=True):
                    appends.append(
                        Append(
                            self._job_subject(job.job_id),
                            JobAssigned(job_id=job.job_id, batch_id=decision.batch_id, agent_id=decision.agent_id),
                            expected,
                        )
                    )
                await self.store.append_many(appends)
                log.info(
                    "assigned batch %s (%d jobs) to %s",
                    decision.batch_id,
                    len(decision.jobs),
                    decision.agent_id,
                    extra={"batch_id": decision.batch_id, "agent_id": decision.agent_id},
                )
            elif isinstance(decision, policy.ScheduleRetry):
                await self.store.append(
                    self._job_subject(decision.job_id),
                    JobRetryScheduled(
                        job_id=decision.job_id,
                        attempt=decision.attempt,
                        not_before=datetime.fromtimestamp(decision.not_before, UTC),
                    ),
                    expected=decision.expected,
                )
            else:
                await self.store.append(
                    self._job_subject(decision.job_id),
                    JobRequeued(job_id=decision.job_id, reason=decision.reason),
                    expected=decision.expected,
                )
        except ConcurrencyConflict as exc:
            log.info("decision overtaken by events, reconsidering: %s", exc)
            policy.reject(self.state, decision)
        except QgjobError as exc:
            log.warning("could not publish a decision, will retry: %s", exc)
            policy.reject(self.state, decision)
