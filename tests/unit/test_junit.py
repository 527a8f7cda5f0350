"""The JUnit writer: counts per target, a testcase per spec, failures with the
log tail, errors, skipped cancels, flaky passes marked."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from qgjob import junit

JOBS = [
    {"job_id": "j1", "test": "tests/login.spec.js", "target": "emulator", "status": "passed", "attempts": 1,
     "flaky": False, "duration_ms": 1200, "error": None, "log_tail": "1 passed\n"},
    {"job_id": "j2", "test": "tests/pay_fail.spec.js", "target": "emulator", "status": "failed", "attempts": 3,
     "flaky": False, "duration_ms": 800, "error": "expected <Paid> & got \x07nothing\nsecond line",
     "log_tail": "step 1\nError: expected Paid\n1 failed\n"},
    {"job_id": "j3", "test": "tests/onboarding_flaky.spec.js", "target": "emulator", "status": "passed",
     "attempts": 2, "flaky": True, "duration_ms": 500, "error": "timed out waiting for element", "log_tail": ""},
    {"job_id": "j4", "test": "a/b/search.spec.js", "target": "device", "status": "error", "attempts": 1,
     "flaky": False, "duration_ms": None, "error": "agent lost 3 times", "log_tail": None},
    {"job_id": "j5", "test": "tests/profile.spec.js", "target": "device", "status": "cancelled", "attempts": 0,
     "flaky": False, "duration_ms": None, "error": None},
    {"job_id": "j6", "test": "tests/slow.spec.js", "target": "device", "status": "running", "attempts": 1,
     "flaky": False, "duration_ms": None, "error": None},
]  # fmt: skip


def written(tmp_path: Path, **kwargs: object) -> ET.Element:
    path = tmp_path / "out" / "junit.xml"
    junit.write(path, JOBS, run_id="run-1", **kwargs)
    assert path.read_bytes().startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    return ET.parse(path).getroot()


def test_suites_per_target_with_counts(tmp_path: Path) -> None:
    root = written(tmp_path, timed_out=True)
    assert root.tag == "testsuites"
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "6", "failures": "1", "errors": "2", "skipped": "1",
    }  # fmt: skip
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["emulator", "device"]
    em, dev = suites["emulator"], suites["device"]
    assert (em.get("tests"), em.get("failures"), em.get("errors"), em.get("skipped")) == ("3", "1", "0", "0")
    assert (dev.get("tests"), dev.get("failures"), dev.get("errors"), dev.get("skipped")) == ("3", "0", "2", "1")
    assert em.get("time") == "2.500"
    assert [c.get("name") for c in em.findall("testcase")] == ["login.spec.js", "pay_fail.spec.js",
                                                                "onboarding_flaky.spec.js"]  # fmt: skip
    props = {p.get("name"): p.get("value") for p in em.find("properties")}
    assert props == {"run_id": "run-1", "target": "emulator", "flaky": "1"}


def test_failure_error_skipped_and_unfinished(tmp_path: Path) -> None:
    root = written(tmp_path, timed_out=True)
    cases = {c.get("file"): c for c in root.iter("testcase")}
    ok = cases["tests/login.spec.js"]
    assert (ok.get("classname"), ok.get("time")) == ("tests/login.spec.js", "1.200")
    assert ok.find("failure") is None and ok.find("flakyFailure") is None and ok.find("system-out") is None

    failure = cases["tests/pay_fail.spec.js"].find("failure")
    assert failure.get("message") == "expected <Paid> & got nothing"  # first line, control characters dropped
    assert failure.get("type") == "failed"
    assert "second line" in failure.text
    assert "--- log tail (attempt 3) ---\nstep 1\nError: expected Paid\n1 failed" in failure.text

    error = cases["a/b/search.spec.js"].find("error")
    assert (error.get("message"), error.get("type")) == ("agent lost 3 times", "infrastructure")
    assert cases["tests/profile.spec.js"].find("skipped").get("message") == "cancelled"
    unfinished = cases["tests/slow.spec.js"].find("error")
    assert unfinished.get("type") == "unfinished"
    assert unfinished.get("message") == "did not finish before --timeout (status: running)"


def test_flaky_pass_is_marked_three_ways(tmp_path: Path) -> None:
    root = written(tmp_path)
    case = next(c for c in root.iter("testcase") if c.get("file") == "tests/onboarding_flaky.spec.js")
    assert case.find("failure") is None and case.find("error") is None
    props = {p.get("name"): p.get("value") for p in case.find("properties")}
    assert props["flaky"] == "true" and props["attempts"] == "2" and props["status"] == "passed"
    flaky = case.find("flakyFailure")
    assert flaky.get("message") == "timed out waiting for element"
    assert flaky.find("stackTrace").text == "timed out waiting for element"
    assert case.find("system-out").text == "flaky: passed on attempt 2 after failing: timed out waiting for element"
