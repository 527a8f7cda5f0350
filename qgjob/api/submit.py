"""Submitting jobs: dedup, idempotency and one atomic append.

A job's dedup key is (org, app_version_id, test, target); a key is taken while
a job holding it is not finished. The projection answers which keys are taken.
Each submission appends its new jobs and then, last in the same atomic batch,
one KeysClaimed per (org, app version, target), fenced by that claim subject's
last sequence as the projection knew it. So if another submission of the group
landed after the projection was read, the append is refused; the submitter
waits for the projection to catch up and decides again. Two racing
submissions of the same test cannot both win.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from eventstore import Append, ConcurrencyConflict, EventStore
from eventstore.events import JobSubmitted, KeysClaimed, SubmissionRecorded, is_terminal
from eventstore.ids import new_id
from projections.projector import checkpoint
from projections.schema import queries
from qgjob.api.errors import BodyTooLarge, Unavailable

log = logging.getLogger(__name__)
Q = queries()
ATTEMPTS = 4
GROUP_COMMIT_MAX = 500


def dedup_key(org_id: str, app_version_id: str, test: str, target: str) -> str:
    raw = "\0".join((org_id, app_version_id, test, target)).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def idempotency_key(org_id: str, key: str) -> str:
    return hashlib.sha256(f"{org_id}\0{key}".encode()).hexdigest()[:32]


@dataclass(slots=True)
class Item:
    """One job of a request and what became of it."""

    job: dict[str, Any]
    key: str
    job_id: str
    duplicate_of: str | None = None
    status: str = "queued"


Group = tuple[str, str, str]  # (org_id, app_version_id, target)


@dataclass(slots=True)
class Taken:
    """A dedup key held by an unfinished job."""

    job_id: str
    status: str


@dataclass(slots=True)
class _Recent:
    """Claims this process appended that the projection may not show yet."""

    seq: int = 0
    keys: dict[str, tuple[str, int]] = field(default_factory=dict)


class Submitter:
    def __init__(self, store: EventStore, pool: asyncpg.Pool, *, atomic_batch_max: int = 20_000) -> None:
        self.store = store
        self.pool = pool
        self.atomic_batch_max = atomic_batch_max
        self._pending: list[tuple[Item, asyncio.Future[Item]]] = []
        self._recent: dict[Group, _Recent] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, jobs: list[dict[str, Any]], *, idempotency: str | None = None) -> tuple[str, list[Item]]:
        """Append the jobs that are not duplicates; returns ``(run_id, items)``.

        Single-job requests arriving together share one atomic append (group
        commit): JetStream makes each atomic batch durable on its own, so
        sharing the commit is what lets many concurrent clients in at once.
        """
        run_id = jobs[0].get("run_id") or new_id("run")
        for job in jobs:
            job["run_id"] = job.get("run_id") or run_id
        org_id = jobs[0]["org_id"]
        if idempotency is None and len(jobs) == 1:
            return run_id, [await self._enqueue(self._item(jobs[0]))]
        idem_subject = None
        if idempotency is not None:
            idem_subject = self._idempotency_subject(org_id, idempotency)
            earlier = await self._earlier_answer(idem_subject, jobs)
            if earlier is not None:
                return earlier
        items = [self._item(job) for job in jobs]

        def record() -> Append | None:
            if idem_subject is None:
                return None
            return Append(
                idem_subject,
                SubmissionRecorded(
                    key=idempotency or "",
                    org_id=org_id,
                    run_id=run_id,
                    job_ids=[i.duplicate_of or i.job_id for i in items],
                    duplicate=[i.duplicate_of is not None for i in items],
                ),
                0,
            )

        try:
            await self._commit(items, record)
        except ConcurrencyConflict:
            if idem_subject is not None:
                earlier = await self._earlier_answer(idem_subject, jobs)
                if earlier is not None:
                    return earlier
            raise Unavailable("too many concurrent submissions of the same tests; retry") from None
        return run_id, items

    async def new_jobs(self, jobs: list[dict[str, Any]], *, idempotency: str | None = None) -> int:
        """How many jobs submitting ``jobs`` would add now, without adding any:
        none for a retried request that already has an answer, else those
        that are not duplicates of unfinished jobs or of each other."""
        if idempotency is not None:
            org_id = jobs[0]["org_id"]
            last = await self.store.last(self._idempotency_subject(org_id, idempotency))
            if last is not None and isinstance(last.event, SubmissionRecorded):
                return 0
        items = [self._item(job) for job in jobs]
        taken, _ = await self._dedup_state(items)
        self._mark_duplicates(items, taken)
        return sum(1 for item in items if item.duplicate_of is None)

    def _idempotency_subject(self, org_id: str, key: str) -> str:
        return self.store.subjects.idempotency(org_id, idempotency_key(org_id, key))

    @staticmethod
    def _item(job: dict[str, Any]) -> Item:
        key = dedup_key(job["org_id"], job["app_version_id"], job["test"], job["target"])
        return Item(job=job, key=key, job_id=new_id("job"))

    async def _enqueue(self, item: Item) -> Item:
        future: asyncio.Future[Item] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            group = self._pending[:GROUP_COMMIT_MAX]
            del self._pending[:GROUP_COMMIT_MAX]
            try:
                await self._commit([item for item, _ in group], lambda: None)
            except Exception as exc:
                failure = (
                    exc
                    if not isinstance(exc, ConcurrencyConflict)
                    else Unavailable("too many concurrent submissions of the same tests; retry")
                )
                for _, future in group:
                    if not future.done():
                        future.set_exception(failure)
                continue
            for item, future in group:
                if not future.done():
                    future.set_result(item)

    async def _commit(self, items: list[Item], record: Callable[[], Append | None]) -> None:
        """Mark duplicates and append the rest atomically; on a fence conflict
        wait for the projection and decide again."""
        for attempt in range(ATTEMPTS):
            taken, fences = await self._dedup_state(items)
            for item in items:
                item.duplicate_of = None
                item.status = "queued"
            self._mark_duplicates(items, taken)
            fresh = [i for i in items if i.duplicate_of is None]
            appends = self._appends(fresh, fences)
            extra = record()
            if extra is not None:
                appends.insert(len(fresh), extra)  # claims stay last
            if not appends:
                break
            if len(appends) > self.atomic_batch_max:
                raise BodyTooLarge(
                    f"jobs: {len(appends)} events in one request; this event store takes at most "
                    f"{self.atomic_batch_max} in one atomic batch: split the request"
                )
            try:
                last = await self.store.append_many(appends)
            except ConcurrencyConflict:
                self._recent.clear()
                if attempt == ATTEMPTS - 1:
                    raise
                await self._projection_caught_up()
                continue
            self._remember(appends, last)
            break

    def _remember(self, appends: list[Append], last: int) -> None:
        """Keep the claims just appended until the projection has them.

        The events of an atomic batch get consecutive sequences and the claims
        come last, so the n-th claim from the end has ``last - n``. While this
        process is the only one appending claims of a group, the next
        submission fences on that sequence and sees these keys as taken
        without waiting for the projector; if another process appended
        meanwhile, its fence fails and the projection is awaited instead.
        """
        claims = [a for a in appends if isinstance(a.event, KeysClaimed)]
        for n, append in enumerate(reversed(claims)):
            event = append.event
            if not isinstance(event, KeysClaimed):
                continue
            group = (event.org_id, event.app_version_id, event.target)
            recent = self._recent.setdefault(group, _Recent())
            recent.seq = last - n
            for key, job_id in zip(event.keys, event.job_ids, strict=True):
                recent.keys[key] = (job_id, last - n)

    def _mark_duplicates(self, items: list[Item], taken: dict[str, Taken]) -> None:
        first: dict[str, Item] = {}
        for item in items:
            holder = taken.get(item.key)
            if holder is not None:
                item.duplicate_of = holder.job_id
                item.status = holder.status
            elif item.key in first:
                item.duplicate_of = first[item.key].job_id
            else:
                first[item.key] = item

    def _appends(self, fresh: list[Item], fences: dict[Group, int]) -> list[Append]:
        """The new jobs, then one fenced KeysClaimed per group, last."""
        out = []
        claims: dict[Group, list[Item]] = {}
        for item in fresh:
            job = item.job
            out.append(
                Append(
                    self.store.subjects.job(job["app_version_id"], job["target"], job["org_id"], item.job_id),
                    JobSubmitted(
                        job_id=item.job_id,
                        org_id=job["org_id"],
                        app_version_id=job["app_version_id"],
                        test=job["test"],
                        target=job["target"],
                        priority=job["priority"],
                        max_retries=job["max_retries"],
                        run_id=job["run_id"],
                        labels=job["labels"] or {},
                        timeout_s=job["timeout_s"],
                        dedup_key=item.key,
                    ),
                    0,
                )
            )
            claims.setdefault((job["org_id"], job["app_version_id"], job["target"]), []).append(item)
        for group, members in claims.items():
            out.append(
                Append(
                    self.store.subjects.claims(*group),
                    KeysClaimed(
                        org_id=group[0],
                        app_version_id=group[1],
                        target=group[2],
                        keys=[i.key for i in members],
                        job_ids=[i.job_id for i in members],
                    ),
                    fences.get(group, 0),
                )
            )
        return out

    async def _dedup_state(self, items: list[Item]) -> tuple[dict[str, Taken], dict[Group, int]]:
        """Taken keys and claim fences, from one snapshot of the projection.

        A key the projection shows taken is checked against the job's own
        subject, so a job that just finished does not block its re-run.
        """
        groups = {(i.job["org_id"], i.job["app_version_id"], i.job["target"]) for i in items}
        rows = await self.pool.fetch(
            Q["dedup_state"],
            [g[0] for g in groups],
            [g[1] for g in groups],
            [g[2] for g in groups],
            list({i.key for i in items}),
        )
        fence_rows = [r for r in rows if r["kind"] == "fence"]
        taken_rows = [r for r in rows if r["kind"] == "taken"]
        fences = {
            (r["org_id"], r["app_version_id"], r["target"]): int(r["seq"])
            for r in fence_rows
            if (r["org_id"], r["app_version_id"], r["target"]) in groups
        }
        candidates = [
            (row["dedup_key"], row["job_id"], row["status"], (row["org_id"], row["app_version_id"], row["target"]))
            for row in taken_rows
        ]
        wanted = {i.key for i in items}
        for group in groups:
            recent = self._recent.get(group)
            if recent is None:
                continue
            projected = fences.get(group, 0)
            if recent.seq <= projected:
                del self._recent[group]  # the projection has caught up with this process
                continue
            fences[group] = recent.seq
            for key, (job_id, seq) in list(recent.keys.items()):
                if seq <= projected:
                    del recent.keys[key]
                elif key in wanted:
                    candidates.append((key, job_id, "queued", group))
        taken: dict[str, Taken] = {}
        for key, job_id, status, (org_id, app_version_id, target) in candidates:
            last = await self.store.last(self.store.subjects.job(app_version_id, target, org_id, job_id))
            if last is not None and is_terminal(last.event):
                continue
            taken[key] = Taken(job_id=job_id, status=status)
        return taken, fences

    async def _projection_caught_up(self, timeout: float = 5.0) -> None:
        target = await self.store.last_seq()
        deadline = asyncio.get_running_loop().time() + timeout
        while await checkpoint(self.pool) < target:
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable("the projections are lagging; retry the submission")
            await asyncio.sleep(0.005)

    async def _earlier_answer(self, subject: str, jobs: list[dict[str, Any]]) -> tuple[str, list[Item]] | None:
        last = await self.store.last(subject)
        if last is None or not isinstance(last.event, SubmissionRecorded):
            return None
        answer = last.event
        items = []
        for n, job in enumerate(jobs):
            if n >= len(answer.job_ids):
                break
            job["run_id"] = job.get("run_id") or answer.run_id
            item = Item(job=job, key="", job_id=answer.job_ids[n])
            if answer.duplicate[n]:
                item.duplicate_of = answer.job_ids[n]
            items.append(item)
        await self._fill_status(items)
        return answer.run_id, items

    async def _fill_status(self, items: list[Item]) -> None:
        ids = {i.duplicate_of or i.job_id for i in items}
        rows = await self.pool.fetch("SELECT job_id, status FROM jobs WHERE job_id = ANY($1::text[])", list(ids))
        status = {r["job_id"]: r["status"] for r in rows}
        for item in items:
            item.status = status.get(item.duplicate_of or item.job_id, item.status)
