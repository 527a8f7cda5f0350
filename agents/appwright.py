"""The ``appwright`` runner: ``npx appwright test <spec> --project <project>``, judged by its JSON report.

AppWright runs Playwright's test runner underneath and passes its arguments
and environment through, so the runner asks for Playwright's JSON reporter
(``--reporter=list,json``: ``list`` keeps a readable log) and points it at a
fresh file per attempt with ``PLAYWRIGHT_JSON_OUTPUT_NAME`` (and, for
Playwright 1.44+, ``PLAYWRIGHT_JSON_OUTPUT_FILE``), both an absolute path.

The report (see :func:`parse_report`) decides the outcome: the attempt passed
when no test ended ``unexpected``, no error happened outside the tests, and
AppWright exited 0 (``--fail-on-flaky-tests`` and teardown failures exit 1
with every test passed). A test that passed on a Playwright retry is
``flaky``, which passes. When the report is missing or unreadable, the exit
code decides and the error says the report was missing.

A qgjob target maps to an AppWright project (``projects`` in
``appwright.config.ts``); :data:`DEFAULT_PROJECTS` is the default, entries
given to the runner override it, and a target with no entry is used as the
project name itself.
"""

from __future__ import annotations

import logging
import shlex
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from agents.command import INSTALL_PLACEHOLDERS, RUN_PLACEHOLDERS, CommandRunner, Finished, strip_ansi
from agents.runners import Outcome
from eventstore.errors import QgjobError

log = logging.getLogger(__name__)

DEFAULT_PROJECTS: Mapping[str, str] = {
    "emulator": "android",
    "device": "android-device",
    "browserstack": "browserstack",
}
REPORT_ENV = ("PLAYWRIGHT_JSON_OUTPUT_NAME", "PLAYWRIGHT_JSON_OUTPUT_FILE")
TITLE_SEPARATOR = " › "  # as Playwright prints a test's title path
MAX_ERROR_CHARS = 2000


class ReportUnreadable(QgjobError):
    """The AppWright JSON report could not be read."""


# The parts of Playwright's JSON report that decide an outcome. Unknown fields
# are ignored, missing ones take a default, so reporter versions can differ.


class _Error(msgspec.Struct):
    message: str | None = None


class _Result(msgspec.Struct, rename="camel"):
    status: str = "passed"  # passed | failed | timedOut | skipped | interrupted
    duration: float = 0.0
    retry: int = 0
    error: _Error | None = None
    errors: list[_Error] = []


class _Test(msgspec.Struct, rename="camel"):
    status: str | None = None  # expected | unexpected | flaky | skipped
    expected_status: str = "passed"
    project_name: str = ""
    results: list[_Result] = []


class _Spec(msgspec.Struct):
    title: str = ""
    tests: list[_Test] = []


class _Suite(msgspec.Struct):
    title: str = ""
    specs: list[_Spec] = []
    suites: list[_Suite] | None = None


class _Stats(msgspec.Struct):
    duration: float | None = None
    expected: int = 0
    unexpected: int = 0
    flaky: int = 0
    skipped: int = 0


class _Report(msgspec.Struct):
    suites: list[_Suite] = []
    errors: list[_Error] = []
    stats: _Stats | None = None


@dataclass(frozen=True, slots=True)
class AppwrightReport:
    """What one AppWright JSON report says, reduced to what a job needs."""

    expected: int = 0
    unexpected: int = 0
    flaky: int = 0
    skipped: int = 0
    duration_ms: int | None = None
    failures: list[str] = field(default_factory=list)  # "title path: message" per unexpected test
    flaky_tests: list[str] = field(default_factory=list)  # title paths of tests that passed on a retry
    errors: list[str] = field(default_factory=list)  # errors outside any test (config, syntax, no tests)

    @property
    def passed(self) -> bool:
        return self.unexpected == 0 and not self.errors and self.expected + self.flaky + self.skipped > 0

    @property
    def error(self) -> str | None:
        if self.passed:
            return None
        if self.failures:
            return self.failures[0]
        if self.errors:
            return f"error outside the tests: {self.errors[0]}"
        if self.unexpected:
            return f"{self.unexpected} test(s) failed"
        return "no tests ran (the report lists none)"


def _clean(message: str) -> str:
    text = strip_ansi(message).strip()
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _walk(suites: list[_Suite], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], _Test]]:
    """Every test with its title path (file, describe blocks, spec), in report order."""
    for suite in suites:
        here = (*path, suite.title) if suite.title else path
        for spec in suite.specs:
            for test in spec.tests:
                yield (*here, spec.title), test
        yield from _walk(suite.suites or [], here)


def _status(test: _Test) -> str:
    """The test's outcome; derived from its results when the report omits it."""
    if test.status:
        return test.status
    ran = [r for r in test.results if r.status != "skipped"]
    if not ran:
        return "skipped"
    matching = [r.status == test.expected_status for r in ran]
    if all(matching):
        return "expected"
    return "flaky" if any(matching) else "unexpected"


def _failure_message(test: _Test) -> str:
    """The first error message among the test's attempts, or what its status says."""
    for result in test.results:
        if result.error is not None and result.error.message:
            return _clean(result.error.message)
        for error in result.errors:
            if error.message:
                return _clean(error.message)
    last = test.results[-1].status if test.results else "failed"
    return {"timedOut": "test timed out", "interrupted": "test was interrupted"}.get(last, f"test {last}")


