"""Virtual-time simulation of a scheduling workload (``qgjob simulate``).

Pure: no I/O, no clock, no sleeping. ``qgjob`` runs the real policy core
(:func:`scheduler.policy.apply` and :func:`scheduler.policy.decide`), fed the
same event objects the live system records, with agents that install and run
tests for the durations and outcomes the workload gives. The two baselines of
``bench/workloads/README.md`` are simulated on the same world:

- ``fifo``: one queue per target ordered by (priority, submit time); a free
  agent takes the next job and installs whenever the build differs from the
  one it has; a retry goes to the back of the queue (after the agent that
  failed it has taken its next job);
- ``per-job-install``: like ``fifo``, but installs before every job.

The workload format is ``../shared/workloads/README.md``'s: jobs arrive at
``at`` seconds, an attempt takes ``duration`` seconds and ends as the next of
``outcomes`` (the last repeats), a failed attempt is retried up to
``max_retries`` times (3 unless the workload or the job says otherwise).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from eventstore.events import (
    AgentRegistered,
    AppInstalled,
    BatchFinished,
    Event,
    JobFailed,
    JobPassed,
    JobStarted,
    JobSubmitted,
)
from scheduler import policy

POLICIES = ("qgjob", "fifo", "per-job-install")
EPOCH = 1_767_225_600.0  # virtual time 0 is 2026-01-01T00:00:00Z


class WorkloadJob(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    at: float
    org_id: str
    app_version_id: str
    test: str
    target: str
    run_id: str
    duration: float
    priority: int = 5
    outcomes: list[str] = msgspec.field(default_factory=lambda: ["pass"])
    max_retries: int | None = None


class WorkloadAgent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    target: str
    slots: int = 1


class Workload(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    install_seconds: dict[str, float]
    agents: list[WorkloadAgent]
    jobs: list[WorkloadJob]
    seed: int = 0
    max_retries: int = 3
    description: str = ""

    def retries(self, job: WorkloadJob) -> int:
        return self.max_retries if job.max_retries is None else job.max_retries


def decode_workload(data: bytes | str) -> Workload:
    """Parse a workload document; raises ``msgspec.ValidationError``."""
    workload = msgspec.json.decode(data, type=Workload)
    targets = {a.target for a in workload.agents}
    for job in workload.jobs:
        if job.target not in targets:
            raise msgspec.ValidationError(f"job {job.test!r} targets {job.target!r}, which has no agent")
        if job.target not in workload.install_seconds:
            raise msgspec.ValidationError(f"no install_seconds for target {job.target!r}")
        if not job.outcomes:
            raise msgspec.ValidationError(f"job {job.test!r} has no outcomes")
    return workload


def encode_workload(workload: Workload) -> bytes:
    """The workload as JSON, one job a line (as ``ci-day.json`` is laid out)."""
    encode = msgspec.json.encode
    head = {k: v for k, v in msgspec.structs.asdict(workload).items() if k != "jobs"}
    jobs = []
    for job in workload.jobs:
        fields = msgspec.structs.asdict(job)
        if fields["max_retries"] is None:
            del fields["max_retries"]
        jobs.append(encode(fields))
    return encode(head)[:-1] + b',"jobs":[\n' + b",\n".join(jobs) + b"\n]}"


# --- the report -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Latency:
    runs: int
    p50_s: float
    p95_s: float
    mean_s: float

    @classmethod
    def of(cls, values: list[float]) -> Latency:
        return cls(len(values), percentile(values, 50), percentile(values, 95), sum(values) / max(len(values), 1))

    def as_dict(self) -> dict[str, float]:
        return {
            "runs": self.runs,
            "p50_s": round(self.p50_s, 1),
            "p95_s": round(self.p95_s, 1),
            "mean_s": round(self.mean_s, 1),
        }


@dataclass(frozen=True, slots=True)
class Report:
    """What one simulation measured; figures as ``bench/workloads/README.md`` defines them."""

    workload: str
    policy: str
    jobs: int
    attempts: int
    passed: int
    failed: int
    installs: int
    batches: int
    makespan_s: float
    lower_bound_s: float
    arrival_bound_s: float  # also respects submit times: no schedule beats it
    latency_floor_s: dict[int, float]  # by priority: no schedule's p50 run latency is lower
    latency: dict[int, Latency]  # by priority
    all_runs: Latency
    org_slowdown: dict[str, float]  # mean slowdown of each org's runs
    fairness: float  # worst org / best org
    utilization: float
    decide_calls: int = 0

    @property
    def makespan_ratio(self) -> float:
        return self.makespan_s / self.lower_bound_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "policy": self.policy,
            "jobs": self.jobs,
            "attempts": self.attempts,
            "passed": self.passed,
            "failed": self.failed,
            "installs": self.installs,
            "batches": self.batches,
            "makespan_s": round(self.makespan_s, 1),
            "lower_bound_s": round(self.lower_bound_s, 1),
            "makespan_over_lower_bound": round(self.makespan_ratio, 3),
            "arrival_bound_s": round(self.arrival_bound_s, 1),
            "latency_p50_floor_s": {str(p): round(v, 1) for p, v in sorted(self.latency_floor_s.items())},
            "latency": {str(p): v.as_dict() for p, v in sorted(self.latency.items())},
            "latency_all_runs": self.all_runs.as_dict(),
            "org_slowdown": {org: round(v, 3) for org, v in sorted(self.org_slowdown.items())},
            "fairness": round(self.fairness, 3),
            "utilization": round(self.utilization, 3),
        }


def percentile(values: list[float], p: float) -> float:
    """Nearest rank on the sorted values, as ``bench/common.py`` reports them."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def lower_bound(workload: Workload) -> float:
    """For each target, max(longest job + install, (first-attempt work + one
    install per group) / agents); the largest over targets."""
    capacity = _capacity(workload)
    best = 0.0
    for target, jobs in _by_target(workload.jobs).items():
        install = workload.install_seconds[target]
        groups = len({j.app_version_id for j in jobs})
        work = sum(j.duration for j in jobs)
        bound = max(max(j.duration for j in jobs) + install, (work + groups * install) / capacity[target])
        best = max(best, bound)
    return best


