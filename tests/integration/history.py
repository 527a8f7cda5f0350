"""A realistic event history appended straight to the store, for projection tests."""

from __future__ import annotations

from eventstore import Append, EventStore
from eventstore.events import (
    AgentRegistered,
    AppInstalled,
    BatchAssigned,
    BatchFinished,
    BatchJob,
    JobAssigned,
    JobCancelled,
    JobFailed,
    JobPassed,
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
    KeysClaimed,
)


async def write_history(store: EventStore, jobs: int, *, batch_size: int = 50) -> dict[str, int]:
    """Jobs across groups, each batch assigned, installed, run; every 7th job
    fails once then passes, every 11th fails for good, every 13th is cancelled
    while queued. Returns the expected count per final status."""
    s = store.subjects
    expected = {"passed": 0, "failed": 0, "cancelled": 0}
    agents = {"emulator": "emu-1", "device": "dev-1"}
    for target, agent in agents.items():
        await store.append(s.agent(target, agent), AgentRegistered(agent_id=agent, target=target))
    seqs: dict[str, int] = {}
    for start in range(0, jobs, batch_size):
        ids = [f"job_{n:06d}" for n in range(start, min(start + batch_size, jobs))]
        group = start // batch_size
        app, target = f"v{group % 3}.0.{group}", ("emulator", "device")[group % 2]
        appends = []
        for job_id in ids:
            key = f"key-{job_id}"
            appends.append(
                Append(
                    s.job(app, target, "acme", job_id),
                    JobSubmitted(
                        job_id=job_id,
                        org_id="acme",
                        app_version_id=app,
                        test=f"tests/{job_id}.spec.js",
                        target=target,
                        run_id=f"run-{group}",
                        max_retries=1,
                        dedup_key=key,
                    ),
                    0,
                )
            )
        claim = KeysClaimed(
            org_id="acme", app_version_id=app, target=target, keys=[f"key-{j}" for j in ids], job_ids=ids
        )
        appends.append(Append(s.claims("acme", app, target), claim))
        last = await store.append_many(appends)
        for n, job_id in enumerate(ids):
            seqs[job_id] = last - len(appends) + 1 + n
        cancelled = [j for j in ids if int(j[4:]) % 13 == 0]
        for job_id in cancelled:
            seqs[job_id] = await store.append(
                s.job(app, target, "acme", job_id),
                JobCancelled(job_id=job_id, dedup_key=f"key-{job_id}"),
                expected=seqs[job_id],
            )
            expected["cancelled"] += 1
        runnable = [j for j in ids if j not in cancelled]
        batch_id = f"bat-{group}"
        agent = agents[target]
        bjobs = [
            BatchJob(job_id=j, org_id="acme", test=f"tests/{j}.spec.js", attempt=1, max_retries=1, dedup_key=f"key-{j}")
            for j in runnable
        ]
        assign = [
            Append(
                s.batch(app, target, batch_id),
                BatchAssigned(
                    batch_id=batch_id, agent_id=agent, app_version_id=app, target=target, jobs=bjobs, install=True
                ),
                0,
            )
        ]
        assign += [
            Append(s.job(app, target, "acme", j), JobAssigned(job_id=j, batch_id=batch_id, agent_id=agent), seqs[j])
            for j in runnable
        ]
        last = await store.append_many(assign)
        for n, j in enumerate(runnable):
            seqs[j] = last - len(runnable) + 1 + n
        await store.append(
            s.batch(app, target, batch_id),
            AppInstalled(batch_id=batch_id, agent_id=agent, app_version_id=app, target=target, duration_ms=5),
        )
        for j in runnable:
            subject = s.job(app, target, "acme", j)
            n = int(j[4:])
            seq = await store.append(
                subject, JobStarted(job_id=j, batch_id=batch_id, agent_id=agent, attempt=1), expected=seqs[j]
            )
            if n % 11 == 0 or n % 7 == 0:
                final = n % 11 == 0
                seq = await store.append(
                    subject,
                    JobFailed(
                        job_id=j,
                        batch_id=batch_id,
                        agent_id=agent,
                        attempt=1,
                        duration_ms=10,
                        error="boom",
                        final=False,
                    ),
                    expected=seq,
                )
                seq = await store.append(
                    subject, JobRetryScheduled(job_id=j, attempt=2, not_before=store_now()), expected=seq
                )
                seq = await store.append(
                    subject, JobStarted(job_id=j, batch_id=batch_id, agent_id=agent, attempt=2), expected=seq
                )
                result = (
                    JobFailed(
                        job_id=j,
                        batch_id=batch_id,
                        agent_id=agent,
                        attempt=2,
                        duration_ms=10,
                        error="boom again",
                        final=True,
                    )
                    if final
                    else JobPassed(job_id=j, batch_id=batch_id, agent_id=agent, attempt=2, duration_ms=12)
                )
                expected["failed" if final else "passed"] += 1
            else:
                result = JobPassed(job_id=j, batch_id=batch_id, agent_id=agent, attempt=1, duration_ms=12)
                expected["passed"] += 1
            await store.append(subject, result, expected=seq)
        await store.append(s.batch(app, target, batch_id), BatchFinished(batch_id=batch_id, agent_id=agent))
    return expected


def store_now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)