def parse_report(data: bytes) -> AppwrightReport:
    """Read a Playwright JSON report; :class:`ReportUnreadable` when it is not one."""
    try:
        raw = msgspec.json.decode(data, type=_Report)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ReportUnreadable(f"not a Playwright JSON report: {exc}") from exc
    counts = {"expected": 0, "unexpected": 0, "flaky": 0, "skipped": 0}
    failures: list[str] = []
    flaky_tests: list[str] = []
    result_ms = 0.0
    for titles, test in _walk(raw.suites):
        status = _status(test)
        counts[status] = counts.get(status, 0) + 1
        result_ms += sum(r.duration for r in test.results)
        if status == "unexpected":
            failures.append(f"{TITLE_SEPARATOR.join(titles)}: {_failure_message(test)}")
        elif status == "flaky":
            flaky_tests.append(TITLE_SEPARATOR.join(titles))
    stats = raw.stats
    if stats is not None:  # a test the walk could not see (e.g. a merged report) still counts
        counts["unexpected"] = max(counts["unexpected"], stats.unexpected)
    if stats is not None and stats.duration is not None:
        duration_ms: int | None = round(stats.duration)
    elif result_ms:
        duration_ms = round(result_ms)
    else:
        duration_ms = None
    return AppwrightReport(
        expected=counts["expected"],
        unexpected=counts["unexpected"],
        flaky=counts["flaky"],
        skipped=counts["skipped"],
        duration_ms=duration_ms,
        failures=failures,
        flaky_tests=flaky_tests,
        errors=[_clean(e.message) for e in raw.errors if e.message],
    )


def judge(report: AppwrightReport, done: Finished) -> Outcome:
    """The attempt's outcome from its report and how the process ended."""
    duration = report.duration_ms if report.duration_ms is not None else done.duration_ms
    if not report.passed:
        return Outcome(False, duration, report.error, log=done.log)
    if done.returncode != 0:
        return Outcome(False, duration, f"every test passed but appwright ended with {done.failure()}", log=done.log)
    return Outcome(True, duration, None, log=done.log)


class AppwrightRunner(CommandRunner):
    """Runs each test with ``<npx> appwright test {test} --project {project}``.

    ``npx`` is the command prefix (``"npx"``, or e.g. ``"pnpm exec"``, or a
    fake in tests); ``projects`` maps targets to AppWright project names over
    :data:`DEFAULT_PROJECTS`; ``extra_args`` are appended (a template too,
    e.g. ``"--config appwright.config.ts"``). Install, timeout, environment
    and working folder work as in :class:`~agents.command.CommandRunner`.
    """

    name = "appwright"
    run_placeholders = RUN_PLACEHOLDERS | {"project"}
    install_placeholders = INSTALL_PLACEHOLDERS | {"project"}

    def __init__(
        self,
        *,
        npx: str = "npx",
        projects: Mapping[str, str] | None = None,
        extra_args: str = "",
        reporter: str = "list,json",
        install_command: str | None = None,
        timeout_s: float | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        install_timeout_s: float | None = None,
        kill_grace_s: float = 3.0,
    ) -> None:
        if "json" not in reporter.split(","):
            raise ValueError(f"reporter {reporter!r} must include json: the outcome is read from its report")
        self.projects = {**DEFAULT_PROJECTS, **(projects or {})}
        prefix = shlex.split(npx)
        if not prefix:
            raise ValueError("npx command prefix is empty")
        command = shlex.join(
            [*prefix, "appwright", "test", "{test}", "--project", "{project}", f"--reporter={reporter}"]
        )
        if extra_args.strip():
            command = f"{command} {extra_args}"
        super().__init__(
            command,
            install_command,
            timeout_s,
            env,
            cwd,
            install_timeout_s=install_timeout_s,
            kill_grace_s=kill_grace_s,
        )

    def project(self, target: str) -> str:
        return self.projects.get(target, target)

    def run_values(self, test: str, target: str, app_version_id: str) -> dict[str, str]:
        return {**super().run_values(test, target, app_version_id), "project": self.project(target)}

    def install_values(self, app_version_id: str, target: str) -> dict[str, str]:
        return {**super().install_values(app_version_id, target), "project": self.project(target)}

    async def run(
        self, test: str, target: str, app_version_id: str, attempt: int, timeout_s: float | None = None
    ) -> Outcome:
        with tempfile.TemporaryDirectory(prefix="qgjob-appwright-") as folder:
            report_path = Path(folder) / "report.json"
            done = await self.execute(
                self.argv(test, target, app_version_id, attempt),
                timeout_s=timeout_s if timeout_s is not None else self.timeout_s,
                env={
                    **self.run_env(test, target, app_version_id, attempt),
                    **dict.fromkeys(REPORT_ENV, str(report_path)),
                },
            )
            if done.timed_out:
                return done.outcome
            try:
                report = parse_report(report_path.read_bytes())
            except FileNotFoundError:
                return self._without_report(done, "it wrote none")
            except (OSError, ReportUnreadable) as exc:
                return self._without_report(done, str(exc))
        return judge(report, done)

    @staticmethod
    def _without_report(done: Finished, reason: str) -> Outcome:
        if done.returncode == 0:
            log.warning("appwright exited 0 without a readable JSON report (%s): counting it as passed", reason)
            return done.outcome
        return Outcome(False, done.duration_ms, f"{done.failure()} (no AppWright report: {reason})", log=done.log)
