"""JUnit XML for a finished (or timed-out) run, as CI test reporters read it.

The layout is the de-facto schema that Jenkins' JUnit plugin, GitLab's unit
test reports and GitHub reporters (dorny/test-reporter,
mikepenz/action-junit-report) all parse: ``<testsuites>`` holding one
``<testsuite>`` per target, one ``<testcase>`` per spec with ``classname``
(the spec path), ``name`` (the spec file name), ``file`` and ``time``.

- failed: ``<failure message=... type="failed">`` whose text is the error and
  the tail of the last attempt's log;
- error (infrastructure failures exhausted) or not finished by ``--timeout``:
  ``<error message=... type=...>``;
- cancelled: ``<skipped message="cancelled">``;
- flaky (passed after failing): a passing testcase with
  ``<property name="flaky" value="true"/>`` (and ``attempts``) in its
  ``<properties>``, Maven Surefire's ``<flakyFailure>`` element for the
  failure that preceded the pass (Surefire writes it for re-run tests; Jenkins
  keeps the case passed and its Flaky Test Handler plugin counts it as a
  flake), and a ``<system-out>`` note that every reporter shows. Parsers
  that know none of these still count the case as passed.
"""

from __future__ import annotations

import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

# XML 1.0 cannot carry most control characters, even escaped: drop them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
LOG_TAIL_CHARS = 4000


def _text(value: object) -> str:
    return _NOT_XML.sub("", str(value))


def _seconds(job: Mapping[str, Any]) -> str:
    ms = job.get("duration_ms") or 0
    return f"{ms / 1000:.3f}"


def _first_line(text: str, limit: int = 500) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _failure_body(job: Mapping[str, Any]) -> str:
    parts = [job.get("error") or job["status"]]
    tail = (job.get("log_tail") or "").rstrip()
    if tail:
        parts.append(f"--- log tail (attempt {job.get('attempts') or '?'}) ---\n{tail[-LOG_TAIL_CHARS:]}")
    return _text("\n\n".join(parts))


def testcase(job: Mapping[str, Any], *, timed_out: bool = False) -> ET.Element:
    """One spec's ``<testcase>``."""
    spec = job["test"]
    case = ET.Element(
        "testcase",
        {
            "classname": _text(spec),
            "name": _text(PurePosixPath(spec).name),
            "file": _text(spec),
            "time": _seconds(job),
        },
    )
    status = job["status"]
    attempts = int(job.get("attempts") or 0)
    error = job.get("error") or ""
    props = {"job_id": job.get("job_id", ""), "status": status, "attempts": str(attempts)}
    if status == "passed" and job.get("flaky"):
        props["flaky"] = "true"
    properties = ET.SubElement(case, "properties")
    for name, value in props.items():
        ET.SubElement(properties, "property", {"name": name, "value": _text(value)})
    if status == "failed":
        message = _first_line(error) or "failed"
        failure = ET.SubElement(case, "failure", {"message": _text(message), "type": "failed"})
        failure.text = _failure_body(job)
    elif status == "error":
        message = _first_line(error) or "infrastructure error"
        failure = ET.SubElement(case, "error", {"message": _text(message), "type": "infrastructure"})
        failure.text = _failure_body(job)
    elif status == "cancelled":
        ET.SubElement(case, "skipped", {"message": "cancelled"})
    elif status != "passed":
        why = "did not finish before --timeout" if timed_out else "did not finish"
        failure = ET.SubElement(case, "error", {"message": f"{why} (status: {status})", "type": "unfinished"})
        failure.text = _text(f"{why}; last status {status} after {attempts} attempt(s)")
    elif job.get("flaky"):
        flaky = ET.SubElement(case, "flakyFailure", {"message": _text(_first_line(error) or "failed"), "type": "flaky"})
        ET.SubElement(flaky, "stackTrace").text = _text(error or "an earlier attempt failed")
        out = ET.SubElement(case, "system-out")
        out.text = _text(f"flaky: passed on attempt {attempts} after failing" + (f": {error}" if error else ""))
    return case


def document(
    jobs: Iterable[Mapping[str, Any]],
    *,
    run_id: str,
    timed_out: bool = False,
    timestamp: datetime | None = None,
    hostname: str | None = None,
) -> ET.ElementTree:
    """``<testsuites>`` with one ``<testsuite>`` per target, in first-seen order."""
    by_target: dict[str, list[Mapping[str, Any]]] = {}
    for job in jobs:
        by_target.setdefault(job["target"], []).append(job)
    stamp = (timestamp or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S")
    host = hostname or socket.gethostname()
    root = ET.Element("testsuites", {"name": f"qgjob run {run_id}"})
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    total_ms = 0
    for n, (target, members) in enumerate(by_target.items()):
        counts = {
            "tests": len(members),
            "failures": sum(1 for j in members if j["status"] == "failed"),
            "errors": sum(1 for j in members if j["status"] not in ("passed", "failed", "cancelled")),
            "skipped": sum(1 for j in members if j["status"] == "cancelled"),
        }
        ms = sum(int(j.get("duration_ms") or 0) for j in members)
        suite = ET.SubElement(
            root,
            "testsuite",
            {
                "name": _text(target),
                "id": str(n),
                **{k: str(v) for k, v in counts.items()},
                "time": f"{ms / 1000:.3f}",
                "timestamp": stamp,
                "hostname": _text(host),
            },
        )
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", {"name": "run_id", "value": _text(run_id)})
        ET.SubElement(properties, "property", {"name": "target", "value": _text(target)})
        flaky = sum(1 for j in members if j["status"] == "passed" and j.get("flaky"))
        ET.SubElement(properties, "property", {"name": "flaky", "value": str(flaky)})
        for job in members:
            suite.append(testcase(job, timed_out=timed_out))
        for key, value in counts.items():
            totals[key] += value
        total_ms += ms
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{total_ms / 1000:.3f}")
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def write(path: Path, jobs: Iterable[Mapping[str, Any]], *, run_id: str, timed_out: bool = False) -> None:
    """Write the report to ``path`` (UTF-8, with an XML declaration), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    document(jobs, run_id=run_id, timed_out=timed_out).write(tmp, encoding="utf-8", xml_declaration=True)
    tmp.replace(path)
