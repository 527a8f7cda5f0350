"""``qgjob run``: a whole suite as one run, from CI.

1. The paths and globs expand to spec files (sorted, de-duplicated).
2. The run gets an id derived from what it is: org, build, target and the
   spec list (plus the GitHub repository, workflow run and job when run
   inside GitHub Actions): ``run-<hash>``. Before submitting, that run is
   looked up: while it is still active, this command attaches to it and
   submits nothing, so a re-run CI step never duplicates a suite. A finished
   run does not block a new one: the next free generation
   (``run-<hash>-2``, ``-3``, ...) is used. Two invocations racing through
   the look-up submit the same run id under the same ``Idempotency-Key``, so
   the second gets the first one's jobs; and the server's dedup on (org,
   build, test, target) turns any spec still running in some other run into
   ``duplicate_of`` that job, which is then followed as well.
3. The specs go in one atomic bulk request (``POST /v1/jobs`` with ``jobs``).
4. The run is followed (:mod:`qgjob.follow`), then reported: a table, and
   optionally JUnit XML, a GitHub job summary and annotations.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from eventstore.errors import QgjobError
from qgjob.client import Client, ClientError, Unreachable
from qgjob.follow import TERMINAL, Tracked

SPEC_SUFFIXES = tuple(
    f".{kind}.{ext}" for kind in ("spec", "test") for ext in ("js", "ts", "mjs", "cjs", "mts", "cts", "jsx", "tsx")
)
SKIP_DIRS = frozenset(("node_modules",))
MAX_GENERATIONS = 1000
SUBMIT_ATTEMPTS = 3


class NoSpecs(QgjobError):
    """A path or glob matched no spec file."""


# --- expanding paths and globs -------------------------------------------------


def is_spec(name: str) -> bool:
    return name.endswith(SPEC_SUFFIXES)


def _specs_under(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        found += [Path(root) / f for f in files if is_spec(f)]
    return found


def _shown(path: Path, cwd: Path) -> str:
    """A path as a job's ``test``: relative to ``cwd`` (POSIX separators) when inside it."""
    absolute = Path(os.path.normpath(cwd / path))
    try:
        return PurePosixPath(absolute.relative_to(cwd).as_posix()).as_posix()
    except ValueError:
        return absolute.as_posix()


def expand(patterns: Sequence[str], cwd: Path | None = None) -> list[str]:
    """Spec paths for ``patterns``, sorted and de-duplicated.

    A pattern with ``*``, ``?`` or ``[`` is a glob (``**`` crosses folders);
    a folder, given or matched, stands for the spec files under it
    (``*.spec.js``, ``*.test.ts``, ... outside ``node_modules`` and hidden
    folders); a file given by name is taken as is. Raises :class:`NoSpecs`
    naming the first pattern that matched nothing.
    """
    cwd = Path(os.path.normpath(Path.cwd() if cwd is None else cwd.absolute()))
    found: set[str] = set()
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            hits = [cwd / h for h in sorted(glob.glob(pattern, root_dir=cwd, recursive=True))]
            if not SKIP_DIRS & set(Path(pattern).parts):
                hits = [h for h in hits if not SKIP_DIRS & set(Path(os.path.relpath(h, cwd)).parts)]
        else:
            hits = [cwd / pattern] if (cwd / pattern).exists() else []
        matched = []
        for hit in hits:
            matched += _specs_under(hit) if hit.is_dir() else [hit] if hit.is_file() else []
        if not matched:
            raise NoSpecs(f"no spec file matches {pattern!r} (looked in {cwd})")
        found.update(_shown(p, cwd) for p in matched)
    return sorted(found)


# --- starting or attaching ------------------------------------------------------


@dataclass(frozen=True)
class Suite:
    """What ``qgjob run`` was asked to run."""

    org_id: str
    app_version_id: str
    target: str
    specs: tuple[str, ...]
    priority: int = 5
    retries: int = 3
    labels: Mapping[str, str] = field(default_factory=dict)


def ci_identity(env: Mapping[str, str]) -> tuple[str, ...]:
    """What tells one CI job from another: GitHub's repository, workflow run and job."""
    if not env.get("GITHUB_RUN_ID"):
        return ()
    return tuple(env.get(k, "") for k in ("GITHUB_REPOSITORY", "GITHUB_RUN_ID", "GITHUB_JOB"))


