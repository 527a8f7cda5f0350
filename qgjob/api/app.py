"""The HTTP API: routes, auth and the lifespan that opens NATS and Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import nats.errors
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from eventstore import ConcurrencyConflict, EventStore, QgjobError
from eventstore.events import JobAssigned, JobCancelled, JobFailed, JobPassed, JobStarted, is_terminal
from eventstore.logs import LogStore
from eventstore.tasks import cancel_and_wait
from projections import metrics as projection_metrics
from projections import queries as read
from projections.projector import checkpoint
from projections.schema import close_pool, migrate, queries
from qgjob.api import auth, history, stream, tail
from qgjob.api.errors import (
    ApiError,
    BodyTooLarge,
    Conflict,
    Forbidden,
    NotFound,
    QuotaExceeded,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from qgjob.api.openapi import document
from qgjob.api.submit import Item, Submitter
from qgjob.api.validation import parse_jobs
from qgjob.readiness import open_pool, open_store
from qgjob.settings import TARGETS, Settings

log = logging.getLogger(__name__)
Q = queries()
QUOTA_REFRESH_S = 1.0  # how old an org's count of unfinished jobs may be before it is counted again
Handler = Callable[[Request], Awaitable[Response]]


def _log_connect_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the API could not connect and answers 503: %s", task.exception())


class _Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


class Api:
    """The API's state: its connections and the handlers that use them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: EventStore | None = None
        self.pool: asyncpg.Pool | None = None
        self.submitter: Submitter | None = None
        self.submit_pool: asyncpg.Pool | None = None
        self.changes: stream.Changes | None = None
        self._principals: dict[str, auth.Principal] = {}
        self._queued: dict[str, tuple[float, int]] = {}  # org: (when counted, unfinished jobs)
        self._recounting: dict[str, asyncio.Task[tuple[float, int]]] = {}

    # --- lifecycle ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Connect, then serve. With NATS and Postgres up, the API serves once
        it is connected; started before them, it serves at once, answering
        503 (``/readyz`` says what it waits for) until they are up."""
        stop = asyncio.Event()
        waiting = asyncio.Event()
        connecting = asyncio.create_task(self._connect(stop, waiting.set), name="api-connect")
        waited = asyncio.create_task(waiting.wait())
        try:
            await asyncio.wait({connecting, waited}, return_when=asyncio.FIRST_COMPLETED)
            waited.cancel()
            if connecting.done():
                connecting.result()  # a refusal no wait would cure fails the start
            else:
                log.warning("the API answers 503 until NATS and Postgres are ready")
                connecting.add_done_callback(_log_connect_failure)
            yield
        finally:
            waited.cancel()
            stop.set()
            await cancel_and_wait(connecting, *self._recounting.values())
            if self.changes is not None:
                await self.changes.close()
            for pool in (self.submit_pool, self.pool):
                if pool is not None:
                    await close_pool(pool)
            if self.store is not None:
                await self.store.close()

    async def _connect(self, stop: asyncio.Event, waiting: Callable[[], object]) -> None:
        """Open the API's connections, waiting for each server that is not up
        yet. Each is published once usable, so a request sees either it or 503."""
        s = self.settings
        self.store = await open_store(s, "qgjob-api", stop, waiting)
        if self.store is None:
            return
        pool = await open_pool(s, stop, waiting, max_size=20)
        if pool is None:
            return
        try:
            async with pool.acquire() as conn:
                await migrate(conn, s.schema)
        except BaseException:
            await close_pool(pool)
            raise
        self.pool = pool
        # The dedup probes on every submission: planned once (see connect_pool).
        self.submit_pool = await open_pool(s, stop, waiting, max_size=4, name="qgjob-submit", generic_plans=True)
        if self.submit_pool is None:
            return
        changes = stream.Changes(s.database_url, s.schema)
        await changes.start()
        self.changes = changes
        self.submitter = Submitter(self.store, self.submit_pool, atomic_batch_max=s.atomic_batch_max)
        log.info("the API is connected to NATS and Postgres")

    @property
    def db(self) -> asyncpg.Pool:
        if self.pool is None:
            raise Unavailable("the API is not connected to Postgres yet")
        return self.pool

    @property
    def es(self) -> EventStore:
        if self.store is None:
            raise Unavailable("the API is not connected to NATS yet")
        return self.store

    async def caught_up(self, timeout: float = 3.0) -> bool:
        """Wait until the projections hold every event appended before now."""
        target = await self.es.last_seq()
        deadline = time.monotonic() + timeout
        while await checkpoint(self.db) < target:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    # --- auth -----------------------------------------------------------------

    async def principal(self, request: Request) -> auth.Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized()
        token = token.strip()
        found = self._principals.get(token)
        if found is None:
            found = await auth.lookup(self.db, token)
            if found is None and await self.caught_up(timeout=1.0):
                found = await auth.lookup(self.db, token)
            if found is None:
                raise Unauthorized("the bearer token is not valid")
            self._principals[token] = found
        return found

    @staticmethod
    def admin_only(who: auth.Principal) -> None:
        if not who.admin:
            raise Forbidden("this needs an admin token")

    # --- jobs -----------------------------------------------------------------

    async def _job_row(self, job_id: str, who: auth.Principal) -> asyncpg.Record:
        row = await read.get_job(self.db, job_id, who.scope())
        if row is None and await self.caught_up():
            row = await read.get_job(self.db, job_id, who.scope())
        if row is None:
            raise NotFound(f"no job {job_id}")
        return row

    async def submit(self, request: Request) -> Response:
        who = await self.principal(request)
        body = await self._body(request)
        jobs, bulk = parse_jobs(body, max_jobs=self.settings.max_jobs_per_request)
        if not who.admin:
            for n, job in enumerate(jobs):
                if job["org_id"] != who.org_id:
                    where = f"jobs[{n}].org_id" if bulk else "org_id"
                    raise Forbidden(
                        f"{where}: this token belongs to org {who.org_id!r} and cannot submit for {job['org_id']!r}"
                    )
        orgs = {job["org_id"] for job in jobs}
        if len(orgs) > 1:
            raise ValidationFailed(
                "org_id: all jobs of one request must belong to one org",
                detail=[{"field": "org_id", "message": "all jobs of one request must belong to one org"}],
            )
        if self.submitter is None:
            raise Unavailable()
        idempotency = request.headers.get("idempotency-key")
        try:
            await self._check_quota(next(iter(orgs)), len(jobs))
        except QuotaExceeded:
            # Duplicates and a retried request add nothing: they attach rather than fail.
            await self._check_quota(next(iter(orgs)), await self.submitter.new_jobs(jobs, idempotency=idempotency))
        run_id, items = await self.submitter.submit(jobs, idempotency=idempotency)
        self._count_queued(next(iter(orgs)), sum(1 for i in items if i.duplicate_of is None))
        _log_submitted(run_id, items)
        if not bulk:
            item = items[0]
            if item.duplicate_of is not None:
                return _Json(
                    {
                        "error": "duplicate",
                        "message": f"Duplicate of {item.duplicate_of} | Status: {item.status}",
                        "detail": [],
                        "job_id": item.duplicate_of,
                        "duplicate_of": item.duplicate_of,
                        "status": item.status,
                    },
                    status_code=409,
                )
            return _Json(_item_view(item), status_code=201)
        views = [_item_view(i) for i in items]
        created = sum(1 for i in items if i.duplicate_of is None)
        return _Json(
            {"run_id": run_id, "created": created, "duplicates": len(items) - created, "jobs": views},
            status_code=201,
        )

    async def _body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise BodyTooLarge(f"the request body is {int(length)} bytes; allowed: at most {limit} bytes")
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the request body is over {limit} bytes; allowed: at most {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _check_quota(self, org_id: str, adding: int) -> None:
        """Refuse a submission that would take the org past its quota of unfinished jobs.

        The count comes from the projections and this process's own accepted
        jobs since. A count older than ``QUOTA_REFRESH_S`` is refreshed in the
        background while this request goes on with it, so the submit path
        does not wait on a count (a refresh may miss jobs accepted in the
        last milliseconds: the quota can be passed by that many). A
        submission the count would refuse waits for the projections to
        catch up and counts again, so none is refused on a stale count.
        """
        if adding == 0:
            return
        quota = self.settings.org_queue_quota
        cached = self._queued.get(org_id)
        if cached is None:
            cached = await self._recount(org_id)
        if cached[1] + adding > quota:
            await self.caught_up()  # the projections hold every job accepted so far
            cached = await self._recount(org_id)
        elif time.monotonic() - cached[0] > QUOTA_REFRESH_S and org_id not in self._recounting:
            task = asyncio.create_task(self._recount(org_id))
            self._recounting[org_id] = task
            task.add_done_callback(lambda t: self._recount_done(org_id, t))
        if cached[1] + adding > quota:
            raise QuotaExceeded(
                f"org {org_id!r} has {cached[1]} unfinished jobs; adding {adding} would pass its quota of {quota}"
            )

    async def _recount(self, org_id: str) -> tuple[float, int]:
        counted = (time.monotonic(), int(await self.db.fetchval(Q["unfinished_count"], org_id)))
        self._queued[org_id] = counted
        return counted

    def _recount_done(self, org_id: str, task: asyncio.Task[tuple[float, int]]) -> None:
        self._recounting.pop(org_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not count the unfinished jobs of org %s: %s", org_id, task.exception())

    def _count_queued(self, org_id: str, added: int) -> None:
        cached = self._queued.get(org_id)
        if cached is not None:
            self._queued[org_id] = (cached[0], cached[1] + added)

    async def get_job(self, request: Request) -> Response:
        who = await self.principal(request)
        row = await self._job_row(request.path_params["job_id"], who)
        return _Json(read.job_view(row))

    async def list_jobs(self, request: Request) -> Response:
        who = await self.principal(request)
        q = request.query_params
        status = _status_filter(q.get("status"))
        limit_text = q.get("limit", "100")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
            raise ValidationFailed(
                "limit: allowed: an integer from 1 to 1000",
                detail=[{"field": "limit", "message": "allowed: an integer from 1 to 1000"}],
            )
        limit = int(limit_text)
        await self.caught_up()  # read-your-writes: include jobs this client just submitted
        rows = await read.list_jobs(
            self.db,
            org_id=who.scope(),
            status=status,
            run_id=q.get("run_id"),
            app_version_id=q.get("app_version_id"),
            target=q.get("target"),
            after=q.get("cursor"),
            limit=limit + 1,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return _Json(
            {"jobs": [read.job_view(r) for r in rows], "next_cursor": rows[-1]["job_id"] if more and rows else None}
        )

    async def cancel_job(self, request: Request) -> Response:
        who = await self.principal(request)
        row = await self._job_row(request.path_params["job_id"], who)
        status = await self._cancel(row, reason=f"cancelled by token {who.token_id}")
        if status is not None:
            raise Conflict(f"job {row['job_id']} already ended: {status}", status=status, job_id=row["job_id"])
        await self.caught_up()  # a status read after the answer says cancelled
        return _Json({"job_id": row["job_id"], "status": "cancelled"})

    async def _cancel(self, row: asyncpg.Record, *, reason: str) -> str | None:
        """Cancel one job; returns ``None`` when this call cancelled it, else the
        terminal status it already had (``cancelled`` included)."""
        subject = self.es.subjects.job(row["app_version_id"], row["target"], row["org_id"], row["job_id"])
        for _ in range(10):
            last = await self.es.last(subject)
            if last is None:
                raise NotFound(f"no job {row['job_id']}")
            if is_terminal(last.event):
                name = type(last.event).__name__
                return {
                    "JobPassed": "passed",
                    "JobFailed": "failed",
                    "JobCancelled": "cancelled",
                    "JobErrored": "error",
                }[name]
            try:
                await self.es.append(
                    subject,
                    JobCancelled(job_id=row["job_id"], reason=reason, dedup_key=row["dedup_key"]),
                    expected=last.seq,
                )
                log.info(
                    "job %s cancelled: %s",
                    row["job_id"],
                    reason,
                    extra={"job_id": row["job_id"], "run_id": row["run_id"]},
                )
                if isinstance(last.event, JobAssigned | JobStarted):  # an agent holds the job: tell it
                    await self.es.notify_cancelled(last.event.agent_id, row["job_id"])
                return None
            except ConcurrencyConflict:
                continue
        raise Unavailable(f"job {row['job_id']} keeps changing; try cancelling again")

    async def job_events(self, request: Request) -> Response:
        who = await self.principal(request)
        row = await self._job_row(request.path_params["job_id"], who)
        return _Json({"job_id": row["job_id"], "events": await history.job_history(self.es, row)})

    async def job_logs(self, request: Request) -> Response:
        """The whole output of a job's attempts (``?attempt=N`` for one), as text."""
        who = await self.principal(request)
        row = await self._job_row(request.path_params["job_id"], who)
        wanted = request.query_params.get("attempt")
        if wanted is not None and (not wanted.isdigit() or not 1 <= int(wanted) <= max(row["attempts"], 1)):
            raise ValidationFailed(
                f"attempt: allowed: an integer from 1 to {max(row['attempts'], 1)} (the attempts started)",
                detail=[{"field": "attempt", "message": "out of range"}],
            )
        attempts = [int(wanted)] if wanted is not None else list(range(1, row["attempts"] + 1))
        logs = LogStore(self.es)
        tails: dict[int, str] | None = None
        parts = []
        for attempt in attempts:
            data = await logs.get(row["job_id"], attempt)
            if data is None:  # a log short enough to travel whole in its result event
                if tails is None:
                    tails = await self._result_logs(row)
                if attempt not in tails:
                    continue
                data = tails[attempt].encode()
            if wanted is None:
                parts.append(f"=== {row['job_id']} attempt {attempt} ===\n".encode())
            parts.append(data if data.endswith(b"\n") or not data else data + b"\n")
        if not parts:
            raise NotFound(f"no log stored for job {row['job_id']}" + (f" attempt {wanted}" if wanted else ""))
        return Response(b"".join(parts), media_type="text/plain; charset=utf-8")

    async def _result_logs(self, row: asyncpg.Record) -> dict[int, str]:
        """Each attempt's ``log_tail``, from the job's result events."""
        subject = self.es.subjects.job(row["app_version_id"], row["target"], row["org_id"], row["job_id"])
        return {
            rec.event.attempt: rec.event.log_tail
            for rec in await self.es.history(subject)
            if isinstance(rec.event, JobPassed | JobFailed) and rec.event.log_tail
        }

    # --- runs -----------------------------------------------------------------

    async def get_run(self, request: Request) -> Response:
        who = await self.principal(request)
        run_id = request.path_params["run_id"]
        await self.caught_up()  # every job of a run just submitted, not only those projected so far
        summary = await read.run_summary(self.db, run_id, who.scope())
        if summary is None:
            raise NotFound(f"no run {run_id}")
        rows = await read.list_jobs(self.db, org_id=who.scope(), run_id=run_id, limit=10_000)
        summary["jobs"] = [read.job_view(r) for r in rows]
        return _Json(summary)

    async def run_events(self, request: Request) -> Response:
        who = await self.principal(request)
        run_id = request.path_params["run_id"]
        await self.caught_up()  # every job of a run just submitted
        rows = await read.list_jobs(self.db, org_id=who.scope(), run_id=run_id, limit=100_000)
        if not rows:
            raise NotFound(f"no run {run_id}")
        return _Json({"run_id": run_id, "events": await history.run_history(self.es, rows)})

    async def cancel_run(self, request: Request) -> Response:
        who = await self.principal(request)
        run_id = request.path_params["run_id"]
        await self.caught_up()  # cancel every job of a run just submitted, not only those projected so far
        rows = await read.list_jobs(self.db, org_id=who.scope(), run_id=run_id, limit=10_000)
        if not rows:
            raise NotFound(f"no run {run_id}")
        open_rows = [r for r in rows if r["status"] not in read.TERMINAL]
        sem = asyncio.Semaphore(64)

        async def one(row: asyncpg.Record) -> str | None:
            async with sem:
                return await self._cancel(row, reason=f"run cancelled by token {who.token_id}")

        results = await asyncio.gather(*(one(r) for r in open_rows))
        await self.caught_up()
        return _Json({"run_id": run_id, "cancelled": sum(1 for s in results if s is None)})

    # --- live changes ---------------------------------------------------------

    async def live(self, request: Request) -> Response:
        who = await self.principal(request)
        if self.changes is None:
            raise Unavailable("the API is not listening for changes yet")
        q = request.query_params
        status = _status_filter(q.get("status"))
        cursor = 0
        for field, text in (("since", q.get("since")), ("Last-Event-ID", request.headers.get("last-event-id"))):
            if text is None or text == "":
                continue
            if not text.strip().isdigit():
                raise ValidationFailed(
                    f"{field}: {text!r} is not an event id; allowed: a stream sequence, an integer >= 0",
                    detail=[{"field": field, "message": "allowed: an integer >= 0"}],
                )
            cursor = int(text)  # the header, read last, wins over ?since=
        f = stream.Filter(
            org_id=who.scope(), run_id=q.get("run_id"), job_ids=q.getlist("job_id") or None, status=status
        )
        await self.caught_up()  # read-your-writes: the first snapshot includes what this client just submitted
        return StreamingResponse(
            stream.events(self.db, self.changes, f, cursor),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def tail_events(self, request: Request) -> Response:
        """``GET /v1/tail``: live decoded events, filtered server-side (see :mod:`qgjob.api.tail`)."""
        who = await self.principal(request)
        q = request.query_params
        org_id = q.get("org_id") or None
        if not who.admin:
            if org_id is not None and org_id != who.org_id:
                raise Forbidden(f"org_id: this token belongs to org {who.org_id!r} and cannot tail {org_id!r}")
            org_id = who.org_id
        target = q.get("target") or None
        if target is not None and target not in TARGETS:
            raise ValidationFailed(
                f"target: {target!r} is not allowed; allowed: {', '.join(TARGETS)}",
                detail=[{"field": "target", "message": f"allowed: {', '.join(TARGETS)}"}],
            )
        types = frozenset(t for value in q.getlist("type") for t in value.split(",") if t)
        if unknown := sorted(types - tail.TYPES):
            raise ValidationFailed(
                f"type: {', '.join(unknown)} is not an event type; allowed: {', '.join(sorted(tail.TYPES))}",
                detail=[{"field": "type", "message": "not an event type"}],
            )
        since = request.headers.get("last-event-id") or q.get("since")  # the header wins: a reconnect
        if since is not None and not since.strip().isdigit():
            raise ValidationFailed(
                f"since: {since!r} is not a stream sequence; allowed: an integer >= 0",
                detail=[{"field": "since", "message": "allowed: an integer >= 0"}],
            )
        f = tail.TailFilter(
            org_id=org_id,
            app_version_id=q.get("app_version_id") or None,
            target=target,
            run_id=q.get("run_id") or None,
            types=types,
        )
        try:
            tail.subjects(f, self.es.subjects)
        except tail.TailRefused as exc:
            if not who.admin:
                raise Forbidden(str(exc)) from exc
            raise ValidationFailed(str(exc), detail=[{"field": "type", "message": str(exc)}]) from exc
        start = (await self.es.last_seq() if since is None else int(since)) + 1
        run = None
        if f.run_id is not None:
            # The run's jobs so far; later ones announce themselves with JobSubmitted.
            await self.caught_up()
            rows = await read.list_jobs(self.db, org_id=org_id, run_id=f.run_id, limit=100_000)
            run = tail.RunJobs(f.run_id, [r["job_id"] for r in rows])
        changes = self.changes
        return StreamingResponse(
            tail.feed(self.es, f, start, run=run, stopping=lambda: changes is None or changes.closed),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # --- the rest -------------------------------------------------------------

    async def agents(self, request: Request) -> Response:
        await self.principal(request)
        return _Json({"agents": await read.agents(self.db)})

    async def metrics_json(self, request: Request) -> Response:
        who = await self.principal(request)
        await self.caught_up()  # read-your-writes: count what this client just submitted
        body = await read.metrics(self.db, who.scope())
        body["projection_lag"], lag_s = await projection_metrics.lag(self.db, self.es)
        body["projection_lag_s"] = round(lag_s, 3)
        return _Json(body)

    async def create_token(self, request: Request) -> Response:
        who = await self.principal(request)
        self.admin_only(who)
        try:
            raw = msgspec.json.decode(await self._body(request))
        except msgspec.DecodeError as exc:
            raise ValidationFailed(f"body: not valid JSON: {exc}") from exc
        org_id = raw.get("org_id") if isinstance(raw, dict) else None
        admin = bool(raw.get("admin")) if isinstance(raw, dict) else False
        if not admin and (not isinstance(org_id, str) or not org_id.strip() or len(org_id) > 128):
            raise ValidationFailed(
                "org_id: is required; allowed: a non-empty string of at most 128 characters",
                detail=[{"field": "org_id", "message": "is required"}],
            )
        token, _ = await auth.create_token(self.es, org_id=None if admin else org_id, admin=admin)
        await self.caught_up()
        return _Json({"token": token, "org_id": None if admin else org_id, "admin": admin}, status_code=201)

    async def healthz(self, request: Request) -> Response:
        return _Json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        checks: dict[str, Any] = {}
        ok = True
        try:
            last = await asyncio.wait_for(self.es.last_seq(), 2)
            checks["nats"] = "ok"
        except (TimeoutError, QgjobError, Exception) as exc:
            checks["nats"] = f"unavailable: {exc}"
            ok = False
            last = None
        try:
            done = await asyncio.wait_for(checkpoint(self.db), 2)
            checks["postgres"] = "ok"
        except (TimeoutError, QgjobError, Exception) as exc:
            checks["postgres"] = f"unavailable: {exc}"
            ok = False
            done = None
        if last is not None and done is not None:
            lag = max(0, last - done)
            checks["projection_lag"] = lag
            if lag > 10_000:
                ok = False
        return _Json({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)

    async def prometheus(self, request: Request) -> Response:
        """The queue as the projections see it, then this process's own metrics (the
        services ``qgjob up`` runs here: scheduler, projector, agents)."""
        data = await projection_metrics.snapshot(self.db, self.es)
        body = projection_metrics.exposition(data) + generate_latest(REGISTRY)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        return _Json(document())


def _item_view(item: Item) -> dict[str, Any]:
    job = item.job
    view = {
        "job_id": item.job_id,
        "org_id": job["org_id"],
        "app_version_id": job["app_version_id"],
        "test": job["test"],
        "target": job["target"],
        "priority": job["priority"],
        "max_retries": job["max_retries"],
        "run_id": job["run_id"],
        "labels": job["labels"] or {},
        "status": item.status,
    }
    if item.duplicate_of is not None:
        view["duplicate_of"] = item.duplicate_of
    return view


def _log_submitted(run_id: str, items: list[Item]) -> None:
    new = [i for i in items if i.duplicate_of is None]
    if len(items) == 1:
        item = items[0]
        what = "submitted" if item.duplicate_of is None else f"is a duplicate of {item.duplicate_of}"
        log.info("job %s %s (run %s)", item.job_id, what, run_id, extra={"job_id": item.job_id, "run_id": run_id})
    else:
        log.info(
            "run %s: %d job(s) submitted, %d duplicate(s)",
            run_id,
            len(new),
            len(items) - len(new),
            extra={"run_id": run_id},
        )


def _guard(handler: Handler) -> Handler:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except QgjobError as exc:
            log.warning("request failed: %s", exc)
            return Unavailable(str(exc)).response()
        except nats.errors.Error as exc:  # a NATS server that did not answer (a cluster electing a leader, say)
            log.warning("request failed, NATS did not answer: %r", exc)
            return Unavailable(f"the event store did not answer ({exc!r}); retry").response()

    return wrapped


STATIC = Path(__file__).parent / "static"


async def dashboard(request: Request) -> Response:
    """The live dashboard: one page, no build step; it asks for a token itself."""
    return Response((STATIC / "index.html").read_bytes(), media_type="text/html; charset=utf-8")


def create_app(settings: Settings) -> Starlette:
    api = Api(settings)
    routes = [
        Route("/v1/jobs", _guard(api.submit), methods=["POST"]),
        Route("/v1/jobs", _guard(api.list_jobs), methods=["GET"]),
        Route("/v1/jobs/{job_id}", _guard(api.get_job), methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", _guard(api.cancel_job), methods=["POST"]),
        Route("/v1/jobs/{job_id}/events", _guard(api.job_events), methods=["GET"]),
        Route("/v1/jobs/{job_id}/logs", _guard(api.job_logs), methods=["GET"]),
        Route("/v1/runs/{run_id}", _guard(api.get_run), methods=["GET"]),
        Route("/v1/runs/{run_id}/cancel", _guard(api.cancel_run), methods=["POST"]),
        Route("/v1/runs/{run_id}/events", _guard(api.run_events), methods=["GET"]),
        Route("/v1/tail", _guard(api.tail_events), methods=["GET"]),
        Route("/v1/stream", _guard(api.live), methods=["GET"]),
        Route("/v1/agents", _guard(api.agents), methods=["GET"]),
        Route("/v1/metrics", _guard(api.metrics_json), methods=["GET"]),
        Route("/v1/tokens", _guard(api.create_token), methods=["POST"]),
        Route("/healthz", _guard(api.healthz), methods=["GET"]),
        Route("/readyz", _guard(api.readyz), methods=["GET"]),
        Route("/metrics", _guard(api.prometheus), methods=["GET"]),
        Route("/openapi.json", _guard(api.openapi), methods=["GET"]),
        Route("/", dashboard, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=api.lifespan)
    app.state.api = api
    return app


def app_from_environment() -> Starlette:
    """The app for ``uvicorn --factory`` workers: settings from ``QGJOB_*`` and the credentials file."""
    from qgjob.settings import load

    return create_app(load())


def _status_filter(status: str | None) -> str | None:
    """A ``?status=`` filter: one of the job statuses, or none."""
    if status is not None and status not in read.STATUSES:
        raise ValidationFailed(
            f"status: {status!r} is not a status; allowed: one of {', '.join(read.STATUSES)}",
            detail=[{"field": "status", "message": f"allowed: {', '.join(read.STATUSES)}"}],
        )
    return status
