"""The selection rules of the policy core, one at a time (scheduler/selection.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from eventstore.events import JobSubmitted
from scheduler.selection import class_level
from tests.unit.test_policy import NOW, Sim, ids


def submit_at(sim: Sim, job_id: str, at: float, app: str = "v1", priority: int = 5, org: str = "acme") -> None:
    sim.feed(
        JobSubmitted(
            job_id=job_id,
            at=datetime.fromtimestamp(at, UTC),
            org_id=org,
            app_version_id=app,
            test=f"tests/a/{job_id}.spec.js",
            target="emulator",
            priority=priority,
            run_id=f"{org}-{app}",
        )
    )


def test_class_levels_age_fast_down_to_the_default_priority_and_slowly_past_it() -> None:
    hour = 3600.0
    assert class_level(9, 0, 1800) == 9
    assert class_level(9, 1 * hour, 1800) == 7
    assert class_level(9, 2 * hour, 1800) == 5  # a nightly catches up with pull requests in 2 h
    assert class_level(9, 3 * hour, 1800) == 5
    assert class_level(5, 3.9 * hour, 1800) == 5
    assert class_level(5, 4 * hour, 1800) == 4  # past the default: 8 x slower
    assert class_level(5, 100 * hour, 1800) == 0  # never below 0: nothing waits forever
    assert class_level(1, 4 * hour, 1800) == 0
    assert class_level(9, 100 * hour, 0) == 9  # aging off


def test_an_old_nightly_goes_before_a_fresh_pull_request() -> None:
    sim = Sim()
    submit_at(sim, "nightly", NOW - 3 * 3600, app="vN", priority=9)
    submit_at(sim, "pr", NOW - 60, app="vP", priority=5)
    sim.register("agt_1")
    (a,) = sim.assigns()
    assert ids(a) == ["nightly"]
    # a young nightly waits
    sim2 = Sim()
    submit_at(sim2, "nightly", NOW - 600, app="vN", priority=9)
    submit_at(sim2, "pr", NOW - 60, app="vP", priority=5)
    sim2.register("agt_1")
    (b,) = sim2.assigns()
    assert ids(b) == ["pr"]


def test_fifo_within_a_priority_follows_submission_across_groups() -> None:
    sim = Sim()
    submit_at(sim, "b1", NOW - 50, app="vB")
    submit_at(sim, "a1", NOW - 40, app="vA")
    sim.register("agt_1")
    (a,) = sim.assigns()
    assert a.app_version_id == "vB"


def test_an_org_holding_no_agent_gets_the_next_one_that_comes_back() -> None:
    """Fairness beats affinity: the flood's agent leaves its build for the
    small org when its batch ends, though the flood still has work."""
    sim = Sim(batch_s=60)
    for i in range(50):
        sim.submit(f"big_{i:02d}", "vBig", org="bigco")
    sim.register("agt_1")
    (first,) = sim.assigns()
    sim.record(first)
    sim.submit("small_0", "vSmall", org="tiny")
    sim.submit("small_1", "vSmall", org="tiny")
    assert sim.decide() == []  # the agent is busy
    sim.run_all(first)
    (second,) = sim.assigns()
    assert second.app_version_id == "vSmall" and second.install
    assert ids(second) == ["small_0", "small_1"]
    sim.record(second)
    sim.run_all(second)
    (third,) = sim.assigns()  # then the flood resumes
    assert third.app_version_id == "vBig" and third.install


def test_an_urgent_run_takes_every_agent_that_saves_it_three_installs() -> None:
    """20 jobs estimated at 60 s, installs at 60 s: a third agent brings the
    estimated finish from 1,200 / 2 = 600 s to (1,200 + 60) / 3 = 420 s, 180 s
    or three installs; a fourth saves only 400 - 315 = 85 s."""
    sim = Sim()
    for i in range(20):
        sim.submit(f"rel_{i:02d}", "vRel", priority=1)
    for n in range(4):
        sim.register(f"agt_{n}")
    assigns = sim.assigns()
    assert len(assigns) == 3 and {a.app_version_id for a in assigns} == {"vRel"}


def test_a_normal_run_is_not_split_across_idle_agents_when_that_saves_little() -> None:
    """Four default-length jobs: a second agent would save 90 s of a 240 s run
    for an install of about 60 s; the spare-capacity rule wants 4 installs' worth."""
    sim = Sim()
    for i in range(4):
        sim.submit(f"job_{i}", "v1")
    sim.register("agt_1")
    sim.register("agt_2")
    (a,) = sim.assigns()
    assert len(a.jobs) == 3  # about batch_s (180 s) of estimated work
    # a long run is split: 40 jobs of 60 s on one agent is 40 minutes
    sim2 = Sim()
    for i in range(40):
        sim2.submit(f"job_{i:02d}", "v1")
    sim2.register("agt_1")
    sim2.register("agt_2")
    assert len(sim2.assigns()) == 2


def test_an_agent_keeps_its_build_while_its_group_has_work_at_its_level() -> None:
    sim = Sim()
    sim.register("agt_1")
    sim.submit("x_0", "vX")
    (a,) = sim.assigns()
    sim.record(a)
    sim.run_all(a)
    sim.submit("y_0", "vY")  # same org and priority, older than the next vX job
    sim.submit("x_1", "vX")
    (b,) = sim.assigns()
    assert b.app_version_id == "vX" and not b.install


