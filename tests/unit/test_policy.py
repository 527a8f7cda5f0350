"""The scheduler's pure policy core: state + event -> state, state -> decisions.

Driven with real event objects from ``eventstore.events`` and a fake stream
sequence; no servers, no clock, no randomness except hypothesis's.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore.events import (
    AgentLost,
    AgentRegistered,
    AgentStopped,
    BatchAssigned,
    BatchFinished,
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
from scheduler.policy import (
    Assign,
    Config,
    Decision,
    GiveUp,
    Requeue,
    ScheduleRetry,
    State,
    apply,
    decide,
    reject,
)

NOW = 1_000_000.0


class Sim:
    """A stream in miniature: feeds events with increasing sequences, turns
    decisions into the events the scheduler service would record."""

    def __init__(self, **config: float) -> None:
        self.state = State(config=Config(**config))  # type: ignore[arg-type]
        self.seq = 0
        self.last_seq: dict[str, int] = {}  # last sequence on each job's subject
        self._batch_ids = itertools.count(1)
        self.now = NOW

    # --- feeding events ---------------------------------------------------

    def feed(self, *events: Event) -> None:
        for event in events:
            self.seq += 1
            job_id = getattr(event, "job_id", None)
            if job_id is not None:
                self.last_seq[job_id] = self.seq
            apply(self.state, self.seq, event)

    def submit(
        self,
        job_id: str,
        app: str = "v1",
        target: str = "emulator",
        priority: int = 5,
        *,
        org: str = "acme",
        max_retries: int = 3,
        test: str | None = None,
        run: str = "run_1",
        seconds: float | None = None,
    ) -> None:
        """Submit a job; with ``seconds``, its test is known to take that long."""
        test = test or f"tests/{job_id}.spec.js"
        if seconds is not None:
            self.state.estimates.learn(org, test, target, run, seconds)
        self.feed(
            JobSubmitted(
                job_id=job_id,
                org_id=org,
                app_version_id=app,
                test=test,
                target=target,
                priority=priority,
                max_retries=max_retries,
                run_id=run,
            )
        )

    def register(self, agent_id: str, target: str = "emulator", slots: int = 1) -> None:
        self.feed(AgentRegistered(agent_id=agent_id, target=target, slots=slots))

    # --- deciding -----------------------------------------------------------

    def decide(self, now: float | None = None) -> list[Decision]:
        return decide(self.state, self.now if now is None else now, lambda: f"bat_{next(self._batch_ids)}")

    def assigns(self, now: float | None = None) -> list[Assign]:
        decisions = self.decide(now)
        assert all(isinstance(d, Assign) for d in decisions), decisions
        return decisions  # type: ignore[return-value]

    def record(self, decision: Decision) -> None:
        """Record a decision as the service would (it was accepted)."""
        if isinstance(decision, Assign):
            for job, expected in zip(decision.jobs, decision.expected, strict=True):
                assert expected == self.last_seq[job.job_id], "fencing sequence must be the job subject's last"
            self.feed(
                BatchAssigned(
                    batch_id=decision.batch_id,
                    agent_id=decision.agent_id,
                    app_version_id=decision.app_version_id,
                    target=decision.target,
                    jobs=list(decision.jobs),
                    install=decision.install,
                )
            )
            for job in decision.jobs:
                self.feed(JobAssigned(job_id=job.job_id, batch_id=decision.batch_id, agent_id=decision.agent_id))
        elif isinstance(decision, ScheduleRetry):
            assert decision.expected == self.last_seq[decision.job_id]
            self.feed(
                JobRetryScheduled(
                    job_id=decision.job_id,
                    attempt=decision.attempt,
                    not_before=datetime.fromtimestamp(decision.not_before, UTC),
                )
            )
        elif isinstance(decision, GiveUp):
            assert decision.expected == self.last_seq[decision.job_id]
            self.feed(JobErrored(job_id=decision.job_id, error=decision.error))
        else:
            assert decision.expected == self.last_seq[decision.job_id]
            self.feed(JobRequeued(job_id=decision.job_id, reason=decision.reason))

    def start(self, a: Assign, job_id: str) -> int:
        job = next(j for j in a.jobs if j.job_id == job_id)
        self.feed(JobStarted(job_id=job_id, batch_id=a.batch_id, agent_id=a.agent_id, attempt=job.attempt))
        return job.attempt

    def pass_job(self, a: Assign, job_id: str) -> None:
        attempt = self.start(a, job_id)
        self.feed(JobPassed(job_id=job_id, batch_id=a.batch_id, agent_id=a.agent_id, attempt=attempt, duration_ms=10))

    def fail_job(self, a: Assign, job_id: str, *, final: bool = False) -> None:
        attempt = self.start(a, job_id)
        self.feed(
            JobFailed(
                job_id=job_id,
                batch_id=a.batch_id,
                agent_id=a.agent_id,
                attempt=attempt,
                duration_ms=10,
                error="boom",
                final=final,
            )
        )

    def finish(self, a: Assign) -> None:
        self.feed(BatchFinished(batch_id=a.batch_id, agent_id=a.agent_id))

    def run_all(self, a: Assign) -> None:
        for job in a.jobs:
            self.pass_job(a, job.job_id)
        self.finish(a)

    def group_of(self, job_id: str) -> tuple[str, str]:
        return self.state.jobs[job_id].group


def ids(a: Assign) -> list[str]:
    return [j.job_id for j in a.jobs]


# --- grouping ---------------------------------------------------------------------


def test_assign_never_mixes_groups_and_matches_the_agent_target() -> None:
    sim = Sim()
    n = 0
    for app in ("v1", "v2"):
        for target in ("emulator", "device", "browserstack"):
            for _ in range(3):
                n += 1
                sim.submit(f"job_{n:02d}", app, target)
    sim.register("agt_emu_1", "emulator")
    sim.register("agt_emu_2", "emulator")
    sim.register("agt_dev_1", "device")
    sim.register("agt_bs_1", "browserstack")
    sim.register("agt_bs_2", "browserstack")
    assigns = sim.assigns()
    assert len(assigns) == 5
    agents = {a.agent_id: a for a in assigns}
    assert set(agents) == {"agt_emu_1", "agt_emu_2", "agt_dev_1", "agt_bs_1", "agt_bs_2"}
    for a in assigns:
        agent_target = sim.state.agents[a.agent_id].target
        assert a.target == agent_target
        assert {sim.group_of(j) for j in ids(a)} == {(a.app_version_id, a.target)}
        assert len(a.jobs) == 3  # the whole group in one batch
    # the two emulator agents got the two different emulator groups
    assert {agents["agt_emu_1"].app_version_id, agents["agt_emu_2"].app_version_id} == {"v1", "v2"}


def test_agent_of_another_target_gets_nothing() -> None:
    sim = Sim()
    sim.submit("job_1", "v1", "device")
    sim.register("agt_1", "emulator")
    assert sim.decide() == []
    sim.register("agt_2", "device")
    (a,) = sim.assigns()
    assert a.agent_id == "agt_2"
    assert ids(a) == ["job_1"]


def test_no_agent_no_work() -> None:
    sim = Sim()
    for i in range(5):
        sim.submit(f"job_{i}", f"v{i % 2}", "emulator")
    assert sim.decide() == []
    assert sim.decide() == []
    assert all(j.status == "queued" for j in sim.state.jobs.values())


def test_no_work_no_decisions() -> None:
    sim = Sim()
    sim.register("agt_1")
    assert sim.decide() == []


# --- order ----------------------------------------------------------------------


def test_lower_priority_number_first_across_groups() -> None:
    sim = Sim()
    sim.submit("job_low", "v1", priority=9)
    sim.submit("job_mid", "v2", priority=5)
    sim.submit("job_high", "v3", priority=0)
    sim.register("agt_1")
    order = []
    for _ in range(3):
        (a,) = sim.assigns()
        order.append(ids(a))
        sim.record(a)
        sim.run_all(a)
    assert order == [["job_high"], ["job_mid"], ["job_low"]]
    assert sim.decide() == []


def test_priority_is_per_target() -> None:
    """An urgent device job does not hold back emulator work."""
    sim = Sim()
    sim.submit("job_emu", "v1", "emulator", priority=9)
    sim.submit("job_dev", "v1", "device", priority=0)
    sim.register("agt_emu", "emulator")
    (a,) = sim.assigns()
    assert ids(a) == ["job_emu"]


def test_fifo_within_a_priority() -> None:
    sim = Sim(max_batch=2)
    for i in range(6):
        sim.submit(f"job_{i}", "v1", priority=3)
    sim.register("agt_1")
    seen = []
    for _ in range(3):
        (a,) = sim.assigns()
        seen.append(ids(a))
        sim.record(a)
        sim.run_all(a)
    assert seen == [["job_0", "job_1"], ["job_2", "job_3"], ["job_4", "job_5"]]


def test_fifo_across_groups_of_equal_priority() -> None:
    sim = Sim()
    sim.submit("job_b1", "vB")
    sim.submit("job_a1", "vA")
    sim.submit("job_b2", "vB")
    sim.register("agt_1")
    (first,) = sim.assigns()
    # vB's head was submitted first, so vB goes first (and takes its later job too)
    assert first.app_version_id == "vB"
    assert ids(first) == ["job_b1", "job_b2"]


def test_batch_is_ordered_by_priority_then_submission() -> None:
    # batch_s: room for all five (a batch holds about batch_s of estimated work)
    sim = Sim(batch_s=3600)
    sim.submit("job_p5_a", priority=5)
    sim.submit("job_p1_a", priority=1)
    sim.submit("job_p5_b", priority=5)
    sim.submit("job_p1_b", priority=1)
    sim.submit("job_p0", priority=0)
    sim.register("agt_1")
    (a,) = sim.assigns()
    assert ids(a) == ["job_p0", "job_p1_a", "job_p1_b", "job_p5_a", "job_p5_b"]


# --- affinity and installs ----------------------------------------------------------


def _installed(sim: Sim, agent_id: str, app: str, target: str = "emulator") -> None:
    """Make ``agent_id`` hold ``app``: one batch of it, run and finished."""
    sim.submit(f"warmup_{app}_{agent_id}", app, target)
    (a,) = sim.assigns()
    assert a.agent_id == agent_id and a.app_version_id == app
    sim.record(a)
    sim.run_all(a)
    assert sim.state.agents[agent_id].installed == app


def test_first_batch_installs() -> None:
    sim = Sim()
    sim.submit("job_1", "v1")
    sim.register("agt_1")
    (a,) = sim.assigns()
    assert a.install is True


def test_affinity_keeps_the_installed_build_at_the_best_priority() -> None:
    sim = Sim()
    sim.register("agt_1")
    _installed(sim, "agt_1", "vX")
    sim.submit("job_y", "vY", priority=2)  # older...
    sim.submit("job_x", "vX", priority=2)  # ...but the agent already has vX
    (a,) = sim.assigns()
    assert a.app_version_id == "vX"
    assert ids(a) == ["job_x"]
    assert a.install is False
    sim.record(a)
    sim.run_all(a)
    (b,) = sim.assigns()
    assert b.app_version_id == "vY"
    assert b.install is True


def test_affinity_does_not_beat_priority() -> None:
    sim = Sim()
    sim.register("agt_1")
    _installed(sim, "agt_1", "vX")
    sim.submit("job_x", "vX", priority=5)
    sim.submit("job_y", "vY", priority=1)
    (a,) = sim.assigns()
    assert a.app_version_id == "vY"
    assert a.install is True


def test_affinity_counts_the_group_best_waiting_priority() -> None:
    """Group vX has a job at the best waiting priority, even if its oldest job
    is less urgent: the agent keeps vX."""
    sim = Sim()
    sim.register("agt_1")
    _installed(sim, "agt_1", "vX")
    sim.submit("job_y", "vY", priority=1)
    sim.submit("job_x_low", "vX", priority=7)
    sim.submit("job_x_high", "vX", priority=1)
    (a,) = sim.assigns()
    assert a.app_version_id == "vX"
    assert a.install is False
    # the priority-7 job does not ride along ahead of vY's priority-1 job
    assert ids(a) == ["job_x_high"]


def test_lower_priority_jobs_ride_along_when_nothing_else_is_more_urgent() -> None:
    sim = Sim()
    sim.register("agt_1")
    sim.submit("job_x_high", "vX", priority=1)
    sim.submit("job_x_low", "vX", priority=7)
    sim.submit("job_y", "vY", priority=7)
    (a,) = sim.assigns()
    assert ids(a) == ["job_x_high", "job_x_low"]


def test_same_build_on_each_agent_needs_no_reinstall() -> None:
    # spare_gain_installs=0: the idle second agent splits the group whenever that shortens it
    sim = Sim(max_batch=1, spare_gain_installs=0)
    sim.register("agt_1")
    sim.register("agt_2")
    for i in range(4):
        sim.submit(f"job_{i}", "v1")
    first = sim.assigns()
    assert [a.install for a in first] == [True, True]
    for a in first:
        sim.record(a)
        sim.run_all(a)
    second = sim.assigns()
    assert [a.install for a in second] == [False, False]


def test_replayed_batch_assigned_sets_installed_build() -> None:
    """State rebuilt by replay knows what each agent has installed."""
    sim = Sim()
    sim.register("agt_1")
    sim.submit("job_0", "vX")
    (a,) = sim.assigns()
    sim.record(a)
    sim.run_all(a)

    replayed = Sim()
    replayed.register("agt_1")
    replayed.submit("job_0", "vX")
    replayed.record(a)  # the recorded BatchAssigned, read back from the stream
    replayed.run_all(a)
    assert replayed.state.agents["agt_1"].installed == "vX"
    replayed.submit("job_1", "vX")
    (b,) = replayed.assigns()
    assert b.install is False


# --- batch size and slots ---------------------------------------------------------


def test_max_batch_is_respected_and_splits_across_agents() -> None:
    # spare_gain_installs=0: idle agents split the group whenever that shortens it
    sim = Sim(max_batch=3, spare_gain_installs=0)
    for i in range(7):
        sim.submit(f"job_{i}", "v1")
    sim.register("agt_1")
    sim.register("agt_2")
    sim.register("agt_3")
    sim.register("agt_4")
    assigns = sim.assigns()
    assert [len(a.jobs) for a in assigns] == [3, 3, 1]
    assert [ids(a) for a in assigns] == [["job_0", "job_1", "job_2"], ["job_3", "job_4", "job_5"], ["job_6"]]
    assert len({a.agent_id for a in assigns}) == 3


def test_max_batch_with_one_agent_leaves_the_rest_waiting() -> None:
    sim = Sim(max_batch=3)
    for i in range(7):
        sim.submit(f"job_{i}", "v1")
    sim.register("agt_1")
    (a,) = sim.assigns()
    assert len(a.jobs) == 3
    assert sim.decide() == []
    assert sum(1 for j in sim.state.jobs.values() if j.status == "queued") == 4


def test_agent_with_two_slots_gets_two_batches() -> None:
    sim = Sim()
    sim.submit("job_a", "vA")
    sim.submit("job_b", "vB")
    sim.submit("job_c", "vC")
    sim.register("agt_1", slots=2)
    assigns = sim.assigns()
    assert len(assigns) == 2
    assert {a.agent_id for a in assigns} == {"agt_1"}
    assert [a.app_version_id for a in assigns] == ["vA", "vB"]
    assert sim.decide() == []  # both slots busy
    sim.record(assigns[0])
    sim.run_all(assigns[0])
    (third,) = sim.assigns()
    assert third.app_version_id == "vC"


def test_two_slots_split_a_large_group() -> None:
    sim = Sim(max_batch=2)
    for i in range(4):
        sim.submit(f"job_{i}", "v1")
    sim.register("agt_1", slots=2)
    assigns = sim.assigns()
    assert [ids(a) for a in assigns] == [["job_0", "job_1"], ["job_2", "job_3"]]
    assert assigns[0].install is True
    assert assigns[1].install is False  # same agent, same build


def test_urgent_run_gets_the_agents_that_pay_for_their_install() -> None:
    """An urgent run gets every agent that shortens it by enough install
    times: a large one the whole target, a small one not an agent per job."""
    for jobs, agents in ((40, 4), (4, 1)):
        sim = Sim(spare_gain_installs=1000)  # no spare-capacity joins: only the urgent rule splits
        for i in range(jobs):
            sim.submit(f"job_{i}", "v1", priority=1)
        for k in range(4):
            sim.register(f"agt_{k}")
        assigns = sim.assigns()
        assert len(assigns) == agents, (jobs, [ids(a) for a in assigns])
        assert sum(len(a.jobs) for a in assigns) <= jobs


@pytest.mark.parametrize("priority", [1, 5])
def test_an_install_value_keeps_agents_off_runs_they_shorten_too_little(priority: int) -> None:
    """Valued at its duration an install is worth paying for a second agent
    on a 40-job run (urgent or idle capacity); valued at an hour, it is not:
    one agent runs the whole group."""
    agents = {}
    for value in (0.0, 3600.0):
        sim = Sim(install_value_s=value)
        for i in range(40):
            sim.submit(f"job_{i}", "v1", priority=priority)
        for k in range(4):
            sim.register(f"agt_{k}")
        agents[value] = len(sim.assigns())
    assert agents[0.0] > 1
    assert agents[3600.0] == 1


# --- no double assignment, reject -----------------------------------------------------


def test_deciding_twice_assigns_nothing_new() -> None:
    sim = Sim()
    for i in range(3):
        sim.submit(f"job_{i}", "v1")
    sim.register("agt_1")
    sim.register("agt_2")
    first = sim.assigns()
    assert len(first) == 1
    assert sim.decide() == []
    # recording the accepted decision does not free anything either
    sim.record(first[0])
    assert sim.decide() == []


def test_new_jobs_do_not_go_to_a_busy_agent() -> None:
    sim = Sim()
    sim.submit("job_0", "v1")
    sim.register("agt_1")
    (a,) = sim.assigns()
    sim.record(a)
    sim.submit("job_1", "v1")
    assert sim.decide() == []
    sim.run_all(a)
    (b,) = sim.assigns()
    assert ids(b) == ["job_1"]


def test_reject_assign_puts_jobs_back_and_they_are_reassigned() -> None:
    sim = Sim()
    sim.submit("job_0", "v1")
    sim.submit("job_1", "v1")
    sim.register("agt_1")
    (a,) = sim.assigns()
    assert sim.state.agents["agt_1"].installed == "v1"
    reject(sim.state, a)
    assert all(j.status == "queued" and j.batch_id is None for j in sim.state.jobs.values())
    assert sim.state.agents["agt_1"].installed is None
    assert sim.state.agents["agt_1"].batches == set()
    assert a.batch_id not in sim.state.batches
    (b,) = sim.assigns()
    assert b.batch_id != a.batch_id
    assert ids(b) == ids(a)
    assert b.install is True  # the rejected batch never installed anything
    assert b.expected == a.expected
    sim.record(b)
    sim.run_all(b)
    assert sim.decide() == []


def test_rejecting_every_batch_of_an_agent_forgets_their_installs() -> None:
    sim = Sim()
    sim.submit("job_x", "vX")
    sim.submit("job_y", "vY")
    sim.register("agt_1", slots=2)
    first = sim.assigns()
    assert [a.app_version_id for a in first] == ["vX", "vY"]
    for a in first:  # the store was unreachable: both publishes failed
        reject(sim.state, a)
    assert sim.state.agents["agt_1"].installed is None
    again = sim.assigns()
    assert [a.install for a in again] == [True, True]


def test_reject_assign_after_job_moved_on_does_not_requeue_it() -> None:
    """The store refused the batch because a job was cancelled meanwhile."""
    sim = Sim()
    sim.submit("job_0", "v1")
    sim.submit("job_1", "v1")
    sim.register("agt_1")
    (a,) = sim.assigns()
    sim.feed(JobCancelled(job_id="job_0"))
    reject(sim.state, a)
    (b,) = sim.assigns()
    assert ids(b) == ["job_1"]


def test_reject_schedule_retry_and_requeue_are_reconsidered() -> None:
    sim = Sim()
    sim.submit("job_0", "v1")
    sim.submit("job_1", "v1")
    sim.register("agt_1")
    (a,) = sim.assigns()
    sim.record(a)
    sim.fail_job(a, "job_0")
    sim.start(a, "job_1")
    sim.finish(a)  # job_1 was still running: orphaned
    decisions = sim.decide()
    retry = next(d for d in decisions if isinstance(d, ScheduleRetry))
    requeue = next(d for d in decisions if isinstance(d, Requeue))
    assert sim.decide() == []
    reject(sim.state, retry)
    reject(sim.state, requeue)
    again = sim.decide()
    assert again == [retry, requeue]


# --- retries ----------------------------------------------------------------------------


def test_non_final_failure_schedules_a_retry_and_requeues_the_job() -> None:
    sim = Sim()
    sim.submit("job_0", "v1", max_retries=3)
    sim.register("agt_1")
    (a,) = sim.assigns()
    assert a.jobs[0].attempt == 1
    assert a.jobs[0].max_retries == 3
    sim.record(a)
    sim.fail_job(a, "job_0")
    sim.finish(a)
    decisions = sim.decide()
    assert decisions == [ScheduleRetry("job_0", 2, NOW, sim.last_seq["job_0"])]
    assert sim.decide() == []  # asked once
    assert sim.state.jobs["job_0"].status == "retrying"
    sim.record(decisions[0])
    assert sim.state.jobs["job_0"].status == "queued"
    (b,) = sim.assigns()
    assert ids(b) == ["job_0"]
    assert b.jobs[0].attempt == 2
    assert b.install is False


def test_retry_backoff_delays_the_job() -> None:
    sim = Sim(retry_backoff_s=10.0)
    sim.submit("job_0", "v1")
    sim.register("agt_1")
    attempt_waits = []
    for _attempt in range(3):
        (a,) = sim.assigns(sim.now)
        sim.record(a)
        sim.fail_job(a, "job_0")
        sim.finish(a)
        (retry,) = sim.decide(sim.now)
        assert isinstance(retry, ScheduleRetry)
        attempt_waits.append(retry.not_before - sim.now)
        sim.record(retry)
        assert sim.decide(retry.not_before - 0.5) == []  # still backing off
        sim.now = retry.not_before + 0.001
    # exponential, each with jitter in [0.5, 1.5) of 10, 20, 40 s
    for wait, base in zip(attempt_waits, (10.0, 20.0, 40.0), strict=True):
        assert 0.5 * base <= wait < 1.5 * base


def test_retry_backoff_does_not_block_other_jobs() -> None:
    sim = Sim(retry_backoff_s=60.0)
    sim.submit("job_0", "v1", priority=0)
    sim.register("agt_1")
    (a,) = sim.assigns()
    sim.record(a)
    sim.fail_job(a, "job_0")
    sim.finish(a)
    (retry,) = sim.decide()
    sim.record(retry)
    sim.submit("job_1", "v1", priority=9)
    (b,) = sim.assigns()
    assert ids(b) == ["job_1"]


@pytest.mark.parametrize(
    "terminal",
    ["passed", "failed_final", "cancelled", "errored"],
)
def test_terminal_job_is_never_assigned_again(terminal: str) -> None:
    sim = Sim()
    sim.submit("job_0", "v1")
    sim.register("agt_1")
    (a,) = sim.assigns()
    sim.record(a)
    if terminal == "passed":
        sim.pass_job(a, "job_0")
    elif terminal == "failed_final":
        sim.fail_job(a, "job_0", final=True)
    elif terminal == "cancelled":
        sim.start(a, "job_0")
        sim.feed(JobCancelled(job_id="job_0"))
    else:
        sim.feed(JobErrored(job_id="job_0", error="emulator crashed 3 times"))
    sim.finish(a)
    assert sim.decide() == []
    # nothing brings it back: not a replayed submission, a stale requeue, a retry
    sim.submit("job_0", "v1")
    sim.feed(JobRequeued(job_id="job_0", reason="stale"))
    sim.feed(JobRetryScheduled(job_id="job_0", attempt=9, not_before=datetime.fromtimestamp(NOW, UTC)))
    sim.feed(
        JobFailed(job_id="job_0", batch_id="x", agent_id="agt_1", attempt=9, duration_ms=1, error="late", final=False)
    )
    sim.feed(JobAssigned(job_id="job_0", batch_id="bat_x", agent_id="agt_1"))
    assert sim.decide() == []
    assert "job_0" not in sim.state.jobs and "job_0" in sim.state.finished  # ended, and remembered


def test_finished_jobs_leave_the_state_and_only_the_latest_ids_are_kept() -> None:
    """A long-running scheduler holds only unfinished jobs, and a bounded
    memory of which ones finished."""
    sim = Sim(max_batch=10, batch_s=10_000, remember_finished=3)
    for n in range(5):
        sim.submit(f"job_{n}", "v1")
    sim.register("agt_1", "emulator")
    (a,) = sim.assigns()
    for job_id in ids(a)[:4]:
        sim.pass_job(a, job_id)
    assert list(sim.state.jobs) == ["job_4"]
    assert list(sim.state.finished) == ["job_1", "job_2", "job_3"]  # the oldest forgotten first
    sim.submit("job_3", "v1")  # remembered: a stray submission does not revive it
    assert list(sim.state.jobs) == ["job_4"]


def test_cancelled_while_queued_is_not_assigned() -> None:
    sim = Sim()
    sim.submit("job_0", "v1")
    sim.submit("job_1", "v1")
    sim.feed(JobCancelled(job_id="job_0"))
    sim.register("agt_1")
    (a,) = sim.assigns()
    assert ids(a) == ["job_1"]


def test_cancel_while_a_retry_is_pending_schedules_no_retry() -> None:
    """A job cancelled between its failed attempt and the scheduler's next
    decision must not get a JobRetryScheduled recorded after its
    JobCancelled (the fence would accept it: it names the cancel's sequence)."""
    sim = Sim()
    sim.submit("job_0", "v1")
    sim.register("agt_1")
    (a,) = sim.assigns()
    sim.record(a)
    sim.fail_job(a, "job_0")
    sim.feed(JobCancelled(job_id="job_0"))
    sim.finish(a)
    assert sim.decide() == []


def test_failure_during_a_run_does_not_hold_the_rest_of_the_batch() -> None:
    sim = Sim()
    for i in range(3):
        sim.submit(f"job_{i}", "v1")
    sim.register("agt_1")
    (a,) = sim.assigns()
    sim.record(a)
    sim.fail_job(a, "job_0")
    sim.pass_job(a, "job_1")
    sim.pass_job(a, "job_2")
    sim.finish(a)
    decisions = sim.decide()
    assert [type(d) for d in decisions] == [ScheduleRetry]


def test_infrastructure_requeue_does_not_use_the_retry_budget() -> None:
    sim = Sim()
    sim.submit("job_0", "v1", max_retries=1)
    sim.register("agt_1")
    sim.register("agt_2")
    (a,) = sim.assigns()
    sim.record(a)
    sim.start(a, "job_0")
    sim.feed(AgentLost(agent_id=a.agent_id))
    (requeue,) = sim.decide()
    sim.record(requeue)
    (b,) = sim.assigns()
    # the lost run counts as an attempt started, not as a failure: a real
    # failure of this attempt still leaves room for one retry
    job = b.jobs[0]
    assert job.attempt == 2
    assert job.failures == 0
    assert job.failures + 1 <= job.max_retries


def test_infrastructure_requeues_are_bounded_then_the_job_errors() -> None:
    sim = Sim(max_requeues=2)
    sim.submit("job_0", "v1")
    for n in range(3):
        sim.register(f"agt_{n}")
    for n in range(3):
        (a,) = sim.assigns()
        sim.record(a)
        sim.start(a, "job_0")
        sim.feed(AgentLost(agent_id=a.agent_id))
        (decision,) = sim.decide()
        if n < 2:
            assert isinstance(decision, Requeue)
        else:
            assert isinstance(decision, GiveUp)
            assert "gave up after 2 infrastructure requeues" in decision.error
        sim.record(decision)
    assert "job_0" not in sim.state.jobs and "job_0" in sim.state.finished  # ended, and remembered
    assert sim.assigns() == []


# --- agents leaving, batches ending ------------------------------------------------------


@pytest.mark.parametrize("leave", [AgentStopped, AgentLost])
def test_agent_leaving_with_a_batch_in_flight_requeues_its_unfinished_jobs(leave: type) -> None:
    sim = Sim(batch_s=3600)  # one batch holds all four
    for i in range(4):
        sim.submit(f"job_{i}", "v1")
    sim.register("agt_1")
    (a,) = sim.assigns()
    sim.record(a)
    sim.pass_job(a, "job_0")
    sim.start(a, "job_1")
    sim.feed(leave(agent_id="agt_1"))
    decisions = sim.decide()
    assert all(isinstance(d, Requeue) for d in decisions)
    assert sorted(d.job_id for d in decisions) == ["job_1", "job_2", "job_3"]
    for d in decisions:
        assert d.expected == sim.last_seq[d.job_id]
        assert "agent" in d.reason
    assert sim.decide() == []  # asked once
    for d in decisions:
        sim.record(d)
    # the departed agent gets nothing; a new one gets the requeued jobs
    assert sim.decide() == []
    sim.register("agt_2")
    (b,) = sim.assigns()
    assert b.agent_id == "agt_2"
    assert ids(b) == ["job_1", "job_2", "job_3"]
    assert "job_0" not in sim.state.jobs and "job_0" in sim.state.finished  # ended, and remembered


def test_agent_restart_releases_what_it_held() -> None:
    sim = Sim()
    sim.submit("job_0", "v1")
    sim.register("agt_1")
    (a,) = sim.assigns()
    sim.record(a)
    sim.register("agt_1")  # same id registers again: it lost its work
    (requeue,) = sim.decide()
    assert isinstance(requeue, Requeue)
    assert requeue.job_id == "job_0"
    sim.record(requeue)
    (b,) = sim.assigns()
    assert b.agent_id == "agt_1"
    assert ids(b) == ["job_0"]


def test_batch_finished_with_jobs_still_assigned_requeues_them() -> None:
    sim = Sim()
    for i in range(3):
        sim.submit(f"job_{i}", "v1")
    sim.register("agt_1")
    (a,) = sim.assigns()
    sim.record(a)
    sim.pass_job(a, "job_0")
    sim.finish(a)  # the agent gave up after one job
    decisions = sim.decide()
    assert sorted((type(d), d.job_id) for d in decisions) == [(Requeue, "job_1"), (Requeue, "job_2")]
    assert all("batch finished" in d.reason for d in decisions)  # type: ignore[union-attr]
    for d in decisions:
        sim.record(d)
    (b,) = sim.assigns()
    assert ids(b) == ["job_1", "job_2"]
    assert b.install is False


def test_batch_finished_after_all_results_requeues_nothing() -> None:
    sim = Sim()
    sim.submit("job_0", "v1")
    sim.register("agt_1")
    (a,) = sim.assigns()
    sim.record(a)
    sim.run_all(a)
    assert sim.decide() == []
    assert sim.state.batches == {}
    assert sim.state.agents["agt_1"].batches == set()


def test_requeued_job_is_not_requeued_twice() -> None:
    sim = Sim()
    sim.submit("job_0", "v1")
    sim.register("agt_1")
    (a,) = sim.assigns()
    sim.record(a)
    sim.finish(a)
    (requeue,) = sim.decide()
    sim.record(requeue)
    sim.feed(AgentStopped(agent_id="agt_1"))
    assert sim.decide() == []


# --- property: a whole run ------------------------------------------------------------------

APPS = ("v1.0.0", "v2 rc", "v3/日本")
TARGETS = ("emulator", "device")
SECONDS = (10.0, 60.0, 300.0)  # what a job's test is known to take


@dataclass
class Tracker:
    """What the simulated world observed, to check the invariants."""

    holder: dict[str, str] = field(default_factory=dict)  # job -> in-flight batch holding it
    in_flight: dict[str, Assign] = field(default_factory=dict)
    pending: dict[str, list[str]] = field(default_factory=dict)  # batch -> jobs not yet run
    installed: dict[str, str | None] = field(default_factory=dict)  # agent -> build, as the world sees it
    passed: Counter[str] = field(default_factory=Counter)
    terminal: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    installs: int = 0


OrderKey = tuple[int, int, float, int]  # priority, the run's oldest waiting job, longest first, submission


def _order_keys(sim: Sim) -> dict[str, OrderKey]:
    """Where each ready job belongs in its group's queue (selection.py, rule 1):
    by priority, then run by run in arrival order, then longest estimate
    first, then submission. (No aging here: jobs are submitted after `sim.now`.)"""
    ready = [j for j in sim.state.jobs.values() if j.status == "queued" and j.ready_at <= sim.now]
    first: dict[tuple[tuple[str, str], str], int] = {}
    for j in ready:
        key = (j.group, j.run_id)
        first[key] = min(first.get(key, j.order), j.order)
    est = sim.state.estimates
    return {
        j.job_id: (
            j.priority,
            first[(j.group, j.run_id)] if j.run_id else j.order,
            -est.test_s(j.org_id, j.test, j.target, j.run_id),
            j.order,
        )
        for j in ready
    }


def _check_assign(sim: Sim, tr: Tracker, a: Assign, waiting_before: dict[str, OrderKey]) -> None:
    """Invariants of one Assign, in decision order."""
    agent = sim.state.agents[a.agent_id]
    assert a.target == agent.target
    assert a.jobs, "an empty batch"
    assert len(a.jobs) <= sim.state.config.max_batch
    group = (a.app_version_id, a.target)
    for job in a.jobs:
        assert sim.group_of(job.job_id) == group
        assert job.job_id not in tr.holder, f"{job.job_id} is already held by {tr.holder.get(job.job_id)}"
        assert tr.terminal[job.job_id] == 0, f"{job.job_id} assigned after it ended"
        assert job.job_id in waiting_before
    # priority: a batch is handed out while better-priority jobs of its target
    # wait only if each of them belongs to a group an agent is running (in
    # flight, or given out earlier in this decide); such a group gets another
    # agent only when splitting pays (selection.py), but better work is never
    # left unattended. (No aging here: jobs are submitted after `sim.now`.)
    keys = [waiting_before[j.job_id] for j in a.jobs]
    running = {(b.app_version_id, b.target) for b in tr.in_flight.values()}
    best = min(k[0] for k in keys)
    for jid, (p, *_) in waiting_before.items():
        if p < best and sim.group_of(jid)[1] == a.target:
            assert sim.group_of(jid) in running, f"{jid} (priority {p}) waits unattended; a priority {best} batch went"
    # the group's queue order (priority, run arrival, longest first, submission): nothing skipped ahead
    assert keys == sorted(keys)
    rest = [
        k for jid, k in waiting_before.items() if sim.group_of(jid) == group and jid not in {j.job_id for j in a.jobs}
    ]
    if rest:
        assert max(keys) < min(rest)
    # install exactly when the agent lacks the build
    assert a.install == (tr.installed.get(a.agent_id) != a.app_version_id)
    for job in a.jobs:
        del waiting_before[job.job_id]


def _decide_and_record(sim: Sim, tr: Tracker) -> None:
    """Decide until the scheduler has nothing more to say, recording each
    decision as accepted (a Requeue or a retry makes work for the next round)."""
    while _decide_once(sim, tr):
        pass


def _decide_once(sim: Sim, tr: Tracker) -> int:
    waiting_before = _order_keys(sim)
    decisions = sim.decide()
    # The service publishes before it reads its own events back; a decide in
    # between (a tick) must not hand out the same work again.
    assert sim.decide() == []
    for d in decisions:
        if isinstance(d, Assign):
            _check_assign(sim, tr, d, waiting_before)
            tr.batches += 1
            tr.installs += d.install
            tr.installed[d.agent_id] = d.app_version_id
            for job in d.jobs:
                tr.holder[job.job_id] = d.batch_id
            tr.in_flight[d.batch_id] = d
            tr.pending[d.batch_id] = [j.job_id for j in d.jobs]
        elif isinstance(d, Requeue):
            assert tr.terminal[d.job_id] == 0
            tr.holder.pop(d.job_id, None)
        elif isinstance(d, GiveUp):
            # infrastructure requeues exhausted: the job ends in `error`
            assert tr.terminal[d.job_id] == 0
            assert sim.state.jobs[d.job_id].requeues >= sim.state.config.max_requeues
            tr.holder.pop(d.job_id, None)
            tr.terminal[d.job_id] += 1
        else:
            assert tr.terminal[d.job_id] == 0
        sim.record(d)
    return len(decisions)


def _step(sim: Sim, tr: Tracker, batch_id: str, outcome: str) -> None:
    """Advance one in-flight batch by one job (or finish it)."""
    a = tr.in_flight[batch_id]
    pending = tr.pending[batch_id]
    if not pending:
        sim.finish(a)
        del tr.in_flight[batch_id]
        del tr.pending[batch_id]
        return
    job_id = pending.pop(0)
    job = next(j for j in a.jobs if j.job_id == job_id)
    if outcome == "pass":
        sim.pass_job(a, job_id)
        tr.passed[job_id] += 1
        tr.terminal[job_id] += 1
    else:
        final = job.attempt > job.max_retries
        sim.fail_job(a, job_id, final=final)
        tr.terminal[job_id] += final
    del tr.holder[job_id]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    jobs=st.lists(
        st.tuples(
            st.sampled_from(APPS),
            st.sampled_from(TARGETS),
            st.integers(0, 3),
            st.integers(0, 2),
            st.sampled_from(SECONDS),
        ),
        min_size=1,
        max_size=40,
    ),
    agents=st.lists(st.tuples(st.sampled_from(TARGETS), st.integers(1, 2)), min_size=0, max_size=4),
    max_batch=st.integers(1, 6),
    data=st.data(),
)
def test_every_job_passes_exactly_once(
    jobs: list[tuple[str, str, int, int, float]], agents: list[tuple[str, int]], max_batch: int, data: st.DataObject
) -> None:
    sim = Sim(max_batch=max_batch)
    tr = Tracker()
    # at least one agent per target, so every job can run
    agents = [("emulator", 1), ("device", 1), *agents]
    for n, (target, slots) in enumerate(agents):
        sim.register(f"agt_{n}", target, slots)
    # submissions arrive in waves while agents work
    waves = data.draw(st.lists(st.integers(1, 10), min_size=1, max_size=10), label="waves")
    queue = [(f"job_{n:03d}", *spec) for n, spec in enumerate(jobs)]
    wave = 0
    for _ in range(2000):
        if queue:
            size = waves[wave % len(waves)]
            wave += 1
            for job_id, app, target, priority, run, seconds in queue[:size]:
                sim.submit(job_id, app, target, priority, run=f"run_{run}", seconds=seconds)
            del queue[:size]
        _decide_and_record(sim, tr)
        if not tr.in_flight and not queue:
            break
        assert tr.in_flight, "work waits but nothing is in flight: the scheduler stalled"
        batch_id = data.draw(st.sampled_from(sorted(tr.in_flight)), label="batch")
        _step(sim, tr, batch_id, "pass")
    else:
        pytest.fail("did not finish")
    submitted = {job_id for job_id, *_ in ((f"job_{n:03d}",) for n in range(len(jobs)))}
    assert set(tr.passed) == submitted
    assert all(count == 1 for count in tr.passed.values())
    assert not sim.state.jobs and set(sim.state.finished) == submitted  # every job ended and left the state
    assert tr.installs <= tr.batches
    assert not sim.state.waiting and not sim.state.batches and not sim.state.orphans and not sim.state.retry_due


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    jobs=st.lists(
        st.tuples(
            st.sampled_from(APPS),
            st.sampled_from(TARGETS),
            st.integers(0, 3),
            st.integers(0, 2),
            st.integers(0, 2),
            st.sampled_from(SECONDS),
        ),
        min_size=1,
        max_size=25,
    ),
    extra_agents=st.lists(st.tuples(st.sampled_from(TARGETS), st.integers(1, 2)), max_size=3),
    max_batch=st.integers(1, 4),
    data=st.data(),
)
def test_failures_retries_cancels_and_agent_loss_end_every_job_exactly_once(
    jobs: list[tuple[str, str, int, int, int, float]],
    extra_agents: list[tuple[str, int]],
    max_batch: int,
    data: st.DataObject,
) -> None:
    # with a backoff, retries wait in the queue (and agents may wait for them);
    # a few seconds, so the clock moves by less than one aging step in all
    sim = Sim(max_batch=max_batch, retry_backoff_s=data.draw(st.sampled_from([0.0, 5.0]), label="backoff"))
    tr = Tracker()
    agents = [("emulator", 1), ("device", 1), *extra_agents]
    alive: dict[str, bool] = {}
    for n, (target, slots) in enumerate(agents):
        sim.register(f"agt_{n}", target, slots)
        alive[f"agt_{n}"] = True
    for n, (app, target, priority, retries, run, seconds) in enumerate(jobs):
        sim.submit(f"job_{n:03d}", app, target, priority, max_retries=retries, run=f"run_{run}", seconds=seconds)
    restarts = 0
    for _ in range(3000):
        # the scheduler does not necessarily decide after every event
        if not tr.in_flight or data.draw(st.booleans(), label="decide now"):
            _decide_and_record(sim, tr)
            if not tr.in_flight:
                backing_off = [j.ready_at for j in sim.state.jobs.values() if j.ready_at > sim.now]
                if not backing_off:
                    break
                sim.now = min(backing_off)  # nothing runs: the clock moves to the next retry
                continue
        action = data.draw(
            st.sampled_from(["pass", "pass", "fail", "finish_early", "agent_leaves", "cancel"]), label="action"
        )
        if action == "cancel":
            live = sorted(j for j in sim.state.jobs if tr.terminal[j] == 0)
            if live:
                job_id = data.draw(st.sampled_from(live), label="cancel")
                sim.feed(JobCancelled(job_id=job_id))
                tr.terminal[job_id] += 1
                tr.holder.pop(job_id, None)
                for pending in tr.pending.values():
                    if job_id in pending:
                        pending.remove(job_id)  # the agent skips a job that is no longer its own
            continue
        batch_id = data.draw(st.sampled_from(sorted(tr.in_flight)), label="batch")
        a = tr.in_flight[batch_id]
        if action in ("pass", "fail"):
            _step(sim, tr, batch_id, action)
        elif action == "finish_early" or restarts >= 10:
            sim.finish(a)  # the rest of the batch is abandoned
            del tr.in_flight[batch_id]
            del tr.pending[batch_id]
        else:
            restarts += 1
            # the agent goes away mid-batch; its batches end; it comes back
            sim.feed(data.draw(st.sampled_from([AgentStopped, AgentLost]))(agent_id=a.agent_id))
            for other in [b for b, x in tr.in_flight.items() if x.agent_id == a.agent_id]:
                del tr.in_flight[other]
                del tr.pending[other]
            _decide_and_record(sim, tr)  # requeue what it held
            target = sim.state.agents[a.agent_id].target
            sim.register(a.agent_id, target, sim.state.agents[a.agent_id].slots)
    else:
        pytest.fail("did not finish")
    submitted = {f"job_{n:03d}" for n in range(len(jobs))}
    assert not sim.state.jobs, sorted(sim.state.jobs)  # every job ended and left the state
    assert set(sim.state.finished) == submitted
    for job_id in submitted:
        assert tr.terminal[job_id] == 1, job_id
        assert tr.passed[job_id] <= 1
    assert not tr.holder
    assert tr.installs <= tr.batches
    assert not sim.state.retry_due and not sim.state.needs_retry  # no retry left pending


def test_retry_backoff_doubles_with_jitter_and_a_cap() -> None:
    from scheduler.policy import Config, Job, retry_delay

    def job(job_id: str, failures: int) -> Job:
        return Job(
            job_id=job_id,
            org_id="o",
            app_version_id="v",
            target="emulator",
            test="t",
            priority=5,
            max_retries=9,
            timeout_s=None,
            dedup_key="k",
            order=1,
            seq=1,
            attempts=failures,
            failures=failures,
        )

    config = Config(retry_backoff_s=2.0, retry_backoff_max_s=30.0)
    for failures, base in ((1, 2.0), (2, 4.0), (3, 8.0)):
        delays = [retry_delay(config, job(f"job_{n}", failures)) for n in range(200)]
        assert all(0.5 * base <= d < 1.5 * base for d in delays)
        assert max(delays) - min(delays) > 0.5 * base  # spread out, not one instant
    assert retry_delay(config, job("job_x", 10)) == 30.0  # capped
    assert retry_delay(config, job("job_x", 2)) == retry_delay(config, job("job_x", 2))  # a replay agrees
    assert retry_delay(Config(), job("job_x", 3)) == 0.0