def arrival_bound(workload: Workload) -> float:
    """Like :func:`lower_bound`, but work cannot start before it arrives: for
    each target and each submit time t, (t - first submit) + the larger of
    (the work and group installs submitted from t on) / agents and the job
    submitted at t with its install."""
    if not workload.jobs:
        return 0.0
    start = min(j.at for j in workload.jobs)
    capacity = _capacity(workload)
    best = lower_bound(workload)
    for target, jobs in _by_target(workload.jobs).items():
        install = workload.install_seconds[target]
        jobs = sorted(jobs, key=lambda j: j.at)
        work = 0.0
        groups: set[str] = set()
        for job in reversed(jobs):  # suffix sums, latest first
            work += job.duration
            groups.add(job.app_version_id)
            best = max(
                best,
                job.at - start + job.duration + install,
                job.at - start + (work + len(groups) * install) / capacity[target],
            )
    return best


def run_bounds(workload: Workload) -> dict[str, float]:
    """The least latency each run could have: no schedule finishes a run
    sooner, whatever else is on the farm.

    A run needs its longest job and its work spread over every agent of its
    target, each paying one install if its build is new (no earlier run
    brought it to that target); and no job starts before its submission nor
    before that install could have ended.
    """
    capacity = _capacity(workload)
    runs: dict[str, list[WorkloadJob]] = defaultdict(list)
    for job in workload.jobs:
        runs[job.run_id].append(job)
    first_seen: dict[tuple[str, str], float] = {}
    for job in workload.jobs:
        key = (job.app_version_id, job.target)
        first_seen[key] = min(first_seen.get(key, job.at), job.at)
    bounds: dict[str, float] = {}
    for run_id, members in runs.items():
        start = min(j.at for j in members)
        target = members[0].target
        fresh = all(first_seen[(j.app_version_id, j.target)] >= start for j in members)
        install = workload.install_seconds[target] if fresh else 0.0
        work = sum(j.duration for j in members)
        spread = install + max(max(j.duration for j in members), work / capacity[target])
        arrival = max(max(j.at - start, install) + j.duration for j in members)
        bounds[run_id] = max(spread, arrival)
    return bounds


