"""The agent process: register, take batches, install once, run, report.

Every report is fenced by the job subject's last sequence: a result for a job
that was cancelled or reassigned meanwhile is rejected by the event store and
dropped here.
"""

from __future__ import annotations

import asyncio
import logging
import time

from agents.runners import Runner
from eventstore import ConcurrencyConflict, EventStore, QgjobError
from eventstore.events import (
    AgentRegistered,
    AgentStopped,
    AppInstalled,
    BatchAssigned,
    BatchFinished,
    BatchJob,
    Event,
    JobAssigned,
    JobFailed,
    JobPassed,
    JobStarted,
)

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, store: EventStore, *, agent_id: str, target: str, runner: Runner, slots: int = 1) -> None:
        self.store = store
        self.agent_id = agent_id
        self.target = target
        self.runner = runner
        self.slots = slots
        self.installed: str | None = None
        self.jobs_run = 0
        self.installs = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        start = await self.store.last_seq() + 1
        listen = asyncio.create_task(self._listen(start))
        await self.store.append(
            self.store.subjects.agent(self.target, self.agent_id),
            AgentRegistered(agent_id=self.agent_id, target=self.target, slots=self.slots, runner=self.runner.name),
        )
        log.info("agent %s registered for %s", self.agent_id, self.target, extra={"agent_id": self.agent_id})
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({listen, stop}, return_when=asyncio.FIRST_COMPLETED)
            if listen in done and listen.exception() is not None:
                raise listen.exception()  # type: ignore[misc]
        finally:
            listen.cancel()
            stop.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            try:
                await self.store.append(
                    self.store.subjects.agent(self.target, self.agent_id), AgentStopped(agent_id=self.agent_id)
                )
            except QgjobError as exc:
                log.warning("could not record that agent %s stopped: %s", self.agent_id, exc)

    async def _listen(self, start: int) -> None:
        async for rec in self.store.subscribe(self.store.subjects.batches(self.target), from_seq=start):
            event = rec.event
            if isinstance(event, BatchAssigned) and event.agent_id == self.agent_id:
                task = asyncio.create_task(self._run_batch(event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _job_subject(self, batch: BatchAssigned, job: BatchJob) -> str:
        return self.store.subjects.job(batch.app_version_id, batch.target, job.org_id, job.job_id)

    async def _run_batch(self, batch: BatchAssigned) -> None:
        ids = {"batch_id": batch.batch_id, "agent_id": self.agent_id}
        try:
            if batch.install or self.installed != batch.app_version_id:
                started = time.monotonic()
                await self.runner.install(batch.app_version_id, batch.target)
                self.installed = batch.app_version_id
                self.installs += 1
                await self.store.append(
                    self.store.subjects.batch(batch.app_version_id, batch.target, batch.batch_id),
                    AppInstalled(
                        batch_id=batch.batch_id,
                        agent_id=self.agent_id,
                        app_version_id=batch.app_version_id,
                        target=batch.target,
                        duration_ms=int((time.monotonic() - started) * 1000),
                    ),
                )
            for job in batch.jobs:
                if self._stop.is_set():
                    break
                await self._run_job(batch, job)
        except QgjobError as exc:
            log.error("batch %s aborted: %s", batch.batch_id, exc, extra=ids)
        finally:
            try:
                await self.store.append(
                    self.store.subjects.batch(batch.app_version_id, batch.target, batch.batch_id),
                    BatchFinished(batch_id=batch.batch_id, agent_id=self.agent_id),
                )
            except QgjobError as exc:
                log.warning("could not record the end of batch %s: %s", batch.batch_id, exc, extra=ids)

    async def _run_job(self, batch: BatchAssigned, job: BatchJob) -> None:
        subject = self._job_subject(batch, job)
        ids = {"job_id": job.job_id, "batch_id": batch.batch_id, "agent_id": self.agent_id}
        last = await self.store.last(subject)
        if last is None or not isinstance(last.event, JobAssigned) or last.event.batch_id != batch.batch_id:
            log.info("job %s is no longer ours, skipping", job.job_id, extra=ids)
            return
        try:
            seq = await self.store.append(
                subject,
                JobStarted(job_id=job.job_id, batch_id=batch.batch_id, agent_id=self.agent_id, attempt=job.attempt),
                expected=last.seq,
            )
        except ConcurrencyConflict:
            log.info("job %s moved on before it started, skipping", job.job_id, extra=ids)
            return
        outcome = await self.runner.run(job.test, batch.target, batch.app_version_id, job.attempt)
        self.jobs_run += 1
        final = outcome.passed or job.failures + 1 > job.max_retries
        result: Event
        if outcome.passed:
            result = JobPassed(
                job_id=job.job_id,
                batch_id=batch.batch_id,
                agent_id=self.agent_id,
                attempt=job.attempt,
                duration_ms=outcome.duration_ms,
                dedup_key=job.dedup_key,
            )
        else:
            result = JobFailed(
                job_id=job.job_id,
                batch_id=batch.batch_id,
                agent_id=self.agent_id,
                attempt=job.attempt,
                duration_ms=outcome.duration_ms,
                error=outcome.error or "failed",
                final=final,
                dedup_key=job.dedup_key,
            )
        try:
            await self.store.append(subject, result, expected=seq)
        except ConcurrencyConflict:
            log.warning("result for job %s rejected: the job moved on (cancelled?)", job.job_id, extra=ids)
