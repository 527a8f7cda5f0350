"""Following a run until every job of it is finished.

Changes come from ``GET /v1/stream`` (server-sent events). When the stream
cannot be opened (404 from an older server, a proxy that buffers, a refused
connection) or breaks, the run is polled with ``GET /v1/runs/{run_id}`` with
backoff, and the stream is tried again with growing pauses; a reopened stream
sends ``Last-Event-ID`` and so resumes right after the last change it
delivered. Both sources carry a job's whole current state, so applying one
after the other never loses a change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from qgjob import sse
from qgjob.client import Client, ClientError, Unreachable

log = logging.getLogger(__name__)

TERMINAL = frozenset(("passed", "failed", "cancelled", "error"))
FAILED = frozenset(("failed", "error"))
STREAM_FILTER_MAX_IDS = 100  # more tracked jobs than this outside one run: poll instead of streaming
LOST_AFTER_S = 60.0  # the server unreachable this long while following: give up (exit 3)
STREAM_READ_S = 40.0  # the server sends a keepalive every 15 s; silence this long means a dead stream

Job = dict[str, Any]


@dataclass
class Tracked:
    """The jobs a ``qgjob run`` waits on, keyed by job id, in spec order."""

    jobs: dict[str, Job]
    runs: set[str]

    def apply(self, view: Mapping[str, Any]) -> str | None:
        """Take the current state of a tracked job (others are ignored).
        Returns its status before when the status changed, else ``None``."""
        job_id = view.get("job_id")
        if job_id not in self.jobs:
            return None
        before = self.jobs[job_id].get("status") or "unknown"
        self.jobs[job_id] = dict(view)
        return before if before != view.get("status") else None

    @property
    def done(self) -> bool:
        return all(j.get("status") in TERMINAL for j in self.jobs.values())

    @property
    def failed(self) -> int:
        return sum(1 for j in self.jobs.values() if j.get("status") in FAILED)

    def stream_params(self) -> list[tuple[str, str]] | None:
        """The ``/v1/stream`` filter covering every tracked job, or ``None`` to poll only."""
        if len(self.runs) == 1:
            return [("run_id", next(iter(self.runs)))]
        if len(self.jobs) <= STREAM_FILTER_MAX_IDS:
            return [("job_id", job_id) for job_id in self.jobs]
        return None


@dataclass
class Followed:
    """How following ended."""

    timed_out: bool = False
    lost: str | None = None  # why the server was given up on
    fail_fast: bool = False  # the rest of the run was cancelled after --fail-fast failures
    stream_used: bool = False
    polls: int = 0
    stream_failures: list[str] = field(default_factory=list)


class Follower:
    """Waits on :class:`Tracked` jobs through the stream, else by polling."""

    def __init__(
        self,
        client: Client,
        tracked: Tracked,
        *,
        run_id: str,
        deadline: float | None = None,
        fail_fast: int | None = None,
        on_change: Callable[[Job, str], None] | None = None,
        on_note: Callable[[str], None] | None = None,
        use_stream: bool = True,
        poll_min: float = 0.25,
        poll_max: float = 5.0,
        stream_retry_max: float = 30.0,
    ) -> None:
        self.client = client
        self.tracked = tracked
        self.run_id = run_id
        self.deadline = deadline
        self.fail_fast = fail_fast
        self.on_change = on_change or (lambda job, before: None)
        self.on_note = on_note or (lambda text: None)
        self.use_stream = use_stream
        self.poll_min = poll_min
        self.poll_max = poll_max
        self.stream_retry_max = stream_retry_max
        self.parser = sse.Parser()
        self.result = Followed()
        self._cancelled = False
        self._unreachable_since: float | None = None

    # --- the loop -------------------------------------------------------------

    def follow(self) -> Followed:
        params = self.tracked.stream_params() if self.use_stream else None
        stream_at = time.monotonic()
        stream_pause = 1.0
        delay = self.poll_min
        while True:
            if self._finished():
                return self.result
            if params is not None and time.monotonic() >= stream_at:
                if self._stream(params):
                    return self.result
                if self._finished():
                    return self.result
                stream_at = time.monotonic() + stream_pause
                stream_pause = min(stream_pause * 2, self.stream_retry_max)
            changed = self._poll()
            if self._finished():
                return self.result
            delay = self.poll_min if changed else min(delay * 1.5, self.poll_max)
            pause = delay
            if params is not None:
                pause = min(pause, max(0.0, stream_at - time.monotonic()))
            if self.deadline is not None:
                pause = min(pause, max(0.0, self.deadline - time.monotonic()))
            time.sleep(pause)

    def _finished(self) -> bool:
        if self.tracked.done or self.result.lost is not None:
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.result.timed_out = True
            return True
        return False

    def _stream(self, params: list[tuple[str, str]]) -> bool:
        """Follow the stream until the run is done (``True``) or the stream fails (``False``)."""
        read_s = STREAM_READ_S
        if self.deadline is not None:
            read_s = max(0.05, min(read_s, self.deadline - time.monotonic()))
        try:
            for event in sse.stream(
                self.client.http, "/v1/stream", params=params, parser=self.parser, read_timeout=read_s
            ):
                self._reached()
                if not self.result.stream_used:
                    self.result.stream_used = True
                if event.event == "job":
                    self._take([event.json()])
                if self._finished():
                    return True
        except httpx.ReadTimeout:
            if self._finished():
                return True
            self._stream_failed(f"nothing on the event stream for {read_s:.0f} s")
        except sse.StreamUnavailable as exc:
            if exc.status is None:
                self._unreachable(str(exc))
            self._stream_failed(str(exc))
        return False

    def _stream_failed(self, why: str) -> None:
        self.result.stream_failures.append(why)
        self.on_note(f"stream unavailable ({why}); polling")

    def _poll(self) -> bool:
        """One round of ``GET /v1/runs/{id}`` for each run holding tracked jobs."""
        changed = False
        self.result.polls += 1
        for run_id in sorted(self.tracked.runs):
            try:
                answer = self.client.run(run_id)
            except Unreachable as exc:
                self._unreachable(str(exc))
                return changed
            except ClientError as exc:
                if exc.status == 404:
                    continue
                if exc.status >= 500:
                    self._unreachable(f"{exc} (HTTP {exc.status})")
                    return changed
                raise
            self._reached()
            changed = self._take(answer["jobs"]) or changed
        return changed

    def _take(self, views: Iterable[Mapping[str, Any]]) -> bool:
        changed = False
        for view in views:
            before = self.tracked.apply(view)
            if before is not None:
                changed = True
                self.on_change(self.tracked.jobs[view["job_id"]], before)
        if changed:
            self._check_fail_fast()
        return changed

    # --- fail fast and reachability -------------------------------------------

    def _check_fail_fast(self) -> None:
        if self.fail_fast is None or self._cancelled or self.tracked.failed < self.fail_fast:
            return
        self._cancelled = True
        self.result.fail_fast = True
        self.on_note(f"{self.tracked.failed} job(s) failed (--fail-fast {self.fail_fast}): cancelling the rest")
        cancel_rest(self.client, self.tracked, self.run_id)

    def _reached(self) -> None:
        self._unreachable_since = None

    def _unreachable(self, why: str) -> None:
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
        elif now - self._unreachable_since >= LOST_AFTER_S:
            self.result.lost = why


def cancel_rest(client: Client, tracked: Tracked, run_id: str) -> int:
    """Cancel every unfinished tracked job: the whole run when it holds them all,
    else job by job. Returns how many the server cancelled."""
    cancelled = 0
    try:
        if tracked.runs == {run_id}:
            return int(client.cancel_run(run_id).get("cancelled", 0))
        for job_id, job in tracked.jobs.items():
            if job.get("status") not in TERMINAL:
                try:
                    client.cancel(job_id)
                    cancelled += 1
                except ClientError as exc:
                    log.warning("cannot cancel job %s: %s", job_id, exc)
    except (ClientError, Unreachable) as exc:
        log.warning("cannot cancel run %s: %s", run_id, exc)
    return cancelled
