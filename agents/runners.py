"""Runners: how an agent installs a build and runs one test.

``simulate`` takes durations and outcomes from a JSON file or from rules in
the test path: a path containing ``fail`` always fails, one containing
``flaky`` fails on its first attempt and passes after.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec


@dataclass(frozen=True, slots=True)
class Outcome:
    passed: bool
    duration_ms: int
    error: str | None = None


class Runner(Protocol):
    name: str

    async def install(self, app_version_id: str, target: str) -> None: ...

    async def run(self, test: str, target: str, app_version_id: str, attempt: int) -> Outcome: ...


class SimulatedTest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    duration: float = 0.2
    outcomes: list[str] = msgspec.field(default_factory=lambda: ["pass"])  # per attempt; the last repeats
    error: str = "simulated failure"


class SimulateScript(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``--simulate-file`` format: per-test durations and outcomes."""

    tests: dict[str, SimulatedTest] = {}
    install_seconds: dict[str, float] = {}
    default_duration: float | None = None


class SimulateRunner:
    """Sleeps instead of testing; the outcome follows the script or path rules."""

    name = "simulate"

    def __init__(
        self,
        *,
        script: SimulateScript | None = None,
        duration_s: float = 0.2,
        install_s: float = 0.5,
    ) -> None:
        self.script = script or SimulateScript()
        self.duration_s = self.script.default_duration if self.script.default_duration is not None else duration_s
        self.install_s = install_s

    @classmethod
    def from_file(cls, path: Path, **kwargs: float) -> SimulateRunner:
        try:
            script = msgspec.json.decode(path.read_bytes(), type=SimulateScript)
        except (OSError, msgspec.DecodeError) as exc:
            raise ValueError(f"simulate file {path}: {exc}") from exc
        return cls(script=script, **kwargs)

    async def install(self, app_version_id: str, target: str) -> None:
        await asyncio.sleep(self.script.install_seconds.get(target, self.install_s))

    def plan(self, test: str, attempt: int) -> tuple[float, bool, str]:
        """``(seconds, passed, error)`` for this attempt of ``test``."""
        spec = self.script.tests.get(test)
        if spec is not None:
            outcomes = spec.outcomes or ["pass"]
            result = outcomes[min(attempt, len(outcomes)) - 1]
            return spec.duration, result == "pass", spec.error
        name = Path(test).name.lower()
        if "fail" in name:
            return self.duration_s, False, f"{test}: assertion failed (simulated)"
        if "flaky" in name:
            return self.duration_s, attempt > 1, f"{test}: timed out waiting for element (simulated flake)"
        return self.duration_s, True, ""

    async def run(self, test: str, target: str, app_version_id: str, attempt: int) -> Outcome:
        seconds, passed, error = self.plan(test, attempt)
        if seconds > 0:
            await asyncio.sleep(seconds)
        return Outcome(passed=passed, duration_ms=int(seconds * 1000), error=None if passed else error)
