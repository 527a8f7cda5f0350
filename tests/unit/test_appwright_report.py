"""Reading Playwright JSON reports (as AppWright writes them) into outcomes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agents.appwright import AppwrightReport, ReportUnreadable, judge, parse_report
from agents.command import Finished

FIXTURES = Path(__file__).parent.parent / "fixtures"

TOUR_TIMED_OUT = "onboarding.spec.ts › Onboarding › tour › can skip the tour: Test timeout of 30000ms exceeded."
VISIBLE_ERROR = (
    "Error: expect(locator).toBeVisible() failed\n\n"
    "Locator: getByText('Check your inbox')\n"
    "Expected: visible\n"
    "Received: <element(s) not found>\n"
    "Timeout: 10000ms\n\n"
    "Call log:\n"
    "  - waiting for getByText('Check your inbox')"
)


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"appwright-report-{name}.json").read_text())
    return data


def parse(data: dict[str, Any]) -> AppwrightReport:
    return parse_report(json.dumps(data).encode())


def finished(returncode: int | None = 0, log: bytes = b"") -> Finished:
    return Finished(["npx", "appwright", "test"], returncode, 1234, log, 30.0)


def test_failed_report_names_the_first_failing_test_and_its_message_without_colours() -> None:
    report = parse_report((FIXTURES / "appwright-report-failed.json").read_bytes())

    assert not report.passed
    assert (report.expected, report.unexpected, report.flaky, report.skipped) == (1, 2, 0, 1)
    assert report.duration_ms == 102319  # stats.duration, rounded
    assert report.error == f"onboarding.spec.ts › Onboarding › accepts a valid email: {VISIBLE_ERROR}"
    assert report.failures[1] == TOUR_TIMED_OUT
    assert all("\x1b" not in failure for failure in report.failures)


def test_a_timed_out_test_in_a_nested_suite_is_reported_with_its_title_path() -> None:
    data = fixture("failed")
    onboarding = data["suites"][0]["suites"][0]
    onboarding["specs"] = [s for s in onboarding["specs"] if s["title"] != "accepts a valid email"]
    data["stats"]["unexpected"] = 1

    report = parse(data)

    assert not report.passed
    assert report.unexpected == 1
    assert report.error == TOUR_TIMED_OUT


def test_passed_report_with_a_skipped_test_passes() -> None:
    report = parse_report((FIXTURES / "appwright-report-passed.json").read_bytes())

    assert report.passed
    assert report.error is None
    assert (report.expected, report.unexpected, report.flaky, report.skipped) == (3, 0, 0, 1)
    assert report.duration_ms == 25110
    assert report.failures == []


def test_a_test_that_passed_on_a_playwright_retry_is_flaky_and_passes() -> None:
    report = parse_report((FIXTURES / "appwright-report-flaky.json").read_bytes())

    assert report.passed
    assert report.error is None
    assert (report.expected, report.unexpected, report.flaky) == (1, 0, 1)
    assert report.flaky_tests == ["checkout.spec.ts › Checkout › pays with a saved card"]
    assert report.duration_ms == 40533


def test_an_error_outside_any_test_fails_the_run() -> None:
    message = "\x1b[31mError: No tests found.\x1b[39m\nMake sure that arguments are regular expressions"
    data = {
        "config": {"version": "1.49.1"},
        "suites": [],
        "errors": [{"message": message}],
        "stats": {"startTime": "2025-03-14T09:26:09.512Z", "duration": 412.5, "expected": 0, "skipped": 0,
                  "unexpected": 0, "flaky": 0},
    }  # fmt: skip

    report = parse(data)

    assert not report.passed
    assert report.error == (
        "error outside the tests: Error: No tests found.\nMake sure that arguments are regular expressions"
    )


def test_a_report_without_tests_does_not_pass() -> None:
    report = parse({"config": {}, "suites": [], "errors": [], "stats": {"duration": 3.0}})

    assert not report.passed
    assert report.error == "no tests ran (the report lists none)"


def test_without_test_statuses_the_outcome_comes_from_the_results() -> None:
    retried = [{"status": "failed", "duration": 5}, {"status": "passed", "duration": 7}]
    spec = {
        "title": "retries",
        "tests": [
            {"expectedStatus": "passed", "results": retried},
            {"expectedStatus": "passed", "results": [{"status": "interrupted", "duration": 1}]},
        ],
    }
    report = parse({"suites": [{"title": "a.spec.ts", "specs": [spec]}]})

    assert (report.flaky, report.unexpected) == (1, 1)
    assert report.error == "a.spec.ts › retries: test was interrupted"
    assert report.duration_ms == 13  # no stats: the sum of the results' durations


@pytest.mark.parametrize("data", [b"", b"{not json", b"[1, 2]", b'{"suites": 3}', b'{"suites": [{"specs": {}}]}'])
def test_unreadable_reports_raise(data: bytes) -> None:
    with pytest.raises(ReportUnreadable, match="not a Playwright JSON report"):
        parse_report(data)


def test_judge_fails_when_the_report_passes_but_appwright_exits_non_zero() -> None:
    report = parse(fixture("flaky"))

    outcome = judge(report, finished(1, b"1 flaky\nError: flaky tests are not allowed\n"))

    assert not outcome.passed
    assert outcome.error == "every test passed but appwright ended with exit code 1: Error: flaky tests are not allowed"
    assert outcome.duration_ms == 40533


def test_judge_takes_the_duration_and_error_from_the_report_and_keeps_the_log() -> None:
    outcome = judge(parse(fixture("failed")), finished(1, b"2 failed\n"))

    assert not outcome.passed
    assert outcome.duration_ms == 102319
    assert outcome.error is not None and outcome.error.startswith("onboarding.spec.ts › Onboarding › accepts a valid")
    assert outcome.log == b"2 failed\n"

    passed = judge(parse(fixture("passed")), finished(0))
    assert (passed.passed, passed.error, passed.duration_ms) == (True, None, 25110)
