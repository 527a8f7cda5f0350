"""Submitting jobs: dedup, idempotency and one atomic append.

A dedup key (org, app_version_id, test, target) is claimed on its own subject
in the same atomic batch as the job, fenced by that subject's last sequence, so
two racing submissions of the same test cannot both win. The projection gives
the fast path; a conflict falls back to reading the key subjects directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from eventstore import Append, ConcurrencyConflict, EventStore
from eventstore.events import DedupClaimed, JobSubmitted, SubmissionRecorded
from eventstore.ids import new_id
from projections.schema import queries
from qgjob.api.errors import Unavailable

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


@dataclass(slots=True)
class KeyState:
    seq: int  # last sequence on the key's subject (0: never claimed)
    active_job: str | None


class Submitter:
    def __init__(self, store: EventStore, pool: asyncpg.Pool, *, atomic_batch_max: int = 20_000) -> None:
        self.store = store
        self.pool = pool
        self.atomic_batch_max = atomic_batch_max
        self._pending: list[tuple[Item, asyncio.Future[Item]]] = []
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
            idem_subject = self.store.subjects.idempotency(org_id, idempotency_key(org_id, idempotency))
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
            except Exception as exc:  # noqa: BLE001 - every waiter gets the failure
                failure = exc if not isinstance(exc, ConcurrencyConflict) else Unavailable(
                    "too many concurrent submissions of the same tests; retry"
                )
                for _, future in group:
                    if not future.done():
                        future.set_exception(failure)
                continue
            for item, future in group:
                if not future.done():
                    future.set_result(item)

    async def _commit(self, items: list[Item], record: Callable[[], Append | None]) -> None:
        """Mark duplicates and append the rest atomically, retrying conflicts
        with the key states read straight from the store."""
        keys = await self._keys_from_projection({i.key: i.job["org_id"] for i in items})
        for attempt in range(ATTEMPTS):
            self._mark_duplicates(items, keys)
            appends = self._appends([i for i in items if i.duplicate_of is None], keys)
            extra = record()
            if extra is not None:
                appends.append(extra)
            if not appends:
                break
            try:
                for start in range(0, len(appends), self.atomic_batch_max):
                    await self.store.append_many(appends[start : start + self.atomic_batch_max])
                break
            except ConcurrencyConflict:
                if attempt == ATTEMPTS - 1:
                    raise
                keys = await self._keys_from_store({i.key: i.job["org_id"] for i in items})
                for item in items:
                    item.duplicate_of = None
                    item.status = "queued"
        await self._fill_duplicate_status(items)

    def _mark_duplicates(self, items: list[Item], keys: dict[str, KeyState]) -> None:
        first: dict[str, Item] = {}
        for item in items:
            state = keys.get(item.key)
            if state is not None and state.active_job is not None:
                item.duplicate_of = state.active_job
            elif item.key in first:
                item.duplicate_of = first[item.key].job_id
            else:
                first[item.key] = item

    def _appends(self, fresh: list[Item], keys: dict[str, KeyState]) -> list[Append]:
        out = []
        for item in fresh:
            job = item.job
            state = keys.get(item.key)
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
            out.append(
                Append(
                    self.store.subjects.dedup(job["org_id"], item.key),
                    DedupClaimed(key=item.key, job_id=item.job_id, org_id=job["org_id"]),
                    state.seq if state is not None else 0,
                )
            )
        return out

    async def _keys_from_projection(self, keys: dict[str, str]) -> dict[str, KeyState]:
        """Key states as projected; active claims are confirmed in the store."""
        rows = await self.pool.fetch(Q["dedup_lookup"], list(keys))
        out: dict[str, KeyState] = {}
        to_confirm: dict[str, str] = {}
        for row in rows:
            if row["active"]:
                to_confirm[row["key"]] = keys[row["key"]]
            else:
                out[row["key"]] = KeyState(seq=row["seq"], active_job=None)
        if to_confirm:
            out.update(await self._keys_from_store(to_confirm))
        return out

    async def _keys_from_store(self, keys: dict[str, str]) -> dict[str, KeyState]:
        """Key states read straight from their subjects."""

        async def one(key: str, org_id: str) -> tuple[str, KeyState]:
            last = await self.store.last(self.store.subjects.dedup(org_id, key))
            if last is None:
                return key, KeyState(0, None)
            event = last.event
            active = event.job_id if isinstance(event, DedupClaimed) else None
            return key, KeyState(last.seq, active)

        sem = asyncio.Semaphore(256)

        async def bounded(key: str, org_id: str) -> tuple[str, KeyState]:
            async with sem:
                return await one(key, org_id)

        pairs = await asyncio.gather(*(bounded(k, o) for k, o in keys.items()))
        return dict(pairs)

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
        await self._fill_duplicate_status(items)
        return answer.run_id, items

    async def _fill_duplicate_status(self, items: list[Item]) -> None:
        dups = {i.duplicate_of for i in items if i.duplicate_of}
        if not dups:
            return
        rows = await self.pool.fetch("SELECT job_id, status FROM jobs WHERE job_id = ANY($1::text[])", list(dups))
        status = {r["job_id"]: r["status"] for r in rows}
        for item in items:
            if item.duplicate_of:
                item.status = status.get(item.duplicate_of, "queued")
