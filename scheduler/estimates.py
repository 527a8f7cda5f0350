"""How long a test (and an install) will take, learnt from the results.

Pure state, folded from ``duration_ms`` of JobPassed/JobFailed and of
AppInstalled: the policy core keeps one :class:`Estimates` and asks it when it
sizes batches and decides whether splitting a group shortens the run.

A test seen before is estimated by a moving average of its own attempts on
that target. A new test takes the mean of its suite on that target: the tests
of the same org in the same folder (``tests/checkout/a.spec.js`` belongs to
``tests/checkout``), else the tests of the same run, else the target's mean,
else ``default_s``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

# Weight of the newest attempt in a test's moving average: durations drift
# slowly (a test grows, a device gets slower), outliers should not dominate.
NEWEST_WEIGHT = 0.3
_NO_MEAN = -1.0  # in a look-up cache: a suite without a mean yet (durations are never negative)


def suite_of(test: str) -> str:
    """The folder a spec lives in: the unit its tests are estimated by."""
    head, sep, _ = test.rpartition("/")
    return head if sep else ""


TestKey = tuple[str, str, str]  # (org, test, target)
SuiteKey = tuple[str, str, str]  # (org, folder, target): what a test never seen is estimated by first


def keys_of(org_id: str, test: str, target: str) -> tuple[TestKey, SuiteKey]:
    """A job's keys into the estimates, made once per job rather than once per look-up."""
    return (org_id, test, target), (org_id, suite_of(test), target)


class _Job(Protocol):
    org_id: str
    test: str
    target: str
    run_id: str
    test_key: TestKey
    suite_key: SuiteKey


@dataclass(slots=True)
class _Mean:
    """The mean of the per-test estimates of a set of tests."""

    total: float = 0.0
    count: int = 0

    @property
    def value(self) -> float | None:
        return self.total / self.count if self.count else None


def _value(mean: _Mean | None) -> float | None:
    return None if mean is None else mean.value


@dataclass(slots=True)
class Estimates:
    default_s: float = 60.0
    default_install_s: float = 60.0
    tests: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (org, test, target) -> seconds
    suites: dict[tuple[str, str, str], _Mean] = field(default_factory=dict)  # (org, folder, target)
    runs: dict[tuple[str, str], _Mean] = field(default_factory=dict)  # (run_id, target)
    targets: dict[str, _Mean] = field(default_factory=dict)
    installs: dict[str, float] = field(default_factory=dict)  # target -> seconds

    def learn(self, org_id: str, test: str, target: str, run_id: str, seconds: float) -> None:
        """Fold one attempt's duration in."""
        key = (org_id, test, target)
        old = self.tests.get(key)
        new = seconds if old is None else old + NEWEST_WEIGHT * (seconds - old)
        self.tests[key] = new
        for mean in (
            self.suites.setdefault((org_id, suite_of(test), target), _Mean()),
            self.targets.setdefault(target, _Mean()),
        ):
            mean.total += new - (old or 0.0)
            mean.count += old is None
        run = self.runs.setdefault((run_id, target), _Mean())
        run.total += seconds
        run.count += 1

    def learn_install(self, target: str, seconds: float) -> None:
        old = self.installs.get(target)
        self.installs[target] = seconds if old is None else old + NEWEST_WEIGHT * (seconds - old)

    def test_s(self, org_id: str, test: str, target: str, run_id: str) -> float:
        """Estimated seconds one attempt of ``test`` takes on ``target``."""
        known = self.tests.get((org_id, test, target))
        if known is not None:
            return known
        for mean in (
            self.suites.get((org_id, suite_of(test), target)),
            self.runs.get((run_id, target)),
            self.targets.get(target),
        ):
            value = _value(mean)
            if value is not None:
                return value
        return self.default_s

    def tests_s(self, jobs: Iterable[_Job]) -> list[float]:
        """:meth:`test_s` of each job, in order; tests never seen share their
        suite's mean, looked up once per suite (jobs submitted one by one are
        each a run of their own: a suite is what they share), else their
        run's, else their target's, looked up once per target."""
        tests, suites, runs = self.tests, self.suites, self.runs
        by_suite: dict[SuiteKey, float] = {}  # _NO_MEAN: the suite has none yet
        by_target: dict[str, float] = {}
        out = []
        for j in jobs:
            known = tests.get(j.test_key)
            if known is None:
                known = by_suite.get(j.suite_key)
                if known is None:
                    suite = _value(suites.get(j.suite_key))
                    known = by_suite[j.suite_key] = _NO_MEAN if suite is None else suite
                if known == _NO_MEAN:
                    known = _value(runs.get((j.run_id, j.target)))
                    if known is None:
                        known = by_target.get(j.target)
                        if known is None:
                            known = by_target[j.target] = self._target_s(j.target)
            out.append(known)
        return out

    def _target_s(self, target: str) -> float:
        value = _value(self.targets.get(target))
        return self.default_s if value is None else value

    def install_s(self, target: str) -> float:
        """Estimated seconds an install of a build takes on ``target``."""
        return self.installs.get(target, self.default_install_s)
