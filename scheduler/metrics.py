"""What the scheduler sees happen to jobs: dispatch latency and queue wait.

Observed from live events only (after the scheduler has caught up with the
stream), so a restart does not count history again.
"""

from __future__ import annotations

from prometheus_client import Histogram

from eventstore.events import Event, JobAssigned, JobRequeued, JobStarted, is_terminal
from scheduler.policy import State

WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)

DISPATCH_LATENCY = Histogram(
    "qgjob_dispatch_latency_seconds",
    "Submission to the first JobStarted of a job (stream times)",
    ["target"],
    buckets=WAIT_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "qgjob_queue_wait_seconds",
    "Time a job waited ready in the queue before an assignment (per assignment; retries wait from their ready time)",
    ["target"],
    buckets=WAIT_BUCKETS,
)


class Observer:
    """Feeds the histograms from events; call :meth:`observe` before applying each one."""

    def __init__(self) -> None:
        self._requeued_at: dict[str, float] = {}  # a requeued job waits again from its requeue

    def observe(self, state: State, event: Event) -> None:
        if isinstance(event, JobRequeued):
            self._requeued_at[event.job_id] = event.at.timestamp()
        elif is_terminal(event):
            self._requeued_at.pop(getattr(event, "job_id", ""), None)  # ended without another assignment
        elif isinstance(event, JobAssigned):
            job = state.jobs.get(event.job_id)
            if job is not None:
                ready = max(job.submitted_at, job.ready_at, self._requeued_at.pop(event.job_id, 0.0))
                QUEUE_WAIT.labels(target=job.target).observe(max(0.0, event.at.timestamp() - ready))
        elif isinstance(event, JobStarted) and event.attempt == 1:
            job = state.jobs.get(event.job_id)
            if job is not None:
                DISPATCH_LATENCY.labels(target=job.target).observe(max(0.0, event.at.timestamp() - job.submitted_at))