def latency_floor(workload: Workload) -> dict[int, float]:
    """Per priority, the p50 of :func:`run_bounds`: no schedule's p50 run
    latency is below it (each run's latency is at least its bound, so the
    sorted latencies are at least the sorted bounds)."""
    by_priority: dict[int, list[float]] = defaultdict(list)
    priority: dict[str, int] = {}
    for job in workload.jobs:
        priority[job.run_id] = min(priority.get(job.run_id, job.priority), job.priority)
    for run_id, bound in run_bounds(workload).items():
        by_priority[priority[run_id]].append(bound)
    return {p: percentile(v, 50) for p, v in sorted(by_priority.items())}


def _capacity(workload: Workload) -> Counter[str]:
    capacity: Counter[str] = Counter()
    for agent in workload.agents:
        capacity[agent.target] += agent.slots
    return capacity


def _by_target(jobs: list[WorkloadJob]) -> dict[str, list[WorkloadJob]]:
    out: dict[str, list[WorkloadJob]] = defaultdict(list)
    for job in jobs:
        out[job.target].append(job)
    return out


@dataclass(slots=True)
class World:
    """What happened, as the agents saw it: the input to :func:`_report`."""

    ended: list[float]
    attempts: list[int]
    passed: list[bool]
    installs: int = 0
    batches: int = 0
    busy_s: float = 0.0
    decide_calls: int = 0


