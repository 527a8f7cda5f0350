"""The audit trail: a job's or a run's events, read straight from JetStream.

A job's history is one subject. A run's is the subjects of its jobs (the
projection knows which), read through consumers with several filter subjects
at once and merged by stream sequence, plus the events of the batches that ran
them. A batch can hold jobs of other runs and other orgs, so a batch
assignment shown in a run's history lists only that run's jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from eventstore import EventStore, Recorded
from eventstore.events import BatchAssigned

SUBJECTS_PER_READ = 256
READS_AT_ONCE = 4
# Every view has these keys (``None`` where the event does not say), so a line
# printer or a JSON consumer never guesses.
COMMON = ("job_id", "attempt", "agent_id", "batch_id")


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat().replace("+00:00", "Z")


def event_view(store: EventStore, rec: Recorded, *, only_jobs: set[str] | None = None) -> dict[str, Any]:
    """One event as the API shows it: its payload, where and when it was stored,
    and the ids its subject carries.

    ``only_jobs`` trims a batch assignment's job list to those jobs.
    """
    event = rec.event
    if only_jobs is not None and isinstance(event, BatchAssigned):
        event = msgspec.structs.replace(event, jobs=[j for j in event.jobs if j.job_id in only_jobs])
    body: dict[str, Any] = msgspec.to_builtins(event)
    view: dict[str, Any] = {"seq": rec.seq, "subject": rec.subject, "stored": _iso(rec.time)}
    view.update(body)
    for key, value in store.subjects.ids(rec.subject).items():
        view.setdefault(key, value)
    for key in COMMON:
        view.setdefault(key, None)
    return view


async def _read(store: EventStore, subjects: Sequence[str]) -> list[Recorded]:
    """Every event on ``subjects``, oldest first, a few consumers at a time."""
    unique = list(dict.fromkeys(subjects))
    chunks = [unique[i : i + SUBJECTS_PER_READ] for i in range(0, len(unique), SUBJECTS_PER_READ)]
    gate = asyncio.Semaphore(READS_AT_ONCE)

    async def one(chunk: list[str]) -> list[Recorded]:
        async with gate:
            return [rec async for rec in store.read(chunk)]

    found = await asyncio.gather(*(one(c) for c in chunks))
    merged = {rec.seq: rec for part in found for rec in part}
    return [merged[seq] for seq in sorted(merged)]


async def job_history(store: EventStore, row: asyncpg.Record) -> list[dict[str, Any]]:
    subject = store.subjects.job(row["app_version_id"], row["target"], row["org_id"], row["job_id"])
    return [event_view(store, rec) for rec in await store.history(subject)]


async def run_history(store: EventStore, rows: Sequence[asyncpg.Record]) -> list[dict[str, Any]]:
    """The events of a run's jobs and of the batches that ran them, in stream order."""
    s = store.subjects
    job_ids = {r["job_id"] for r in rows}
    jobs = await _read(store, [s.job(r["app_version_id"], r["target"], r["org_id"], r["job_id"]) for r in rows])
    group = {r["job_id"]: (r["app_version_id"], r["target"]) for r in rows}
    batch_subjects = []
    for rec in jobs:
        batch_id = getattr(rec.event, "batch_id", None)
        job_id = getattr(rec.event, "job_id", None)
        if batch_id is not None and job_id in group:
            batch_subjects.append(s.batch(*group[job_id], batch_id))
    batches = await _read(store, batch_subjects) if batch_subjects else []
    merged = sorted([*jobs, *batches], key=lambda rec: rec.seq)
    return [event_view(store, rec, only_jobs=job_ids) for rec in merged]
