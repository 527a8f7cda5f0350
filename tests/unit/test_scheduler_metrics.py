"""The scheduler's observer: what it remembers of a job ends with the job."""

from __future__ import annotations

from eventstore.events import JobAssigned, JobCancelled, JobErrored, JobRequeued, JobSubmitted
from scheduler import policy
from scheduler.metrics import Observer


def test_a_requeued_job_is_forgotten_once_it_ends_or_is_assigned() -> None:
    state, observer = policy.State(), Observer()
    for n, job_id in enumerate(("job_a", "job_b", "job_c"), start=1):
        submitted = JobSubmitted(
            job_id=job_id, org_id="acme", app_version_id="v1", test="t.spec.js", target="emulator", run_id="r"
        )
        observer.observe(state, submitted)
        policy.apply(state, n, submitted)
        observer.observe(state, JobRequeued(job_id=job_id, reason="agent lost"))
    observer.observe(state, JobCancelled(job_id="job_a"))
    observer.observe(state, JobErrored(job_id="job_b", error="gave up"))
    observer.observe(state, JobAssigned(job_id="job_c", batch_id="bat_1", agent_id="agt_1"))
    assert observer._requeued_at == {}