def _report(workload: Workload, policy_name: str, world: World) -> Report:
    jobs = workload.jobs
    capacity = _capacity(workload)
    start = min((j.at for j in jobs), default=0.0)
    makespan = max(world.ended, default=start) - start
    runs: dict[str, list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        runs[job.run_id].append(i)
    by_priority: dict[int, list[float]] = defaultdict(list)
    by_org: dict[str, list[float]] = defaultdict(list)
    for members in runs.values():
        first = jobs[members[0]]
        latency = max(world.ended[i] for i in members) - min(jobs[i].at for i in members)
        by_priority[min(jobs[i].priority for i in members)].append(latency)
        # alone: one install, then its work spread over the target's agents
        target = first.target
        work = sum(jobs[i].duration for i in members)
        alone = workload.install_seconds[target] + max(max(jobs[i].duration for i in members), work / capacity[target])
        by_org[first.org_id].append(latency / alone)
    org_slowdown = {org: sum(v) / len(v) for org, v in by_org.items()}
    slowest = max(org_slowdown.values(), default=1.0)
    fastest = min(org_slowdown.values(), default=1.0)
    available = sum(capacity.values()) * makespan
    return Report(
        workload=workload.name,
        policy=policy_name,
        jobs=len(jobs),
        attempts=sum(world.attempts),
        passed=sum(world.passed),
        failed=len(jobs) - sum(world.passed),
        installs=world.installs,
        batches=world.batches,
        makespan_s=makespan,
        lower_bound_s=lower_bound(workload),
        arrival_bound_s=arrival_bound(workload),
        latency_floor_s=latency_floor(workload),
        latency={p: Latency.of(v) for p, v in sorted(by_priority.items())},
        all_runs=Latency.of([x for v in by_priority.values() for x in v]),
        org_slowdown=org_slowdown,
        fairness=slowest / fastest if fastest > 0 else math.inf,
        utilization=world.busy_s / available if available > 0 else 0.0,
        decide_calls=world.decide_calls,
    )


def simulate(workload: Workload, policy_name: str = "qgjob", config: policy.Config | None = None) -> Report:
    """Run ``workload`` under one policy in virtual time and measure it."""
    if policy_name == "qgjob":
        world = PolicyWorld(workload, config or policy.Config()).run()
    elif policy_name in ("fifo", "per-job-install"):
        world = _fifo(workload, per_job_install=policy_name == "per-job-install")
    else:
        raise ValueError(f"unknown policy {policy_name!r}; one of {', '.join(POLICIES)}")
    return _report(workload, policy_name, world)


def _outcome(job: WorkloadJob, attempt: int) -> bool:
    """Whether attempt number ``attempt`` (1-based) passes."""
    return job.outcomes[min(attempt, len(job.outcomes)) - 1] == "pass"


# --- baselines ---------------------------------------------------------------------


def _fifo(workload: Workload, *, per_job_install: bool) -> World:
    jobs = workload.jobs
    world = World(ended=[0.0] * len(jobs), attempts=[0] * len(jobs), passed=[False] * len(jobs))
    counter = itertools.count()
    # (time, tie, what): arrivals are job indexes >= 0; an agent slot ending its job is -1 - slot
    timeline: list[tuple[float, int, int]] = [(j.at, next(counter), i) for i, j in enumerate(jobs)]
    heapq.heapify(timeline)
    slots = [(a.id, a.target) for a in workload.agents for _ in range(a.slots)]
    build: dict[str, str | None] = {a.id: None for a in workload.agents}
    running: list[int | None] = [None] * len(slots)
    queues: dict[str, list[tuple[int, float, int, int]]] = defaultdict(list)  # (priority, queued at, tie, job)

    def dispatch(now: float) -> None:
        for n, (agent_id, target) in enumerate(slots):
            queue = queues[target]
            if running[n] is not None or not queue:
                continue
            i = heapq.heappop(queue)[3]
            job = jobs[i]
            took = job.duration
            if per_job_install or build[agent_id] != job.app_version_id:
                world.installs += 1
                world.batches += 1
                took += workload.install_seconds[target]
                build[agent_id] = job.app_version_id
            running[n] = i
            world.busy_s += took
            heapq.heappush(timeline, (now + took, next(counter), -1 - n))

    while timeline:
        now = timeline[0][0]
        retries: list[int] = []
        while timeline and timeline[0][0] == now:
            _, _, what = heapq.heappop(timeline)
            if what >= 0:
                job = jobs[what]
                heapq.heappush(queues[job.target], (job.priority, now, next(counter), what))
                continue
            n = -1 - what
            i = running[n]
            running[n] = None
            if i is None:
                continue
            world.attempts[i] += 1
            job = jobs[i]
            if _outcome(job, world.attempts[i]):
                world.passed[i] = True
                world.ended[i] = now
            elif world.attempts[i] > workload.retries(job):
                world.ended[i] = now
            else:
                retries.append(i)
        dispatch(now)
        for i in retries:
            heapq.heappush(queues[jobs[i].target], (jobs[i].priority, now, next(counter), i))
        if retries:
            dispatch(now)
    return world


# --- qgjob: the policy core in virtual time ----------------------------------------------


@dataclass(slots=True)
class _BatchRun:
    decision: policy.Assign
    index: int = 0  # the job running now


@dataclass(slots=True)
class PolicyWorld:
    """The farm of a workload driven by the policy core: each decision is
    recorded as the scheduler service would record it, and agents install and
    run their batches in virtual time, reporting as the live agent does.
    Tests subclass it to watch the events (``feed``) and decisions (``decide``)."""

    workload: Workload
    config: policy.Config
    state: policy.State = field(init=False)
    world: World = field(init=False)
    seq: int = 0
    timeline: list[tuple[float, int, Callable[[float], None]]] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=itertools.count)
    index: dict[str, int] = field(default_factory=dict)  # job id -> workload index
    batch_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        n = len(self.workload.jobs)
        self.state = policy.State(config=self.config)
        self.world = World(ended=[0.0] * n, attempts=[0] * n, passed=[False] * n)

    def run(self) -> World:
        for agent in self.workload.agents:
            self.feed(AgentRegistered(agent_id=agent.id, target=agent.target, slots=agent.slots), 0.0)
        for i, job in enumerate(self.workload.jobs):
            self.at(job.at, lambda now, i=i: self.submit(i, now))
        while self.timeline:
            now = self.timeline[0][0]
            while self.timeline and self.timeline[0][0] == now:
                heapq.heappop(self.timeline)[2](now)
            self.decide(now)
        return self.world

    def at(self, when: float, action: Callable[[float], None]) -> None:
        heapq.heappush(self.timeline, (when, next(self.counter), action))

    def feed(self, event: Event, now: float) -> None:
        self.seq += 1
        policy.apply(self.state, self.seq, event)

    def stamp(self, now: float) -> datetime:
        return datetime.fromtimestamp(EPOCH + now, UTC)

    def submit(self, i: int, now: float) -> None:
        job = self.workload.jobs[i]
        job_id = f"job_{i:06d}"
        self.index[job_id] = i
        self.feed(
            JobSubmitted(
                job_id=job_id,
                at=self.stamp(now),
                org_id=job.org_id,
                app_version_id=job.app_version_id,
                test=job.test,
                target=job.target,
                priority=job.priority,
                max_retries=self.workload.retries(job),
                run_id=job.run_id,
            ),
            now,
        )

    def decide(self, now: float) -> None:
        while True:
            self.world.decide_calls += 1
            decisions = policy.decide(self.state, EPOCH + now, lambda: f"bat_{next(self.batch_ids)}")
            if not decisions:
                return
            for decision in decisions:
                self.record(decision, now)

    def record(self, decision: policy.Decision, now: float) -> None:
        """What the scheduler service publishes, and the agent taking it up."""
        events = policy.decision_events(decision, lambda t: self.stamp(max(t - EPOCH, now)), at=self.stamp(now))
        for event in events:
            self.feed(event, now)
        if isinstance(decision, policy.Assign):
            self.world.batches += 1
            run = _BatchRun(decision)
            if decision.install:
                self.world.installs += 1
                took = self.workload.install_seconds[decision.target]
                self.world.busy_s += took
                self.at(now + took, lambda t: self.installed(run, took, t))
            else:
                self.start(run, now)
        elif isinstance(decision, policy.ScheduleRetry):
            not_before = max(decision.not_before - EPOCH, now)
            if not_before > now:
                self.at(not_before, lambda t: None)  # wake the scheduler when the backoff ends
        elif isinstance(decision, policy.GiveUp):
            self.world.ended[self.index[decision.job_id]] = now

    def installed(self, run: _BatchRun, took: float, now: float) -> None:
        d = run.decision
        self.feed(
            AppInstalled(
                batch_id=d.batch_id,
                at=self.stamp(now),
                agent_id=d.agent_id,
                app_version_id=d.app_version_id,
                target=d.target,
                duration_ms=round(took * 1000),
            ),
            now,
        )
        self.start(run, now)

    def start(self, run: _BatchRun, now: float) -> None:
        """Start the batch's next job, or finish the batch."""
        d = run.decision
        if run.index >= len(d.jobs):
            self.feed(BatchFinished(batch_id=d.batch_id, at=self.stamp(now), agent_id=d.agent_id), now)
            return
        bj = d.jobs[run.index]
        job = self.workload.jobs[self.index[bj.job_id]]
        self.feed(
            JobStarted(
                job_id=bj.job_id, at=self.stamp(now), batch_id=d.batch_id, agent_id=d.agent_id, attempt=bj.attempt
            ),
            now,
        )
        self.world.busy_s += job.duration
        self.at(now + job.duration, lambda t: self.finish(run, t))

    def finish(self, run: _BatchRun, now: float) -> None:
        d = run.decision
        bj = d.jobs[run.index]
        i = self.index[bj.job_id]
        job = self.workload.jobs[i]
        self.world.attempts[i] += 1
        at = self.stamp(now)
        ms = round(job.duration * 1000)
        if _outcome(job, bj.attempt):
            self.feed(
                JobPassed(
                    job_id=bj.job_id,
                    at=at,
                    batch_id=d.batch_id,
                    agent_id=d.agent_id,
                    attempt=bj.attempt,
                    duration_ms=ms,
                ),
                now,
            )
            self.world.passed[i] = True
            self.world.ended[i] = now
        else:
            final = bj.failures + 1 > bj.max_retries
            self.feed(
                JobFailed(
                    job_id=bj.job_id,
                    at=at,
                    batch_id=d.batch_id,
                    agent_id=d.agent_id,
                    attempt=bj.attempt,
                    duration_ms=ms,
                    error="simulated failure",
                    final=final,
                ),
                now,
            )
            if final:
                self.world.ended[i] = now
        run.index += 1
        self.start(run, now)
