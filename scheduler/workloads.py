"""Seeded generator of scheduling workloads in the ``ci-day.json`` format.

A :class:`Shape` says who submits what to which farm: orgs with their suites
(a fixed set of tests with stable durations, +-10% from run to run), agents
per target, how loaded the farm is over the day, how urgent the runs are,
release bursts (several orgs submitting priority-1 runs within minutes of one
another) and how flaky the tests are. :func:`generate` turns it into a
:class:`~scheduler.simulate.Workload`; the same shape and seed always give
the same workload. ``bench/workloads/*.json`` are :data:`SHAPES`, written by
``python bench/simulate.py --write-workloads``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from scheduler.simulate import Workload, WorkloadAgent, WorkloadJob

AREAS = ("login", "checkout", "search", "profile", "settings", "onboarding")
SUBMIT_SPREAD_S = 5.0  # a run's jobs arrive within this many seconds, as a CI step submits them


@dataclass(frozen=True, slots=True)
class Org:
    name: str
    weight: float = 1.0  # share of the runs
    tests: int = 60  # suite size: every run submits the whole suite
    mean_s: float = 45.0  # mean duration of its tests
    targets: tuple[str, ...] = ("emulator",)  # a run goes to one or two of these


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    orgs: tuple[Org, ...]
    agents: dict[str, int]
    seed: int = 1
    hours: float = 8.0
    load: float = 0.8  # first-attempt work submitted / agent time available, per target
    priorities: dict[int, float] = field(default_factory=lambda: {1: 0.15, 5: 0.75, 9: 0.10})
    bursts: int = 0  # release bursts over the day
    burst_runs: int = 4  # priority-1 runs in a burst, from different orgs where possible
    flaky: float = 0.02  # tests that fail now and then (first attempt fails in a run, with p=0.5)
    failing: float = 0.004  # tests that always fail
    install_seconds: dict[str, float] = field(
        default_factory=lambda: {"emulator": 25.0, "device": 60.0, "browserstack": 90.0}
    )
    description: str = ""


@dataclass(frozen=True, slots=True)
class _Test:
    path: str
    duration: float
    kind: str  # "pass", "flaky" or "failing"


def _suite(rng: random.Random, org: Org, flaky: float, failing: float) -> list[_Test]:
    tests = []
    sigma = 0.5
    mu = math.log(org.mean_s) - sigma * sigma / 2
    for n in range(org.tests):
        roll = rng.random()
        kind = "failing" if roll < failing else "flaky" if roll < failing + flaky else "pass"
        duration = min(400.0, max(5.0, rng.lognormvariate(mu, sigma)))
        tests.append(_Test(f"tests/{rng.choice(AREAS)}/{org.name}_{n:03d}.spec.js", round(duration, 1), kind))
    return tests


def _outcomes(rng: random.Random, kind: str) -> list[str]:
    if kind == "failing":
        return ["fail"]
    if kind == "flaky" and rng.random() < 0.5:
        return [rng.choice(("fail", "pass")) for _ in range(3)] + ["pass"]
    return ["pass"]


def _priority(rng: random.Random, priorities: dict[int, float]) -> int:
    total = sum(priorities.values())
    roll = rng.random() * total
    for priority, weight in sorted(priorities.items()):
        roll -= weight
        if roll <= 0:
            return priority
    return max(priorities)


def generate(shape: Shape) -> Workload:
    """The workload ``shape`` describes; deterministic in ``shape.seed``."""
    rng = random.Random(shape.seed)
    suites = {org.name: _suite(rng, org, shape.flaky, shape.failing) for org in shape.orgs}
    day_s = shape.hours * 3600
    # runs: (at, org, priority, targets); drawn until each target's work budget is spent
    budget = {t: n * day_s * shape.load for t, n in shape.agents.items()}
    runs: list[tuple[float, Org, int, tuple[str, ...]]] = []
    for _ in range(shape.bursts):
        at = rng.uniform(0.05, 0.8) * day_s
        orgs = rng.sample(shape.orgs, min(shape.burst_runs, len(shape.orgs)))
        for org in orgs:
            target = rng.choice(org.targets)
            runs.append((at + rng.uniform(0, 120), org, 1, (target,)))
            budget[target] -= sum(t.duration for t in suites[org.name])
    weights = [org.weight for org in shape.orgs]
    for n in range(100_000):
        if all(b <= 0 for b in budget.values()):
            break
        # every org submits at least once, then by weight
        org = shape.orgs[n] if n < len(shape.orgs) else rng.choices(shape.orgs, weights)[0]
        open_targets = [t for t in org.targets if budget.get(t, 0) > 0]
        if not open_targets:
            continue
        targets = (rng.choice(open_targets),)
        if len(open_targets) > 1 and rng.random() < 0.4:  # the same build on two targets
            targets = tuple(rng.sample(open_targets, 2))
        runs.append((rng.uniform(0, 0.9) * day_s, org, _priority(rng, shape.priorities), targets))
        for target in targets:
            budget[target] -= sum(t.duration for t in suites[org.name])
    jobs: list[WorkloadJob] = []
    counters: dict[str, int] = {}
    for at, org, priority, targets in sorted(runs, key=lambda r: r[0]):
        n = counters[org.name] = counters.get(org.name, 0) + 1
        app = f"{org.name}-{n}"
        for target in targets:
            suite = suites[org.name]
            for i, test in enumerate(suite):
                jobs.append(
                    WorkloadJob(
                        at=round(at + SUBMIT_SPREAD_S * i / len(suite), 2),
                        org_id=org.name,
                        app_version_id=app,
                        test=test.path,
                        target=target,
                        priority=priority,
                        run_id=f"{app}-{target}",
                        duration=round(test.duration * rng.uniform(0.9, 1.1), 1),
                        outcomes=_outcomes(rng, test.kind),
                    )
                )
    jobs.sort(key=lambda j: j.at)
    agents = [
        WorkloadAgent(id=f"{target}-{i + 1}", target=target)
        for target, count in shape.agents.items()
        for i in range(count)
    ]
    return Workload(
        name=shape.name,
        install_seconds={t: shape.install_seconds[t] for t in shape.agents},
        agents=agents,
        jobs=jobs,
        seed=shape.seed,
        description=shape.description,
    )


SHAPES = (
    Shape(
        name="many-orgs",
        seed=7,
        description="8 orgs of very different sizes sharing a 15-agent farm at 85% load",
        orgs=(
            Org("bigco", weight=6, tests=150, mean_s=50, targets=("emulator", "device")),
            Org("midco", weight=3, tests=80, mean_s=40, targets=("emulator", "browserstack")),
            Org("apps4u", weight=2, tests=40, mean_s=35, targets=("emulator",)),
            Org("tinyapp", weight=1, tests=12, mean_s=30, targets=("emulator", "device")),
            Org("webshop", weight=2, tests=60, mean_s=70, targets=("browserstack",)),
            Org("fintech", weight=2, tests=50, mean_s=45, targets=("device", "emulator")),
            Org("games", weight=1, tests=25, mean_s=90, targets=("device",)),
            Org("solo", weight=0.5, tests=8, mean_s=40, targets=("emulator",)),
        ),
        agents={"emulator": 8, "device": 4, "browserstack": 3},
        hours=5.0,
        load=0.85,
        priorities={1: 0.1, 5: 0.8, 9: 0.1},
    ),
    Shape(
        name="overloaded",
        seed=11,
        description="4 orgs submitting 30% more work than a small farm can run: queues grow all day",
        orgs=(
            Org("acme", weight=4, tests=100, mean_s=45, targets=("emulator", "device")),
            Org("globex", weight=2, tests=50, mean_s=50, targets=("emulator", "browserstack")),
            Org("initech", weight=1, tests=15, mean_s=40, targets=("emulator",)),
            Org("hooli", weight=1, tests=30, mean_s=60, targets=("device", "browserstack")),
        ),
        agents={"emulator": 4, "device": 2, "browserstack": 2},
        hours=6.0,
        load=1.3,
        priorities={1: 0.1, 3: 0.2, 5: 0.6, 9: 0.1},
        flaky=0.04,
    ),
    Shape(
        name="release-burst",
        seed=23,
        description="a quiet day broken by 4 release bursts of priority-1 runs from 5 orgs at once",
        orgs=(
            Org("acme", weight=3, tests=120, mean_s=50, targets=("emulator", "browserstack")),
            Org("globex", weight=2, tests=60, mean_s=45, targets=("emulator", "device")),
            Org("initech", weight=1, tests=20, mean_s=40, targets=("emulator",)),
            Org("umbrella", weight=1, tests=40, mean_s=55, targets=("device", "emulator")),
            Org("wayne", weight=1, tests=30, mean_s=35, targets=("emulator", "browserstack")),
        ),
        agents={"emulator": 6, "device": 4, "browserstack": 2},
        load=0.6,
        priorities={5: 0.9, 9: 0.1},
        bursts=4,
        burst_runs=5,
    ),
)