def ci_labels(env: Mapping[str, str]) -> dict[str, str]:
    """Labels a job carries when submitted from GitHub Actions (branch, commit, CI URL)."""
    if env.get("GITHUB_ACTIONS") != "true":
        return {}
    labels = {"ci": "github-actions"}
    if env.get("GITHUB_REF_NAME"):
        labels["branch"] = env["GITHUB_REF_NAME"]
    if env.get("GITHUB_SHA"):
        labels["commit"] = env["GITHUB_SHA"]
    if env.get("GITHUB_SERVER_URL") and env.get("GITHUB_REPOSITORY") and env.get("GITHUB_RUN_ID"):
        labels["ci_url"] = f"{env['GITHUB_SERVER_URL']}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
    return {k: v[:512] for k, v in labels.items()}


def base_run_id(suite: Suite, identity: Sequence[str] = ()) -> str:
    """``run-<20 hex>`` from the org, build, target, specs and CI identity."""
    digest = hashlib.sha256()
    for part in (suite.org_id, suite.app_version_id, suite.target, *suite.specs, "|", *identity):
        digest.update(part.encode() + b"\0")
    return f"run-{digest.hexdigest()[:20]}"


@dataclass
class Started:
    run_id: str
    attached: bool  # nothing was submitted: every job was already there
    tracked: Tracked
    created: int = 0
    duplicates: int = 0


def _active(run: Mapping[str, Any]) -> bool:
    return any(j["status"] not in TERMINAL for j in run["jobs"])


def _lookup(client: Client, run_id: str) -> dict[str, Any] | None:
    try:
        return client.run(run_id)
    except ClientError as exc:
        if exc.status == 404:
            return None
        raise


def start(client: Client, suite: Suite, base: str) -> Started:
    """Attach to the active run of this suite, or submit the next generation of it."""
    for generation in range(1, MAX_GENERATIONS + 1):
        run_id = base if generation == 1 else f"{base}-{generation}"
        run = _lookup(client, run_id)
        if run is None:
            return _submit(client, suite, run_id)
        if _active(run):
            jobs = {j["job_id"]: j for j in sorted(run["jobs"], key=lambda j: j["test"])}
            return Started(run_id, attached=True, tracked=Tracked(jobs, {run_id}))
    raise QgjobError(f"{base}: {MAX_GENERATIONS} finished runs of this suite already; pass other specs or labels")


def _submit(client: Client, suite: Suite, run_id: str) -> Started:
    body = {
        "org_id": suite.org_id,
        "app_version_id": suite.app_version_id,
        "target": suite.target,
        "priority": suite.priority,
        "max_retries": suite.retries,
        "run_id": run_id,
        "labels": dict(suite.labels),
        "jobs": [{"test": spec} for spec in suite.specs],
    }
    for attempt in range(SUBMIT_ATTEMPTS):
        try:
            _, answer = client.submit(body, idempotency_key=f"qgjob-run:{run_id}")
            break
        except Unreachable:
            if attempt == SUBMIT_ATTEMPTS - 1:
                raise
        except ClientError as exc:
            if exc.status < 500 or attempt == SUBMIT_ATTEMPTS - 1:
                raise
        time.sleep(0.5 * 2**attempt)  # the same Idempotency-Key makes a retry safe
    jobs: dict[str, dict[str, Any]] = {}
    duplicates = []
    for item in answer["jobs"]:
        job_id = item.get("duplicate_of") or item["job_id"]
        if item.get("duplicate_of"):
            duplicates.append(job_id)
        jobs[job_id] = {**item, "job_id": job_id}
        jobs[job_id].pop("duplicate_of", None)
    runs = {run_id}
    if duplicates:
        runs = _runs_holding(client, run_id, jobs, duplicates)
    created = len(answer["jobs"]) - len(duplicates)
    shown = next(iter(runs)) if len(runs) == 1 else run_id
    return Started(
        shown, attached=created == 0, tracked=Tracked(jobs, runs), created=created, duplicates=len(duplicates)
    )


def _runs_holding(client: Client, run_id: str, jobs: dict[str, Any], duplicates: list[str]) -> set[str]:
    """The runs the tracked jobs belong to (duplicates may live in other runs)."""
    runs: set[str] = set()
    ours = _lookup(client, run_id)
    mine = {j["job_id"]: j for j in ours["jobs"]} if ours is not None else {}
    for job_id in mine.keys() & jobs.keys():
        jobs[job_id] = mine[job_id]
        runs.add(run_id)
    for job_id in duplicates:
        if job_id in mine:
            continue
        view = client.job(job_id)
        jobs[job_id] = view
        runs.add(view["run_id"])
    return runs


# --- the command ------------------------------------------------------------------


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


