"""The scheduler's brain: folds events into state and decides assignments.

No I/O, no clock and no randomness of its own: time comes in as ``now``
(seconds) and new ids from the ``new_id`` callable it is given, so the service,
the tests and the simulator all drive the same code.

Promises kept here (DESIGN.md, "Scheduling promises"):

- jobs are grouped by ``(app_version_id, target)``; a batch is one group's
  jobs on one agent, which installs only when it does not have the build;
- a failed attempt is retried until ``max_retries`` is spent;
- which free agent takes which jobs (priority, FIFO, fairness across orgs,
  aging, affinity, splitting a group by estimated durations) is
  :mod:`scheduler.selection`; durations are learnt here from the results
  (:mod:`scheduler.estimates`).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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
    JobErrored,
    JobFailed,
    JobPassed,
    JobRequeued,
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
)
from scheduler import selection
from scheduler.estimates import Estimates, SuiteKey, TestKey, keys_of

Group = tuple[str, str]  # (app_version_id, target)

QUEUED = "queued"
ASSIGNED = "assigned"
RUNNING = "running"
RETRYING = "retrying"
DONE = "done"


@dataclass(slots=True)
class Job:
    job_id: str
    org_id: str
    app_version_id: str
    target: str
    test: str
    priority: int
    max_retries: int
    timeout_s: float | None
    dedup_key: str
    order: int  # stream sequence of the submission: FIFO order
    seq: int  # last sequence on the job's subject, for fenced appends
    status: str = QUEUED
    attempts: int = 0
    failures: int = 0
    requeues: int = 0
    ready_at: float = 0.0
    batch_id: str | None = None
    retry_pending: bool = False
    run_id: str = ""
    submitted_at: float = 0.0  # seconds, from the JobSubmitted event: waiting jobs age from here
    test_key: TestKey = field(init=False)
    suite_key: SuiteKey = field(init=False)

    def __post_init__(self) -> None:
        self.test_key, self.suite_key = keys_of(self.org_id, self.test, self.target)

    @property
    def group(self) -> Group:
        return (self.app_version_id, self.target)


@dataclass(slots=True)
class Agent:
    agent_id: str
    target: str
    slots: int = 1
    installed: str | None = None  # as decided, including assignments not yet recorded
    confirmed: str | None = None  # as recorded by the last BatchAssigned
    batches: set[str] = field(default_factory=set)
    alive: bool = True

    @property
    def free(self) -> int:
        return self.slots - len(self.batches) if self.alive else 0


@dataclass(slots=True)
class Batch:
    batch_id: str
    agent_id: str
    group: Group
    job_ids: list[str]


@dataclass(frozen=True, slots=True)
class Assign:
    """Give ``jobs`` of one group to ``agent_id`` as batch ``batch_id``."""

    batch_id: str
    agent_id: str
    app_version_id: str
    target: str
    jobs: tuple[BatchJob, ...]
    expected: tuple[int, ...]  # each job subject's last sequence
    install: bool


@dataclass(frozen=True, slots=True)
class ScheduleRetry:
    job_id: str
    attempt: int
    not_before: float
    expected: int


@dataclass(frozen=True, slots=True)
class Requeue:
    job_id: str
    reason: str
    expected: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """End a job in ``error``: its infrastructure requeue budget is spent."""

    job_id: str
    error: str
    expected: int
    dedup_key: str = ""


Decision = Assign | ScheduleRetry | Requeue | GiveUp


def decision_events(decision: Decision, time_of: Callable[[float], datetime], **stamp: Any) -> list[Event]:
    """The events that record a decision, in append order: for an Assign the
    BatchAssigned, then one JobAssigned per job; otherwise one job event.

    ``time_of`` turns the core's clock (``now`` as :func:`decide` got it) into
    an event time; ``stamp`` passes ``at=`` where the caller keeps its own clock.
    """
    if isinstance(decision, Assign):
        batch = BatchAssigned(
            batch_id=decision.batch_id,
            agent_id=decision.agent_id,
            app_version_id=decision.app_version_id,
            target=decision.target,
            jobs=list(decision.jobs),
            install=decision.install,
            **stamp,
        )
        assigned: list[Event] = [
            JobAssigned(job_id=j.job_id, batch_id=decision.batch_id, agent_id=decision.agent_id, **stamp)
            for j in decision.jobs
        ]
        return [batch, *assigned]
    if isinstance(decision, ScheduleRetry):
        return [
            JobRetryScheduled(
                job_id=decision.job_id, attempt=decision.attempt, not_before=time_of(decision.not_before), **stamp
            )
        ]
    if isinstance(decision, Requeue):
        return [JobRequeued(job_id=decision.job_id, reason=decision.reason, **stamp)]
    return [JobErrored(job_id=decision.job_id, error=decision.error, dedup_key=decision.dedup_key, **stamp)]


@dataclass(slots=True)
class Config:
    max_batch: int = 100
    retry_backoff_s: float = 0.0  # first retry waits about this long, doubling per failure (0: at once)
    retry_backoff_max_s: float = 300.0
    max_requeues: int = 3  # infrastructure requeues of one job before it ends in `error`
    # selection: scheduler/selection.py
    aging_s: float = 1800.0  # a waiting class gains one priority level per this many seconds
    batch_s: float = 180.0  # estimated work per batch: agents re-decide about this often
    split_after_s: float = 4800.0  # a run finishing later than this gets another agent (less if urgent)
    split_slowdown: float = 4.0  # ... or one finishing later than this many times its time on the whole target
    spare_gain_installs: float = 4.0  # an idle agent joins a run if that saves this many install times
    urgent_below: int = 5  # runs of a priority below this get every agent that shortens them enough
    # what placement counts one install as, at the default priority, if more than its duration
    # (less for urgent priorities); 0: its duration. Where installs cost more than time: sessions, wear, flakes
    install_value_s: float = 0.0
    remember_finished: int = 100_000  # ids of the latest finished jobs kept, so a stray event cannot revive one


@dataclass(slots=True)
class State:
    config: Config = field(default_factory=Config)
    jobs: dict[str, Job] = field(default_factory=dict)
    agents: dict[str, Agent] = field(default_factory=dict)
    batches: dict[str, Batch] = field(default_factory=dict)
    # waiting jobs by group; kept unsorted, sorted on decision
    waiting: dict[Group, set[str]] = field(default_factory=dict)
    # failed attempts waiting for their retry to be scheduled
    needs_retry: set[str] = field(default_factory=set)
    # retries decided but not yet recorded: job id -> when it may run
    retry_due: dict[str, float] = field(default_factory=dict)
    # jobs held by a batch that ended or an agent that left, to go back to the queue
    orphans: dict[str, str] = field(default_factory=dict)
    # test and install durations learnt from results, to size batches and splits
    estimates: Estimates = field(default_factory=Estimates)
    # ids of the latest finished jobs, oldest first: finished jobs leave ``jobs``
    finished: OrderedDict[str, None] = field(default_factory=OrderedDict)

    # --- helpers ---------------------------------------------------------

    def _wait(self, job: Job) -> None:
        self.waiting.setdefault(job.group, set()).add(job.job_id)

    def _unwait(self, job: Job) -> None:
        ids = self.waiting.get(job.group)
        if ids is not None:
            ids.discard(job.job_id)
            if not ids:
                del self.waiting[job.group]

    def _finish(self, job: Job) -> None:
        """The job ended: it leaves ``jobs``, so a long-running scheduler holds
        only unfinished jobs and the ids of the latest ``remember_finished``
        finished ones. A later event of the job (a late report; a second
        submission, which the job subject's fence already keeps out of the
        stream) finds no job and is ignored."""
        self._unwait(job)
        self.needs_retry.discard(job.job_id)  # an ended job gets no retry
        self.retry_due.pop(job.job_id, None)
        self.orphans.pop(job.job_id, None)  # ... and no requeue
        job.status = DONE
        self._leave_batch(job)
        del self.jobs[job.job_id]
        self.finished[job.job_id] = None
        if len(self.finished) > self.config.remember_finished:
            self.finished.popitem(last=False)  # O(1); a plain dict's first key costs a scan past every one deleted

    def _leave_batch(self, job: Job) -> None:
        if job.batch_id is None:
            return
        batch = self.batches.get(job.batch_id)
        job.batch_id = None
        if batch is not None and job.job_id in batch.job_ids:
            batch.job_ids.remove(job.job_id)


def apply(state: State, seq: int, event: Event) -> None:
    """Fold one recorded event into ``state``."""
    if isinstance(event, JobPassed | JobFailed | AppInstalled):
        _learn(state, event)
    match event:
        case JobSubmitted():
            if event.job_id in state.jobs or event.job_id in state.finished:
                return
            job = Job(
                job_id=event.job_id,
                org_id=event.org_id,
                app_version_id=event.app_version_id,
                target=event.target,
                test=event.test,
                priority=event.priority,
                max_retries=event.max_retries,
                timeout_s=event.timeout_s,
                dedup_key=event.dedup_key,
                order=seq,
                seq=seq,
                run_id=event.run_id,
                submitted_at=event.at.timestamp(),
            )
            state.jobs[job.job_id] = job
            state._wait(job)
        case JobAssigned():
            job = state.jobs.get(event.job_id)
            if job is None or job.status == DONE:
                return
            job.seq = seq
            job.status = ASSIGNED
            job.batch_id = event.batch_id
            state._unwait(job)
        case JobStarted():
            job = state.jobs.get(event.job_id)
            if job is None or job.status == DONE:
                return
            job.seq = seq
            job.status = RUNNING
            job.attempts = event.attempt
        case JobPassed() | JobCancelled() | JobErrored():
            job = state.jobs.get(event.job_id)
            if job is not None:
                job.seq = seq
                state._finish(job)
        case JobFailed():
            job = state.jobs.get(event.job_id)
            if job is None or job.status == DONE:
                return
            job.seq = seq
            job.attempts = event.attempt
            job.failures += 1
            if event.final:
                state._finish(job)
            else:
                state._leave_batch(job)
                job.status = RETRYING
                state.needs_retry.add(job.job_id)
        case JobRetryScheduled():
            job = state.jobs.get(event.job_id)
            if job is None or job.status == DONE:
                return
            job.seq = seq
            state.needs_retry.discard(job.job_id)
            state.retry_due.pop(job.job_id, None)
            job.status = QUEUED
            job.ready_at = event.not_before.timestamp()
            state._wait(job)
        case JobRequeued():
            job = state.jobs.get(event.job_id)
            if job is None or job.status == DONE:
                return
            job.seq = seq
            job.requeues += 1
            state._leave_batch(job)
            state.retry_due.pop(job.job_id, None)
            job.status = QUEUED
            state._wait(job)
        case BatchAssigned():
            agent = state.agents.get(event.agent_id)
            if agent is not None:
                agent.batches.add(event.batch_id)
                agent.installed = event.app_version_id
                agent.confirmed = event.app_version_id
            if event.batch_id not in state.batches:
                state.batches[event.batch_id] = Batch(
                    event.batch_id,
                    event.agent_id,
                    (event.app_version_id, event.target),
                    [j.job_id for j in event.jobs],
                )
        case BatchFinished():
            agent = state.agents.get(event.agent_id)
            if agent is not None:
                agent.batches.discard(event.batch_id)
            batch = state.batches.pop(event.batch_id, None)
            if batch is not None:
                _orphan_batch(state, batch, "batch finished without a result")
        case AgentRegistered():
            agent = state.agents.get(event.agent_id)
            if agent is not None:
                # A restarted agent holds nothing it held before.
                _release_agent(state, agent, "agent restarted")
                agent.target = event.target
                agent.slots = event.slots
                agent.alive = True
            else:
                state.agents[event.agent_id] = Agent(event.agent_id, event.target, event.slots)
        case AgentStopped() | AgentLost():
            agent = state.agents.get(event.agent_id)
            if agent is not None:
                agent.alive = False
                _release_agent(state, agent, f"agent {type(event).__name__[5:].lower()}")
        case _:
            pass


def _learn(state: State, event: JobPassed | JobFailed | AppInstalled) -> None:
    if isinstance(event, AppInstalled):
        state.estimates.learn_install(event.target, event.duration_ms / 1000)
        return
    job = state.jobs.get(event.job_id)
    if job is not None:
        state.estimates.learn(job.org_id, job.test, job.target, job.run_id, event.duration_ms / 1000)


def retry_delay(config: Config, job: Job) -> float:
    """Exponential backoff with jitter: ``retry_backoff_s * 2**(failures-1)``
    times a factor in [0.5, 1.5), capped at ``retry_backoff_max_s``.

    The jitter comes from the job id and attempt, not from a random source,
    so the core stays a pure function and a replay decides the same delay.
    """
    if config.retry_backoff_s <= 0:
        return 0.0
    base = config.retry_backoff_s * 2 ** max(job.failures - 1, 0)
    digest = hashlib.blake2b(f"{job.job_id}/{job.attempts}".encode(), digest_size=4).digest()
    jitter = 0.5 + int.from_bytes(digest, "big") / 2**32
    return min(base * jitter, config.retry_backoff_max_s)


def _release_agent(state: State, agent: Agent, reason: str) -> None:
    for batch_id in list(agent.batches):
        batch = state.batches.pop(batch_id, None)
        if batch is not None:
            _orphan_batch(state, batch, reason)
    agent.batches.clear()


def _orphan_batch(state: State, batch: Batch, reason: str) -> None:
    """Jobs a batch still holds are to go back to the queue."""
    for job_id in batch.job_ids:
        job = state.jobs.get(job_id)
        if job is None or job.status in (DONE, QUEUED, RETRYING) or job.batch_id != batch.batch_id:
            continue
        job.batch_id = None
        state.orphans[job_id] = reason


def decide(state: State, now: float, new_id: Callable[[], str]) -> list[Decision]:
    """Assign batches to agents with free slots.

    Each assignment is applied to ``state`` at once (jobs leave the queue, the
    agent takes a slot), so deciding twice does not assign twice; the service
    calls :func:`reject` when the event store refuses one.
    """
    decisions: list[Decision] = []
    for job_id in sorted(state.needs_retry):
        job = state.jobs[job_id]
        not_before = now + retry_delay(state.config, job)
        decisions.append(ScheduleRetry(job_id, job.attempts + 1, not_before, job.seq))
        state.retry_due[job_id] = not_before
    state.needs_retry.clear()
    for job_id, reason in sorted(state.orphans.items()):
        job = state.jobs[job_id]
        if job.status not in (ASSIGNED, RUNNING):
            continue
        if job.requeues >= state.config.max_requeues:
            error = f"{reason}; gave up after {job.requeues} infrastructure requeues"
            decisions.append(GiveUp(job_id, error, job.seq, job.dedup_key))
        else:
            decisions.append(Requeue(job_id, reason, job.seq))
    state.orphans.clear()
    # which free agent takes which jobs: scheduler/selection.py
    for agent, group, jobs in selection.plan(state, now):
        decisions.append(_assign(state, agent, group, jobs, new_id()))
    return decisions


def _assign(state: State, agent: Agent, group: Group, jobs: list[Job], batch_id: str) -> Assign:
    install = agent.installed != group[0]
    for job in jobs:
        job.status = ASSIGNED
        job.batch_id = batch_id
        state._unwait(job)
    agent.batches.add(batch_id)
    agent.installed = group[0]
    state.batches[batch_id] = Batch(batch_id, agent.agent_id, group, [j.job_id for j in jobs])
    return Assign(
        batch_id=batch_id,
        agent_id=agent.agent_id,
        app_version_id=group[0],
        target=group[1],
        jobs=tuple(
            BatchJob(
                job_id=j.job_id,
                org_id=j.org_id,
                test=j.test,
                attempt=j.attempts + 1,
                max_retries=j.max_retries,
                timeout_s=j.timeout_s,
                dedup_key=j.dedup_key,
                failures=j.failures,
            )
            for j in jobs
        ),
        expected=tuple(j.seq for j in jobs),
        install=install,
    )


def reject(state: State, decision: Decision) -> None:
    """Undo a decision the event store refused (a job moved on meanwhile, or
    the store was unreachable); the next :func:`decide` reconsiders."""
    if isinstance(decision, ScheduleRetry):
        state.retry_due.pop(decision.job_id, None)
        job = state.jobs.get(decision.job_id)
        if job is not None and job.status == RETRYING:
            state.needs_retry.add(job.job_id)
        return
    if isinstance(decision, Requeue | GiveUp):
        job = state.jobs.get(decision.job_id)
        if job is not None and job.status in (ASSIGNED, RUNNING) and job.batch_id is None:
            state.orphans[job.job_id] = decision.reason if isinstance(decision, Requeue) else decision.error
        return
    batch = state.batches.pop(decision.batch_id, None)
    agent = state.agents.get(decision.agent_id)
    if agent is not None:
        agent.batches.discard(decision.batch_id)
        # the build of the newest batch it still holds, else the last one recorded
        held = [b.group[0] for b in state.batches.values() if b.batch_id in agent.batches]
        agent.installed = held[-1] if held else agent.confirmed
    if batch is None:
        return
    for job_id in batch.job_ids:
        job = state.jobs.get(job_id)
        if job is not None and job.status == ASSIGNED and job.batch_id == decision.batch_id:
            job.status = QUEUED
            job.batch_id = None
            state._wait(job)