def submit_run(sim: Sim, job_id: str, run: str, seconds: float, app: str = "v1", priority: int = 5) -> None:
    """A job of CI run ``run`` whose test is known to take ``seconds``."""
    test = f"suite/{job_id}.spec.js"
    sim.state.estimates.learn("acme", test, "emulator", run, seconds)
    sim.feed(
        JobSubmitted(
            job_id=job_id,
            org_id="acme",
            app_version_id=app,
            test=test,
            target="emulator",
            priority=priority,
            run_id=run,
        )
    )


def test_runs_go_in_arrival_order_and_within_a_run_the_longest_job_first() -> None:
    """A run is done when its last job is: its long jobs start first. Runs
    themselves keep first-come-first-served, and so do priorities."""
    sim = Sim(batch_s=3600)
    submit_run(sim, "a_short", "run-a", 10)
    submit_run(sim, "a_long", "run-a", 100)
    submit_run(sim, "b_longest", "run-b", 300)
    submit_run(sim, "a_mid", "run-a", 50)  # a later job of the earlier run still goes with its run
    submit_run(sim, "c_urgent_short", "run-c", 5, priority=1)
    submit_run(sim, "c_urgent_long", "run-c", 20, priority=1)
    sim.register("agt_1")
    (a,) = sim.assigns()
    assert ids(a) == ["c_urgent_long", "c_urgent_short", "a_long", "a_mid", "a_short", "b_longest"]
    # one run alone, the usual group: longest first, equal estimates in submission order
    sim2 = Sim(batch_s=3600)
    for job_id, seconds in (("j1", 30), ("j2", 90), ("j3", 30), ("j4", 60)):
        submit_run(sim2, job_id, "run-a", seconds)
    sim2.register("agt_1")
    (b,) = sim2.assigns()
    assert ids(b) == ["j2", "j4", "j1", "j3"]


def test_one_job_runs_keep_first_come_first_served_whatever_their_length() -> None:
    sim = Sim(batch_s=3600)
    for n, seconds in enumerate((10, 300, 50)):
        submit_run(sim, f"solo_{n}", f"run-{n}", seconds)
    sim.register("agt_1")
    (a,) = sim.assigns()
    assert ids(a) == ["solo_0", "solo_1", "solo_2"]


def _failed_retry(backoff_s: float) -> tuple[Sim, list[object]]:
    """An agent's only job of vA fails; vB waits. What the next decide says."""
    sim = Sim(retry_backoff_s=backoff_s)
    sim.register("agt_1")
    sim.submit("a_0", "vA")
    (a,) = sim.assigns()
    sim.record(a)
    sim.submit("b_0", "vB")
    sim.fail_job(a, "a_0")
    sim.finish(a)
    return sim, list(sim.decide())


def test_an_agent_waits_for_its_builds_retry_due_sooner_than_an_install() -> None:
    sim, decisions = _failed_retry(backoff_s=10)  # a retry in 5-15 s; an install is estimated at 60 s
    assert [type(d).__name__ for d in decisions] == ["ScheduleRetry"]  # vB is not given the agent
    (retry,) = decisions
    sim.record(retry)
    assert sim.decide() == []  # still waiting out the backoff
    (again,) = sim.assigns(now=retry.not_before)  # type: ignore[attr-defined]
    assert ids(again) == ["a_0"] and not again.install


def test_an_agent_does_not_wait_for_a_retry_due_later_than_an_install() -> None:
    _, decisions = _failed_retry(backoff_s=600)
    kinds = {type(d).__name__: d for d in decisions}
    assert set(kinds) == {"ScheduleRetry", "Assign"}
    assert kinds["Assign"].app_version_id == "vB"  # type: ignore[attr-defined]


def _urgent_run_meets_a_free_agent(*, own_work_left: bool) -> str:
    """agt_2 ends a vOther batch while an urgent run of 6 x 60 s runs on agt_1.
    A second agent would bring the run from 360 s to (360 + 60) / 2 = 210 s:
    150 s, two and a half installs. Which build agt_2 takes next."""
    sim = Sim(max_batch=1)
    sim.register("agt_2")
    submit_run(sim, "other_0", "run-o", 60, app="vOther")
    if own_work_left:
        submit_run(sim, "other_1", "run-o", 60, app="vOther")
    (other,) = sim.assigns()
    sim.record(other)
    sim.register("agt_1")
    for n in range(6):
        submit_run(sim, f"rel_{n}", "run-rel", 60, app="vRel", priority=1)
    (rel,) = sim.assigns()
    assert rel.agent_id == "agt_1" and rel.app_version_id == "vRel"
    sim.record(rel)
    sim.run_all(other)
    (nxt,) = sim.assigns()
    assert nxt.agent_id == "agt_2"
    return nxt.app_version_id


def test_an_agent_with_nothing_left_of_its_build_joins_an_urgent_run_for_two_installs_saved() -> None:
    # it installs something either way: only the install back is the run's cost
    assert _urgent_run_meets_a_free_agent(own_work_left=False) == "vRel"
    # an agent that would leave its own build's work wants three installs saved
    assert _urgent_run_meets_a_free_agent(own_work_left=True) == "vOther"