@dataclass(frozen=True)
class Options:
    junit: Path | None = None
    timeout: float | None = None
    fail_fast: int | None = None
    json: bool = False
    stream: bool = True


@dataclass
class Outcome:
    exit_code: int
    document: dict[str, Any]


def exit_code(jobs: Sequence[Mapping[str, Any]], *, timed_out: bool, lost: bool) -> int:
    if any(j["status"] in ("failed", "error", "cancelled") for j in jobs):
        return EXIT_FAILED
    if timed_out or lost or any(j["status"] not in TERMINAL for j in jobs):
        return EXIT_UNAVAILABLE
    return EXIT_OK


def execute(
    client: Client, suite: Suite, options: Options, *, env: Mapping[str, str], display: Any, began: float
) -> Outcome:
    """Start or attach, follow to the end, write the reports; the exit code and
    the ``--json`` document. Raises :class:`Unreachable` / :class:`ClientError`
    when the run cannot be started."""
    from qgjob import github, junit
    from qgjob.follow import Follower
    from qgjob.report import counts, counts_line

    deadline = None if options.timeout is None else began + options.timeout
    started = start(client, suite, base_run_id(suite, ci_identity(env)))
    tracked = started.tracked
    n = len(tracked.jobs)
    if started.attached and started.duplicates == 0:
        title = f"Attached to run {started.run_id}: the same suite is still running ({n} job(s)); not submitted again"
    elif started.attached:
        title = f"Attached to run {started.run_id}: all {n} spec(s) are already queued or running"
    else:
        title = f"Run {started.run_id}: {started.created} spec(s) submitted for {suite.target} ({suite.app_version_id})"
        if started.duplicates:
            title += f"; {started.duplicates} already running elsewhere, followed there"
    display.start(title, list(tracked.jobs.values()))
    follower = Follower(
        client,
        tracked,
        run_id=started.run_id,
        deadline=deadline,
        fail_fast=options.fail_fast,
        on_change=lambda job, before: display.change(job, before, list(tracked.jobs.values())),
        on_note=display.note,
        use_stream=options.stream,
    )
    try:
        followed = follower.follow()
    finally:
        display.stop()
    jobs = list(tracked.jobs.values())
    elapsed = time.monotonic() - began
    code = exit_code(jobs, timed_out=followed.timed_out, lost=followed.lost is not None)
    c = counts(jobs)
    summary = f"Run {started.run_id}: {counts_line(c)} in {elapsed:.1f} s"
    if followed.timed_out:
        summary += (
            f"\nTimed out after {options.timeout:g} s; the run goes on: run the same command again to attach, "
            f"or stop it with `qgjob cancel --run-id {started.run_id}`"
        )
    elif followed.lost:
        summary += f"\nGave up: the server has been unreachable for a while ({followed.lost})"
    if followed.fail_fast:
        summary += f"\n--fail-fast {options.fail_fast}: the rest of the run was cancelled"
    display.finish(jobs, summary)

    unfinished = "did not finish before --timeout" if followed.timed_out else "did not finish"
    if options.junit is not None:
        junit.write(options.junit, jobs, run_id=started.run_id, timed_out=followed.timed_out)
    if env.get("GITHUB_ACTIONS") == "true":
        out = sys.stderr if options.json else sys.stdout
        for line in github.annotations(jobs, unfinished_note=unfinished):
            out.write(line + "\n")
        out.flush()
    if env.get("GITHUB_STEP_SUMMARY"):
        headline = {EXIT_OK: "passed", EXIT_FAILED: "failed"}.get(code, "did not finish")
        markdown = github.summary(jobs, run_id=started.run_id, headline=headline, seconds=elapsed)
        github.append_summary(Path(env["GITHUB_STEP_SUMMARY"]), markdown)
    document = {
        "run_id": started.run_id,
        "attached": started.attached,
        "created": started.created,
        "duplicates": started.duplicates,
        "status": {EXIT_OK: "passed", EXIT_FAILED: "failed"}.get(code, "unfinished"),
        "exit_code": code,
        "timed_out": followed.timed_out,
        "unreachable": followed.lost,
        "fail_fast": followed.fail_fast,
        "passed": c["passed"],
        "failed": c["failed"] + c["error"] + c["cancelled"],
        "flaky": c["flaky"],
        "counts": c,
        "total": len(jobs),
        "seconds": round(elapsed, 3),
        "junit": str(options.junit) if options.junit is not None else None,
        "stream": {"used": followed.stream_used, "polls": followed.polls, "failures": followed.stream_failures},
        "jobs": jobs,
    }
    return Outcome(code, document)
