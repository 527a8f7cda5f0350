"""GitHub Actions output: workflow-command annotations and the job summary.

Workflow commands (``::error file=...,title=...::message``) must escape their
data: ``%`` as ``%25``, CR as ``%0D`` and LF as ``%0A``; property values
(``file``, ``title``) also ``:`` as ``%3A`` and ``,`` as ``%2C``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

FAILED = ("failed", "error", "cancelled")


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(kind: str, message: str, **props: str) -> str:
    """One workflow command line, e.g. ``::error file=a.js,title=t::boom``."""
    head = ",".join(f"{k}={escape_property(v)}" for k, v in props.items())
    return f"::{kind}{' ' + head if head else ''}::{escape_data(message)}"


def annotations(jobs: Sequence[Mapping[str, Any]], *, unfinished_note: str | None = None) -> list[str]:
    """``::error`` per failed, errored or cancelled spec (and unfinished ones when
    ``unfinished_note`` says why), ``::warning`` per flaky pass."""
    lines = []
    for job in jobs:
        spec, target, status = job["test"], job["target"], job["status"]
        attempts = job.get("attempts") or 0
        if status in FAILED:
            message = job.get("error") or status
            if status == "failed":
                message = f"{message}\n(failed after {attempts} attempt(s))"
            lines.append(command("error", message, file=spec, title=f"{spec} {status} on {target}"))
        elif status == "passed" and job.get("flaky"):
            message = f"passed on attempt {attempts} after failing: {job.get('error') or 'an earlier attempt failed'}"
            lines.append(command("warning", message, file=spec, title=f"{spec} is flaky on {target}"))
        elif status != "passed" and unfinished_note:
            lines.append(
                command("error", f"{unfinished_note} (status: {status})", file=spec, title=f"{spec} did not finish")
            )
    return lines


def _cell(value: object) -> str:
    text = " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def summary(
    jobs: Sequence[Mapping[str, Any]], *, run_id: str, headline: str, seconds: float, max_rows: int = 200
) -> str:
    """The Markdown appended to ``$GITHUB_STEP_SUMMARY``: counts and a table of failures."""
    counts = {s: 0 for s in ("passed", "failed", "error", "cancelled")}
    unfinished = flaky = 0
    for job in jobs:
        if job["status"] in counts:
            counts[job["status"]] += 1
        else:
            unfinished += 1
        flaky += 1 if job["status"] == "passed" and job.get("flaky") else 0
    lines = [
        f"### qgjob run `{run_id}`: {headline}",
        "",
        "| total | passed | failed | errored | cancelled | flaky | unfinished | time |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {len(jobs)} | {counts['passed']} | {counts['failed']} | {counts['error']} | {counts['cancelled']} "
        f"| {flaky} | {unfinished} | {seconds:.1f} s |",
        "",
    ]
    bad = [j for j in jobs if j["status"] != "passed"]
    if bad:
        lines += ["#### Failures", "", "| test | target | status | attempts | error |", "|---|---|---|---:|---|"]
        for job in bad[:max_rows]:
            error = job.get("error") or ""
            lines.append(
                f"| `{_cell(job['test'])}` | {_cell(job['target'])} | {_cell(job['status'])} "
                f"| {job.get('attempts') or 0} | {_cell(error[:300])} |"
            )
        if len(bad) > max_rows:
            lines.append(f"\n…and {len(bad) - max_rows} more.")
        lines.append("")
    flaky_jobs = [j for j in jobs if j["status"] == "passed" and j.get("flaky")]
    if flaky_jobs:
        lines += ["#### Flaky (passed after failing)", ""]
        lines += [f"- `{_cell(j['test'])}` on {_cell(j['target'])}: attempt {j.get('attempts')}" for j in flaky_jobs]
        lines.append("")
    return "\n".join(lines) + "\n"


def append_summary(path: Path, markdown: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(markdown)
