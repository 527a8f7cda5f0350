"""Waiting on jobs: poll with backoff, report each transition, decide the exit code."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qgjob.client import Client

TERMINAL = ("passed", "failed", "cancelled", "error")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


@dataclass
class WaitResult:
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    timed_out: bool = False
    stopped_early: bool = False

    @property
    def exit_code(self) -> int:
        if any(j["status"] in ("failed", "error", "cancelled") for j in self.jobs.values()):
            return EXIT_FAILED
        if self.timed_out:
            return EXIT_UNAVAILABLE
        return EXIT_OK


def exit_code_for(statuses: list[str]) -> int:
    if any(s in ("failed", "error", "cancelled") for s in statuses):
        return EXIT_FAILED
    return EXIT_OK


def wait(
    client: Client,
    *,
    job_ids: list[str] | None = None,
    run_id: str | None = None,
    timeout: float | None = None,
    fail_fast: bool = False,
    on_change: Callable[[dict[str, Any], str | None], None] | None = None,
    poll_min: float = 0.1,
    poll_max: float = 2.0,
) -> WaitResult:
    """Poll until every job is terminal (or the timeout passes)."""
    result = WaitResult()
    seen: dict[str, str] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = poll_min
    while True:
        if run_id is not None:
            jobs = client.run(run_id)["jobs"]
        else:
            jobs = [client.job(j) for j in job_ids or []]
        changed = False
        for job in jobs:
            result.jobs[job["job_id"]] = job
            before = seen.get(job["job_id"])
            if before != job["status"]:
                seen[job["job_id"]] = job["status"]
                changed = True
                if on_change is not None:
                    on_change(job, before)
        statuses = [j["status"] for j in result.jobs.values()]
        if statuses and all(s in TERMINAL for s in statuses):
            return result
        if fail_fast and any(s in ("failed", "error") for s in statuses):
            result.stopped_early = True
            return result
        if deadline is not None and time.monotonic() >= deadline:
            result.timed_out = True
            return result
        delay = poll_min if changed else min(delay * 1.5, poll_max)
        pause = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
        time.sleep(pause)
