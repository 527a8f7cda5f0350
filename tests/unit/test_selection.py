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
