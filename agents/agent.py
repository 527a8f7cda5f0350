"""The agent process: register, take batches, install once, run, report.

Every report is fenced by the job subject's last sequence: a result for a job
that was cancelled or reassigned meanwhile is rejected by the event store and
dropped here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgspec
import nats.errors
from nats.aio.msg import Msg

from agents import metrics
from agents.runners import Outcome, Runner
from eventstore import ConcurrencyConflict, EventStore, QgjobError
from eventstore.events import (
    AgentLost,
    AgentRegistered,
    AgentStopped,
    AppInstalled,
    BatchAssigned,
    BatchFinished,
    BatchJob,
    Event,
    JobAssigned,
    JobCancelled,
    JobFailed,
    JobPassed,
    JobStarted,
    ResultRejected,
)
from eventstore.logs import LogStore
from eventstore.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class Agent:
    """One agent: takes its batches, heartbeats while it lives.

    If it cannot heartbeat for a whole lease, or sees itself declared lost,
    it drops the batches it holds (the scheduler has handed them to others)
    and registers afresh.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        agent_id: str,
        target: str,
        runner: Runner,
        slots: int = 1,
        lease_s: float = 15.0,
        heartbeat_s: float | None = None,
    ) -> None:
        self.store = store
        self.logs = LogStore(store)
        self.agent_id = agent_id
        self.target = target
        self.runner = runner
        self.slots = slots
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else max(lease_s / 5, 0.05)
        self.installed: str | None = None
        self.jobs_run = 0
        self.installs = 0
        self.rejected = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[Any]] = {}  # job id -> its test, while it runs
        self._watching: dict[str, str] = {}  # job id -> its subject, while its test runs
        self._starting: set[str] = set()  # jobs whose JobStarted is on its way
        self._noticed: set[str] = set()  # ... and of those, the ones a cancel notice named meanwhile
        self._cancelled: set[str] = set()
        self._checks: set[asyncio.Task[None]] = set()  # reads of jobs a notice named
        self._stop = asyncio.Event()
        self._ids = {"agent_id": agent_id}

    def stop(self) -> None:
        """Drain: finish the test in progress, hand back the rest, leave."""
        self._stop.set()

    @property
    def _subject(self) -> str:
        return self.store.subjects.agent(self.target, self.agent_id)

    async def _register(self) -> None:
        await self.store.append(
            self._subject,
            AgentRegistered(agent_id=self.agent_id, target=self.target, slots=self.slots, runner=self.runner.name),
        )
        log.info("agent %s registered for %s", self.agent_id, self.target, extra=self._ids)

    async def run(self) -> None:
        notices = await self.store.nc.subscribe(self.store.subjects.cancel_notice(self.agent_id), cb=self._on_notice)
        start = await self.store.last_seq() + 1
        listen = asyncio.create_task(self._listen(start))
        watch = asyncio.create_task(self._watch_self(start))
        await self._register()
        beat = asyncio.create_task(self._heartbeat())
        checks = asyncio.create_task(self._check_cancels_every_heartbeat())
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({listen, watch, beat, checks, stop}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            await cancel_and_wait(listen, watch, beat, checks, stop, *self._checks)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(nats.errors.Error):
                await notices.unsubscribe()
            try:
                await self.store.append(
                    self.store.subjects.agent(self.target, self.agent_id), AgentStopped(agent_id=self.agent_id)
                )
            except QgjobError as exc:
                log.warning("could not record that agent %s stopped: %s", self.agent_id, exc)

    async def _heartbeat(self) -> None:
        subject = self.store.subjects.heartbeat(self.agent_id)
        payload = msgspec.json.encode({"agent_id": self.agent_id, "target": self.target})
        last_ok = time.monotonic()
        while True:
            try:
                await self.store.nc.publish(subject, payload)
                await self.store.nc.flush(timeout=self.heartbeat_s)
                last_ok = time.monotonic()
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("heartbeat failed: %s", exc, extra=self._ids)
            if time.monotonic() - last_ok > self.lease_s and self._tasks:
                log.error("no heartbeat got through for a whole lease: dropping held batches", extra=self._ids)
                self._drop_batches()
            await asyncio.sleep(self.heartbeat_s)

    async def _watch_self(self, start: int) -> None:
        """Re-register when the scheduler declares this agent lost."""
        async for rec in self.store.subscribe(self._subject, from_seq=start):
            if isinstance(rec.event, AgentLost) and rec.event.agent_id == self.agent_id:
                log.error(
                    "declared lost (%s): dropping held batches, registering again", rec.event.reason, extra=self._ids
                )
                self._drop_batches()
                if not self._stop.is_set():
                    await self._register()

    def _drop_batches(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _rejected(self, batch: BatchAssigned, job: BatchJob, report: str, reason: str) -> None:
        """Record that the store refused a report of this agent's."""
        self.rejected += 1
        log.warning("%s for job %s rejected: %s", report, job.job_id, reason, extra={**self._ids, "job_id": job.job_id})
        try:
            await self.store.append(
                self._subject,
                ResultRejected(
                    agent_id=self.agent_id, job_id=job.job_id, batch_id=batch.batch_id, report=report, reason=reason
                ),
            )
        except QgjobError as exc:
            log.warning("could not record a rejected report: %s", exc, extra=self._ids)

    async def _listen(self, start: int) -> None:
        async for rec in self.store.subscribe(self.store.subjects.batches(self.target), from_seq=start):
            event = rec.event
            if isinstance(event, BatchAssigned) and event.agent_id == self.agent_id:
                task = asyncio.create_task(self._run_batch(event, rec.seq))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _job_subject(self, batch: BatchAssigned, job: BatchJob) -> str:
        return self.store.subjects.job(batch.app_version_id, batch.target, job.org_id, job.job_id)

    async def _run_batch(self, batch: BatchAssigned, seq: int = 1) -> None:
        ids = {"batch_id": batch.batch_id, "agent_id": self.agent_id}
        log.info(
            "batch %s: %d job(s) of %s on %s",
            batch.batch_id,
            len(batch.jobs),
            batch.app_version_id,
            batch.target,
            extra=ids,
        )
        reporting: asyncio.Task[None] | None = None  # the last job's result, on its way
        try:
            if batch.install or self.installed != batch.app_version_id:
                started = time.monotonic()
                await self.runner.install(batch.app_version_id, batch.target)
                self.installed = batch.app_version_id
                self.installs += 1
                metrics.INSTALLS.labels(target=batch.target).inc()
                metrics.INSTALL_SECONDS.labels(target=batch.target).observe(time.monotonic() - started)
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
            for n, job in enumerate(batch.jobs):
                if self._stop.is_set():
                    break
                # The assignment was one atomic batch: BatchAssigned, then each
                # JobAssigned in order, at consecutive sequences.
                report = await self._run_job(batch, job, assigned_seq=seq + 1 + n)
                if reporting is not None:
                    await reporting
                reporting = report
            if reporting is not None:
                await reporting
        except QgjobError as exc:
            log.error("batch %s aborted: %s", batch.batch_id, exc, extra=ids)
        finally:
            if reporting is not None and not reporting.done():
                reporting.cancel()
            try:
                await self.store.append(
                    self.store.subjects.batch(batch.app_version_id, batch.target, batch.batch_id),
                    BatchFinished(batch_id=batch.batch_id, agent_id=self.agent_id),
                )
            except QgjobError as exc:
                log.warning("could not record the end of batch %s: %s", batch.batch_id, exc, extra=ids)

    async def _start(self, batch: BatchAssigned, job: BatchJob, assigned_seq: int | None) -> int | None:
        """Record JobStarted, fenced on the job's JobAssigned; ``None`` if the job moved on.

        The JobAssigned sequence is usually known from the batch; if anything
        happened to the job since (a cancel), read its subject and decide.
        """
        subject = self._job_subject(batch, job)
        started = JobStarted(job_id=job.job_id, batch_id=batch.batch_id, agent_id=self.agent_id, attempt=job.attempt)
        if assigned_seq is not None:
            try:
                return await self.store.append(subject, started, expected=assigned_seq)
            except ConcurrencyConflict:
                pass
        last = await self.store.last(subject)
        if last is None or not isinstance(last.event, JobAssigned) or last.event.batch_id != batch.batch_id:
            log.info("job %s is no longer ours, skipping", job.job_id, extra={**self._ids, "job_id": job.job_id})
            return None
        try:
            return await self.store.append(subject, started, expected=last.seq)
        except ConcurrencyConflict as exc:
            await self._rejected(batch, job, "JobStarted", str(exc))
            return None

    def _stop_cancelled(self, job_id: str) -> None:
        running = self._running.get(job_id)
        if running is not None and not running.done() and job_id not in self._cancelled:
            log.info("job %s cancelled: stopping its test", job_id, extra={**self._ids, "job_id": job_id})
            self._cancelled.add(job_id)
            running.cancel()

    async def _on_notice(self, msg: Msg) -> None:
        """A cancel notice names a job of this agent's; the stream decides.

        The API publishes one (plain NATS, outside the stream) to the agent
        holding a job once its JobCancelled is stored. A notice is only a
        hint: the test stops only if the job's last event is JobCancelled. One
        that arrives while JobStarted is on its way is checked once the test
        runs; one that never arrives (a reconnect) is caught by
        :meth:`_check_cancels` within a heartbeat interval.
        """
        job_id = msg.data.decode(errors="replace")
        if job_id in self._watching:
            self._spawn(self._check_cancels([job_id]))
        elif job_id in self._starting:
            self._noticed.add(job_id)

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _check_cancels_every_heartbeat(self) -> None:
        """Apart from the heartbeat, so a slow read never delays a heartbeat."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if self._watching:
                await self._check_cancels()

    async def _check_cancels(self, job_ids: list[str] | None = None) -> None:
        """Read the last event of these running jobs (all: the safety net for
        a lost notice) and stop each test whose job was cancelled."""
        for job_id in list(self._watching) if job_ids is None else job_ids:
            subject = self._watching.get(job_id)
            if subject is None:
                continue
            try:
                last = await self.store.last(subject)
            except (QgjobError, nats.errors.Error, TimeoutError) as exc:
                log.warning("could not check job %s for a cancel: %s", job_id, exc, extra=self._ids)
                continue
            if last is not None and isinstance(last.event, JobCancelled):
                self._stop_cancelled(job_id)

    async def _run_job(
        self, batch: BatchAssigned, job: BatchJob, *, assigned_seq: int | None = None
    ) -> asyncio.Task[None] | None:
        """Start the job, run its test, send its result; returns the sending.

        The next job starts while the result is on its way: the result is
        published first, on the same connection, so the stream still has it
        before the next JobStarted, and one write carries both.
        """
        subject = self._job_subject(batch, job)
        ids = {"job_id": job.job_id, "batch_id": batch.batch_id, "agent_id": self.agent_id}
        self._starting.add(job.job_id)
        try:
            seq = await self._start(batch, job, assigned_seq)
            if seq is None:
                return None
            log.info("job %s started: %s, attempt %d", job.job_id, job.test, job.attempt, extra=ids)
            running = asyncio.create_task(
                self.runner.run(job.test, batch.target, batch.app_version_id, job.attempt, timeout_s=job.timeout_s)
            )
            self._running[job.job_id] = running
            self._watching[job.job_id] = subject
            if job.job_id in self._noticed:
                self._spawn(self._check_cancels([job.job_id]))
            try:
                outcome = await running
            except asyncio.CancelledError:
                if job.job_id not in self._cancelled:
                    raise  # the agent itself is stopping or lost its lease
                self._cancelled.discard(job.job_id)
                log.info("job %s was cancelled while it ran; its test was stopped", job.job_id, extra=ids)
                return None
            finally:
                self._running.pop(job.job_id, None)
                self._watching.pop(job.job_id, None)
        finally:
            self._starting.discard(job.job_id)
            self._noticed.discard(job.job_id)
        if outcome.log and not outcome.log_fits_tail:  # the log is stored first: no overlap
            await self._report(batch, job, subject, seq, outcome, ids)
            return None
        report = asyncio.create_task(self._report(batch, job, subject, seq, outcome, ids))
        await asyncio.sleep(0)  # let the result reach the connection's buffer first
        return report

    async def _report(
        self, batch: BatchAssigned, job: BatchJob, subject: str, seq: int, outcome: Outcome, ids: dict[str, str]
    ) -> None:
        self.jobs_run += 1
        metrics.RUN_DURATION.labels(target=batch.target, outcome="passed" if outcome.passed else "failed").observe(
            outcome.duration_ms / 1000
        )
        if outcome.log and not outcome.log_fits_tail:  # a short log travels whole in the result's log_tail
            try:
                await self.logs.put(job.job_id, job.attempt, outcome.log)
            except QgjobError as exc:
                log.warning("%s", exc, extra=ids)
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
                log_tail=outcome.log_tail,
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
                log_tail=outcome.log_tail,
            )
        try:
            await self.store.append(subject, result, expected=seq)
        except ConcurrencyConflict as exc:
            await self._rejected(batch, job, type(result).__name__, f"the job moved on (cancelled or requeued): {exc}")
        else:
            verdict = "passed" if outcome.passed else f"failed ({outcome.error or 'failed'})"
            log.info("job %s %s in %d ms", job.job_id, verdict, outcome.duration_ms, extra=ids)
