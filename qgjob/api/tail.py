"""``GET /v1/tail``: a live feed of decoded events, filtered by the server.

The API opens one JetStream ordered consumer per feed, with filter subjects
built from the subject map, so NATS sends only the events of the groups asked
for. An org token's filters always name its org, and only job subjects carry
an org: batch and agent events (which mix orgs) are for admin tokens that do
not filter by org or run. A run is not in any subject: the feed follows the
org's job subjects and keeps the jobs of the run, those the projection knows
when the feed starts plus every later ``JobSubmitted`` of that run.

Messages are server-sent events: ``event: ready`` once the feed is live (its
data says the first sequence it covers), then one message per event with the
stream sequence as its ``id``, the event type as its ``event`` and the event
as its ``data``, and a ``: keepalive`` comment after 15 s of silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field

import msgspec

from eventstore import EventStore, Recorded
from eventstore.events import EVENT_TYPES, JobSubmitted, Unreadable
from eventstore.subjects import Subjects
from eventstore.tasks import cancel_and_wait
from qgjob.api.history import event_view

JOB_TYPES = frozenset(name for name in EVENT_TYPES if name.startswith("Job"))
BATCH_TYPES = frozenset({"BatchAssigned", "AppInstalled", "BatchFinished"})
AGENT_TYPES = frozenset({"AgentRegistered", "AgentStopped", "AgentLost", "ResultRejected"})
TYPES = JOB_TYPES | BATCH_TYPES | AGENT_TYPES
KEEPALIVE_S = 15.0
CHECK_S = 0.5  # how often an idle feed looks whether the server is stopping


class TailRefused(ValueError):
    """The filters ask for events this token may not see, or for none at all."""


@dataclass(frozen=True, slots=True)
class TailFilter:
    org_id: str | None  # None: every org (admin tokens only)
    app_version_id: str | None = None
    target: str | None = None
    run_id: str | None = None
    types: frozenset[str] = field(default_factory=frozenset)  # empty: every type a feed may carry

    def wants(self, family: frozenset[str]) -> bool:
        return not self.types or bool(self.types & family)


def subjects(f: TailFilter, s: Subjects) -> list[str]:
    """The filter subjects of a feed; :class:`TailRefused` when none is left."""
    out = []
    if f.wants(JOB_TYPES):
        out.append(s.jobs(f.app_version_id or "*", f.target or "*", f.org_id or "*"))
    mixed = f.org_id is None and f.run_id is None  # batch and agent events are not one org's or one run's
    if f.wants(BATCH_TYPES) and mixed:
        out.append(s.batches(f.target or "*", f.app_version_id or "*"))
    if f.wants(AGENT_TYPES) and mixed and f.app_version_id is None:
        out.append(s.agents(f.target or "*"))
    if not out:
        raise TailRefused(
            f"type: {', '.join(sorted(f.types))} events are not scoped to one org, run or build: only an admin "
            "token without org_id, run_id (and, for agent events, app_version_id) can tail them"
        )
    return out


class RunJobs:
    """Which jobs belong to the run a feed follows."""

    def __init__(self, run_id: str, known: Collection[str]) -> None:
        self.run_id = run_id
        self.job_ids = set(known)

    def keeps(self, rec: Recorded) -> bool:
        event = rec.event
        if isinstance(event, JobSubmitted) and event.run_id == self.run_id:
            self.job_ids.add(event.job_id)
        return getattr(event, "job_id", None) in self.job_ids


def message(store: EventStore, rec: Recorded) -> bytes:
    data = msgspec.json.encode(event_view(store, rec))
    return f"id: {rec.seq}\nevent: {type(rec.event).__name__}\ndata: ".encode() + data + b"\n\n"


async def feed(
    store: EventStore,
    f: TailFilter,
    start: int,
    *,
    run: RunJobs | None = None,
    stopping: Callable[[], bool] = lambda: False,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[bytes]:
    """The feed for one client, from stream sequence ``start`` on, until the server stops."""
    filters = subjects(f, store.subjects)
    queue: asyncio.Queue[list[Recorded]] = asyncio.Queue()

    async def consume() -> None:
        async for batch in store.subscribe_batches(filters, from_seq=start):
            await queue.put(batch)

    consumer = asyncio.create_task(consume(), name="tail-consumer")
    loop = asyncio.get_running_loop()
    try:
        yield b"retry: 1000\n\n"
        yield b"event: ready\ndata: " + msgspec.json.encode({"seq": start, "subjects": filters}) + b"\n\n"
        last_out = loop.time()
        while not stopping():
            try:
                batch = await asyncio.wait_for(queue.get(), CHECK_S)
            except TimeoutError:
                if consumer.done():
                    consumer.result()  # the subscription failed: end the feed with its error
                    return
                if loop.time() - last_out >= keepalive_s:
                    last_out = loop.time()
                    yield b": keepalive\n\n"
                continue
            out = []
            for rec in batch:
                if isinstance(rec.event, Unreadable):
                    continue
                if run is not None and not run.keeps(rec):  # before the type filter: it learns from JobSubmitted
                    continue
                if f.types and type(rec.event).__name__ not in f.types:
                    continue
                out.append(message(store, rec))
            if out:
                last_out = loop.time()
                yield b"".join(out)
    finally:
        await cancel_and_wait(consumer)
