"""The simulator, the baselines and the policy core in virtual time.

ci-day lives in ``../shared/workloads/`` (skipped when absent); the other
workloads are ``bench/workloads/*.json``, made by ``scheduler.workloads``.
Each workload runs once per policy per session (module fixtures).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from eventstore.events import (
    BatchAssigned,
    Event,
    JobAssigned,
    JobCancelled,
    JobErrored,
    JobFailed,
    JobPassed,
    JobRequeued,
)
from qgjob.cli import app
from scheduler import policy
from scheduler.estimates import Estimates, keys_of, suite_of
from scheduler.simulate import (
    EPOCH,
    PolicyWorld,
    Report,
    Workload,
    WorkloadAgent,
    WorkloadJob,
    _fifo,
    arrival_bound,
    decode_workload,
    encode_workload,
    latency_floor,
    lower_bound,
    run_bounds,
    simulate,
)
from scheduler.workloads import SHAPES, generate

ROOT = Path(__file__).resolve().parents[2]
CI_DAY = ROOT.parent / "shared" / "workloads" / "ci-day.json"
OURS = sorted((ROOT / "bench" / "workloads").glob("*.json"))


def within(value: float, expected: float, tolerance: float = 0.02) -> bool:
    return abs(value - expected) <= tolerance * expected


# --- ci-day: the baselines reproduce the README, qgjob's aims -----------------------------


@pytest.fixture(scope="module")
def ci_day() -> dict[str, Report]:
    if not CI_DAY.exists():
        pytest.skip(f"{CI_DAY} is not here")
    workload = decode_workload(CI_DAY.read_bytes())
    reports = {}
    for name in ("qgjob", "fifo", "per-job-install"):
        started = time.perf_counter()
        reports[name] = simulate(workload, name)
        SECONDS[name] = time.perf_counter() - started
    return reports


SECONDS: dict[str, float] = {}


def test_fifo_reproduces_the_readme_figures(ci_day: dict[str, Report]) -> None:
    fifo = ci_day["fifo"]
    assert within(fifo.installs, 406)
    assert within(fifo.makespan_ratio, 1.19)
    assert within(fifo.latency[1].p50_s, 1289)
    assert within(fifo.latency[5].p50_s, 4427)
    assert within(fifo.fairness, 3.3)


def test_per_job_install_reproduces_the_readme_figures(ci_day: dict[str, Report]) -> None:
    per_job = ci_day["per-job-install"]
    assert within(per_job.installs, 4641)
    assert within(per_job.makespan_ratio, 1.59)
    assert per_job.installs == per_job.attempts  # one install before every attempt


def test_every_policy_runs_every_attempt_of_ci_day(ci_day: dict[str, Report]) -> None:
    # 4,515 jobs, 126 retries; 22 jobs fail all four attempts
    for report in ci_day.values():
        assert (report.jobs, report.attempts, report.failed) == (4515, 4641, 22)


def test_qgjob_on_ci_day_meets_the_latency_and_fairness_aims(ci_day: dict[str, Report]) -> None:
    qgjob, fifo = ci_day["qgjob"], ci_day["fifo"]
    assert qgjob.latency[5].p50_s <= 0.8 * 4427
    assert qgjob.fairness <= 1.5
    # and beats fifo on everything else it is measured by
    assert qgjob.installs <= 0.5 * fifo.installs
    assert qgjob.latency[1].p50_s < fifo.latency[1].p50_s
    for priority, lat in qgjob.latency.items():
        assert lat.p95_s < fifo.latency[priority].p95_s
    assert qgjob.makespan_s <= fifo.makespan_s


def test_an_install_value_trades_ci_day_latency_for_installs(ci_day: dict[str, Report]) -> None:
    """Valuing an install at 270 s, ci-day fits the installs aim (0.35 x
    fifo's 406) while keeping the priority-5 and fairness aims; valued
    higher still, installs fall further and latency is what pays."""
    workload = decode_workload(CI_DAY.read_bytes())
    valued = simulate(workload, "qgjob", policy.Config(install_value_s=270))
    assert valued.installs <= 0.35 * 406 < ci_day["qgjob"].installs
    assert valued.latency[5].p50_s <= 0.8 * 4427
    assert valued.fairness <= 1.5
    assert valued.latency[1].p50_s < ci_day["fifo"].latency[1].p50_s
    dear = simulate(workload, "qgjob", policy.Config(install_value_s=400))
    assert dear.installs < valued.installs
    assert dear.all_runs.mean_s > valued.all_runs.mean_s


def test_the_makespan_aim_of_1_08_is_out_of_reach_on_ci_day(ci_day: dict[str, Report]) -> None:
    """Work cannot start before it is submitted: browserstack gets 19,400 s of
    work for 3 agents in the last 6,300 s of submissions, so no schedule
    finishes ci-day within 1.17 x the README's lower bound."""
    qgjob = ci_day["qgjob"]
    assert qgjob.arrival_bound_s / qgjob.lower_bound_s > 1.16
    assert qgjob.makespan_s >= qgjob.arrival_bound_s


def test_the_priority_1_aim_is_out_of_reach_on_ci_day() -> None:
    """Half of fifo's p50 is 645 s, but the median priority-1 run needs more
    than 1,000 s even alone on the farm (install + its work over its agents)."""
    if not CI_DAY.exists():
        pytest.skip(f"{CI_DAY} is not here")
    workload = decode_workload(CI_DAY.read_bytes())
    floor = latency_floor(workload)
    assert floor[1] > 1000 > 0.5 * 1289
    # and by hand, from the definition: the 6th and 7th of the 12 runs sorted
    agents = Counter(a.target for a in workload.agents)
    runs: dict[str, list[WorkloadJob]] = {}
    for job in workload.jobs:
        if job.priority == 1:
            runs.setdefault(job.run_id, []).append(job)
    alone = sorted(
        workload.install_seconds[js[0].target]
        + max(max(j.duration for j in js), sum(j.duration for j in js) / agents[js[0].target])
        for js in runs.values()
    )
    assert len(alone) == 12
    assert alone[5] > 1000 and alone[6] > 1000  # any p50 of 12 runs is at least this


def _run_latencies(workload: Workload, world_ended: list[float]) -> dict[str, float]:
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for job, ended in zip(workload.jobs, world_ended, strict=True):
        first[job.run_id] = min(first.get(job.run_id, job.at), job.at)
        last[job.run_id] = max(last.get(job.run_id, ended), ended)
    return {run: last[run] - first[run] for run in first}


@pytest.mark.parametrize("name", [p.stem for p in OURS])
def test_no_policy_beats_a_runs_bound(name: str) -> None:
    """The floors printed beside the p50s are true floors: under every policy,
    every run takes at least its bound."""
    workload = decode_workload((ROOT / "bench" / "workloads" / f"{name}.json").read_bytes())
    bounds = run_bounds(workload)
    worlds = {
        "qgjob": PolicyWorld(workload, policy.Config()).run(),
        "fifo": _fifo(workload, per_job_install=False),
        "per-job-install": _fifo(workload, per_job_install=True),
    }
    for policy_name, world in worlds.items():
        latencies = _run_latencies(workload, world.ended)
        assert latencies.keys() == bounds.keys()
        for run, bound in bounds.items():
            assert latencies[run] >= bound - 1e-6, (policy_name, run, latencies[run], bound)
        if policy_name == "qgjob":  # and not loose everywhere: some run comes close to it
            assert min(latencies[run] / bound for run, bound in bounds.items()) < 1.25
        report = simulate(workload, policy_name)
        for priority, lat in report.latency.items():
            assert lat.p50_s >= report.latency_floor_s[priority]


def test_simulating_ci_day_takes_seconds(ci_day: dict[str, Report]) -> None:
    assert SECONDS["qgjob"] < 10  # about 1 s on a laptop; generous for slow CI machines
    assert ci_day["qgjob"].decide_calls < 20_000


# --- our workloads: qgjob against fifo ------------------------------------------------------


@pytest.fixture(scope="module", params=[p.stem for p in OURS])
def ours(request: pytest.FixtureRequest) -> dict[str, Report]:
    workload = decode_workload((ROOT / "bench" / "workloads" / f"{request.param}.json").read_bytes())
    return {name: simulate(workload, name) for name in ("qgjob", "fifo")}


def test_qgjob_beats_fifo_on_our_workloads(ours: dict[str, Report]) -> None:
    qgjob, fifo = ours["qgjob"], ours["fifo"]
    assert qgjob.installs <= 0.6 * fifo.installs
    assert qgjob.all_runs.p50_s < fifo.all_runs.p50_s
    assert qgjob.all_runs.mean_s < fifo.all_runs.mean_s
    assert qgjob.all_runs.p95_s < fifo.all_runs.p95_s
    assert qgjob.fairness < fifo.fairness
    assert qgjob.makespan_s <= 1.02 * fifo.makespan_s
    # Per priority, on a par at least: fifo hands every free agent the next
    # job, so urgent runs get the whole farm within one job's time, and when
    # the farm is overloaded fair sharing costs the biggest org's median runs
    # what the small orgs gain (overloaded: fairness 1.8 against fifo's 6.5).
    for priority, lat in qgjob.latency.items():
        if priority <= 5:
            assert lat.p50_s <= 1.1 * fifo.latency[priority].p50_s


def test_workload_files_are_what_the_generator_makes() -> None:
    assert [p.stem for p in OURS] == sorted(s.name for s in SHAPES)
    for shape in SHAPES:
        path = ROOT / "bench" / "workloads" / f"{shape.name}.json"
        assert path.read_bytes() == encode_workload(generate(shape)) + b"\n", f"regenerate {path}"


def test_generator_is_deterministic_and_shaped() -> None:
    shape = SHAPES[0]
    one, two = generate(shape), generate(shape)
    assert one == two
    assert len({j.org_id for j in one.jobs}) == 8
    assert Counter(a.target for a in one.agents) == shape.agents
    assert [j.at for j in one.jobs] == sorted(j.at for j in one.jobs)
    # a test's durations are stable from run to run, within 10%
    by_test: dict[tuple[str, str], list[float]] = {}
    for job in one.jobs:
        by_test.setdefault((job.test, job.target), []).append(job.duration)
    spread = [max(d) / min(d) for d in by_test.values() if len(d) > 1]
    assert spread and max(spread) <= 1.1 / 0.9 + 0.01


# --- bounds and the format --------------------------------------------------------------------


def _job(
    at: float, duration: float, *, org: str = "acme", app: str = "v1", target: str = "emulator", **kw: object
) -> WorkloadJob:
    return WorkloadJob(
        at=at,
        org_id=org,
        app_version_id=app,
        test=str(kw.pop("test", f"tests/a/{org}_{at}.spec.js")),
        target=target,
        run_id=str(kw.pop("run_id", f"{org}-{app}-{target}")),
        duration=duration,
        **kw,  # type: ignore[arg-type]
    )


def _workload(jobs: list[WorkloadJob], agents: dict[str, int], install: float = 30.0) -> Workload:
    return Workload(
        name="t",
        install_seconds={t: install for t in agents},
        agents=[WorkloadAgent(id=f"{t}-{i}", target=t) for t, n in agents.items() for i in range(n)],
        jobs=sorted(jobs, key=lambda j: j.at),
    )


def test_lower_bounds_follow_the_readme_definition() -> None:
    jobs = [_job(0, 100, app="a"), _job(0, 100, app="a"), _job(0, 50, app="b"), _job(1000, 400, app="c")]
    w = _workload(jobs, {"emulator": 2}, install=10)
    # max(longest + install, (work + one install per group) / agents)
    assert lower_bound(w) == max(410, (650 + 30) / 2)
    # the last job arrives at 1000 and takes 410 with its install
    assert arrival_bound(w) == 1410


def test_decode_rejects_a_job_for_a_target_without_agents() -> None:
    w = _workload([_job(0, 10, target="device")], {"emulator": 1})
    with pytest.raises(ValueError, match="no agent"):
        decode_workload(encode_workload(w))


def test_a_flaky_job_is_retried_and_a_failing_one_gives_up() -> None:
    jobs = [
        _job(0, 10, test="tests/a/flaky.spec.js", outcomes=["fail", "fail", "pass"]),
        _job(0, 10, test="tests/a/broken.spec.js", outcomes=["fail"], max_retries=1),
    ]
    for name in ("qgjob", "fifo", "per-job-install"):
        report = simulate(_workload(jobs, {"emulator": 1}), name)
        assert (report.attempts, report.passed, report.failed) == (5, 1, 1), name


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_simulate_prints_a_table_or_one_json_document(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_bytes(
        encode_workload(_workload([_job(i, 30, test=f"tests/a/{i}.spec.js") for i in range(20)], {"emulator": 2}))
    )
    runner = CliRunner()
    result = runner.invoke(app, ["simulate", str(path)])
    assert result.exit_code == 0, result.output
    assert "qgjob" in result.output and "per-job-install" in result.output and "installs" in result.output
    result = runner.invoke(app, ["simulate", str(path), "--policy", "fifo", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert list(doc["results"]) == ["fifo"]
    assert doc["results"]["fifo"]["installs"] == 2
    assert doc["results"]["fifo"]["latency"]["5"]["runs"] == 1
    result = runner.invoke(app, ["simulate", str(path), "--policy", "qgjob", "--install-value", "10000", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["results"]["qgjob"]["installs"] == 1  # no second agent is worth it
    result = runner.invoke(app, ["simulate", str(path), "--policy", "qgjob", "--json"])
    assert json.loads(result.output)["results"]["qgjob"]["installs"] == 2
    result = runner.invoke(app, ["simulate", str(path), "--install-value", "-1"])
    assert result.exit_code == 2 and "--install-value" in result.output
    assert runner.invoke(app, ["simulate", str(tmp_path / "missing.json")]).exit_code == 2
    assert runner.invoke(app, ["simulate", str(path), "--policy", "lifo"]).exit_code == 2


def test_cli_serve_up_and_simulate_take_an_install_value_and_refuse_a_negative_one() -> None:
    runner = CliRunner()
    for command in ("serve", "up", "simulate"):
        assert "--install-value" in runner.invoke(app, [command, "--help"]).output, command
    result = runner.invoke(app, ["serve", "scheduler", "--install-value", "-5"])
    assert result.exit_code == 2 and "--install-value" in result.output


# --- estimates ------------------------------------------------------------------------------------


def test_estimates_learn_tests_and_fall_back_to_suite_run_target_default() -> None:
    est = Estimates(default_s=60)
    assert est.test_s("acme", "tests/login/a.spec.js", "emulator", "r1") == 60
    est.learn("acme", "tests/login/a.spec.js", "emulator", "r1", 10)
    est.learn("acme", "tests/login/b.spec.js", "emulator", "r1", 30)
    assert est.test_s("acme", "tests/login/a.spec.js", "emulator", "r1") == 10
    # a new test of the same suite: the suite's mean
    assert est.test_s("acme", "tests/login/new.spec.js", "emulator", "r9") == 20
    # another folder, same run: the run's mean; another run: the target's mean
    est.learn("acme", "tests/cart/c.spec.js", "emulator", "r2", 90)
    assert est.test_s("acme", "tests/search/x.spec.js", "emulator", "r2") == 90
    assert est.test_s("acme", "tests/search/x.spec.js", "emulator", "r3") == pytest.approx(130 / 3)
    assert est.test_s("acme", "tests/login/a.spec.js", "device", "r1") == 60
    # newer attempts move the estimate, without forgetting the old ones at once
    est.learn("acme", "tests/login/a.spec.js", "emulator", "r1", 20)
    assert 10 < est.test_s("acme", "tests/login/a.spec.js", "emulator", "r1") < 20
    assert suite_of("tests/login/a.spec.js") == "tests/login" and suite_of("a.spec.js") == ""


@given(
    learnt=st.lists(
        st.tuples(
            st.sampled_from(["acme", "globex"]),
            st.sampled_from(["tests/a/1.spec.js", "tests/a/2.spec.js", "tests/b/3.spec.js", "top.spec.js"]),
            st.sampled_from(["emulator", "device"]),
            st.sampled_from(["r1", "r2"]),
            st.floats(1, 500),
        ),
        max_size=12,
    ),
    asked=st.lists(
        st.tuples(
            st.sampled_from(["acme", "globex"]),
            st.sampled_from(["tests/a/1.spec.js", "tests/a/9.spec.js", "tests/c/4.spec.js", "other.spec.js"]),
            st.sampled_from(["emulator", "device"]),
            st.sampled_from(["r1", "r2", "r3"]),
        ),
        max_size=20,
    ),
)
def test_estimates_of_many_jobs_at_once_equal_one_at_a_time(learnt, asked) -> None:  # type: ignore[no-untyped-def]
    est = Estimates(default_s=60)
    for org, test, target, run, seconds in learnt:
        est.learn(org, test, target, run, seconds)

    class J:
        def __init__(self, org_id: str, test: str, target: str, run_id: str) -> None:
            self.org_id, self.test, self.target, self.run_id = org_id, test, target, run_id
            self.test_key, self.suite_key = keys_of(org_id, test, target)

    jobs = [J(*a) for a in asked]
    assert est.tests_s(jobs) == [est.test_s(j.org_id, j.test, j.target, j.run_id) for j in jobs]


def test_the_policy_core_learns_durations_from_the_simulated_results() -> None:
    jobs = [_job(i * 1000, 42, test="tests/a/same.spec.js", run_id=f"r{i}") for i in range(3)]
    world = PolicyWorld(_workload(jobs, {"emulator": 1}), policy.Config())
    world.run()
    assert world.state.estimates.test_s("acme", "tests/a/same.spec.js", "emulator", "r9") == pytest.approx(42)
    assert world.state.estimates.install_s("emulator") == pytest.approx(30)


# --- properties of the policy core, driven through the simulator ------------------------------------


class Observed(PolicyWorld):
    """The simulated world, checking invariants as events and decisions pass."""

    holder: dict[str, str]
    terminal: Counter[str]
    installs_seen: int
    check_priority: bool

    def observe(self, check_priority: bool) -> Observed:
        self.holder, self.terminal, self.installs_seen, self.check_priority = {}, Counter(), 0, check_priority
        return self

    def feed(self, event: Event, now: float) -> None:
        match event:
            case JobAssigned():
                assert event.job_id not in self.holder, f"{event.job_id} held by two batches"
                assert self.terminal[event.job_id] == 0, f"{event.job_id} assigned after it ended"
                self.holder[event.job_id] = event.batch_id
            case JobPassed() | JobErrored() | JobCancelled():
                self.terminal[event.job_id] += 1
                self.holder.pop(event.job_id, None)
            case JobFailed():
                self.terminal[event.job_id] += event.final
                self.holder.pop(event.job_id, None)
            case JobRequeued():
                self.holder.pop(event.job_id, None)
            case BatchAssigned():
                self.installs_seen += event.install
        super().feed(event, now)

    def decide(self, now: float) -> None:
        if self.check_priority:
            self._check_priority_order(now)
        else:
            super().decide(now)

    def _check_priority_order(self, now: float) -> None:
        """Within a target, a batch whose best job has priority p is handed out
        only while every waiting job of that target with a better priority
        belongs to a group some agent is running: in flight before this
        decide, or given out earlier in the same decide. Better work is never
        left unattended for worse work (whether a running group gets one more
        agent is the splitting rule's call). Checked with aging off."""
        state = self.state
        waiting = [j for j in state.jobs.values() if j.status == policy.QUEUED and j.ready_at <= EPOCH + now]
        running = {b.group for b in state.batches.values() if b.job_ids}
        decisions = policy.decide(state, EPOCH + now, lambda: f"bat_{next(self.batch_ids)}")
        self.world.decide_calls += 1
        given: set[str] = set()  # jobs of earlier assignments in this decide
        for d in decisions:
            if isinstance(d, policy.Assign):
                best = min(state.jobs[j.job_id].priority for j in d.jobs)
                for job in waiting:
                    if job.target == d.target and job.priority < best and job.job_id not in given:
                        assert job.group in running, f"{job.job_id} (priority {job.priority}) left for a {best}"
                running.add((d.app_version_id, d.target))
                given.update(j.job_id for j in d.jobs)
            self.record(d, now)
        if decisions:
            self._check_priority_order(now)


def _run(
    n: int, at: float, org: str, app: int, target: str, priority: int, durations: list[float], fails: int
) -> list[WorkloadJob]:
    """One CI run: ``durations`` jobs of one build and target, submitted within seconds."""
    return [
        _job(
            at + i * 0.1,
            d,
            org=org,
            app=f"{org}-{app}",
            target=target,
            priority=priority,
            outcomes=["fail", "pass"] if i < fails else ["fail"] if i == fails and fails > 1 else ["pass"],
            test=f"tests/a/{org}_{i}.spec.js",
            run_id=f"{org}-{app}-{target}-{n}",
        )
        for i, d in enumerate(durations)
    ]


runs = st.lists(
    st.tuples(
        st.sampled_from([0.0, 30.0, 200.0, 900.0, 2000.0]),  # runs pile up at a few moments
        st.sampled_from(["acme", "globex", "initech"]),
        st.integers(0, 3),
        st.sampled_from(["emulator", "device"]),
        st.sampled_from([1, 5, 9]),
        st.lists(st.floats(1, 120).map(lambda x: round(x, 1)), min_size=1, max_size=12),
        st.integers(0, 2),
    ),
    min_size=1,
    max_size=8,
)
workloads = st.builds(
    lambda rs, agents, install: _workload([j for n, r in enumerate(rs) for j in _run(n, *r)], agents, install),
    runs,
    st.fixed_dictionaries({"emulator": st.integers(1, 4), "device": st.integers(1, 2)}),
    st.sampled_from([5.0, 30.0, 90.0]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workload=workloads, batch_s=st.sampled_from([30.0, 180.0, 600.0]))
def test_every_job_ends_once_and_is_never_held_twice(workload: Workload, batch_s: float) -> None:
    world = Observed(workload, policy.Config(batch_s=batch_s)).observe(check_priority=False)
    result = world.run()
    assert set(world.terminal) == {f"job_{i:06d}" for i in range(len(workload.jobs))}
    assert all(n == 1 for n in world.terminal.values())
    assert not world.holder
    assert not world.state.jobs and len(world.state.finished) == len(workload.jobs)  # every job ended
    assert world.installs_seen == result.installs <= result.batches
    assert not world.state.waiting and not world.state.batches


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workload=workloads)
def test_better_priority_work_is_never_left_unattended(workload: Workload) -> None:
    world = Observed(workload, policy.Config(aging_s=0)).observe(check_priority=True)
    world.run()
    assert not world.state.jobs and len(world.state.finished) == len(workload.jobs)  # every job ended


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    flood=st.integers(100, 500),
    small=st.integers(1, 10),
    agents=st.integers(1, 4),
    when=st.floats(0.05, 0.5),
    duration=st.floats(10, 90),
)
def test_one_orgs_flood_does_not_starve_another_orgs_few_jobs(
    flood: int, small: int, agents: int, when: float, duration: float
) -> None:
    """The small org's jobs wait at most for one batch of the flood to end:
    then an agent is theirs (an org that holds none of the target's agents goes
    first). A batch is about batch_s of estimated work, and estimates start at
    60 s, so it runs at most 1.5 x batch_s + one job for jobs of up to 90 s.
    With fewer agents than orgs the two take turns, batch by batch. Bound: a
    batch to wait for, then the small run and its installs at half speed."""
    arrives = when * flood * duration / agents  # while the flood is still running
    jobs = [_job(i * 0.01, duration, org="bigco", app="big", test=f"tests/a/big_{i}.spec.js") for i in range(flood)]
    jobs += [
        _job(arrives + i * 0.01, duration, org="tiny", app="small", test=f"tests/a/tiny_{i}.spec.js")
        for i in range(small)
    ]
    workload = _workload(jobs, {"emulator": agents})
    config = policy.Config()
    world = PolicyWorld(workload, config)
    result = world.run()
    tiny_done = max(t for t, j in zip(result.ended, workload.jobs, strict=True) if j.org_id == "tiny")
    big_done = max(t for t, j in zip(result.ended, workload.jobs, strict=True) if j.org_id == "bigco")
    batch = 1.5 * config.batch_s + duration
    bound = batch + 2 * (batch + workload.install_seconds["emulator"] + small * duration)
    assert tiny_done - arrives <= bound
    if flood * duration / agents - arrives > bound:  # the flood outlasts the small run's wait and work
        assert tiny_done < big_done  # fifo would run the whole flood first
