"""Runners: how an agent installs a build and runs one test.

``simulate`` takes durations and outcomes from a JSON file or from rules in
the test path: a path containing ``fail`` always fails, one containing
``flaky`` fails on its first attempt and passes after. ``command``
(:mod:`agents.command`) runs a command template per test, and ``appwright``
(:mod:`agents.appwright`) runs ``npx appwright test`` and reads its JSON report.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import msgspec

from eventstore.errors import QgjobError

LOG_TAIL_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt of one test."""

    passed: bool
    duration_ms: int
    error: str | None = None
    log: bytes = field(default=b"", repr=False)  # the attempt's whole stdout and stderr, interleaved

    @property
    def log_tail(self) -> str:
        """The last 4 KiB of the log as text (undecodable bytes replaced)."""
        return tail_text(self.log)

    @property
    def log_fits_tail(self) -> bool:
        """Whether :attr:`log_tail` holds the whole log, so it needs no separate store."""
        return len(self.log) <= LOG_TAIL_BYTES


def tail_text(data: bytes, size: int = LOG_TAIL_BYTES) -> str:
    """The last ``size`` bytes of ``data`` decoded as UTF-8, never starting mid-character."""
    tail = data[-size:]
    if len(data) > size:
        skip = 0
        while skip < 3 and skip < len(tail) and tail[skip] & 0xC0 == 0x80:
            skip += 1
        tail = tail[skip:]
    return tail.decode("utf-8", errors="replace")


class InstallFailed(QgjobError):
    """Installing the build on the target failed."""


def timed_out_message(seconds: float) -> str:
    """The error of an attempt stopped by its timeout: ``timed out after 30 s``."""
    return f"timed out after {seconds:g} s"


class Runner(Protocol):
    """How an agent installs a build and runs one test of it.

    ``install`` runs once per batch (not at all when the build is already
    installed) and raises :class:`InstallFailed` when it fails. ``run`` never
    raises for a failing test: a failure, a crash or a timeout (``timeout_s``,
    when given, overrides the runner's default) is a failed :class:`Outcome`.

    Cancellation: when the task awaiting ``install`` or ``run`` is cancelled,
    the runner stops everything it started (for a process: its whole process
    group, SIGTERM then SIGKILL after a short grace) before re-raising
    :class:`asyncio.CancelledError`, so no process outlives the call.
    """

    name: str

    async def install(self, app_version_id: str, target: str) -> None: ...

    async def run(
        self, test: str, target: str, app_version_id: str, attempt: int, timeout_s: float | None = None
    ) -> Outcome: ...


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

    async def run(
        self, test: str, target: str, app_version_id: str, attempt: int, timeout_s: float | None = None
    ) -> Outcome:
        seconds, passed, error = self.plan(test, attempt)
        head = f"[simulate] {test} on {target} ({app_version_id}), attempt {attempt}\n"
        if timeout_s is not None and seconds > timeout_s:
            await asyncio.sleep(timeout_s)
            message = timed_out_message(timeout_s)
            return Outcome(
                passed=False, duration_ms=int(timeout_s * 1000), error=message, log=f"{head}{message}\n".encode()
            )
        if seconds > 0:
            await asyncio.sleep(seconds)
        tail = "1 passed\n" if passed else f"Error: {error}\n1 failed\n"
        return Outcome(
            passed=passed, duration_ms=int(seconds * 1000), error=None if passed else error, log=(head + tail).encode()
        )
