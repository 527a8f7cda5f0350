"""JetStream persistence: stream setup, appends with optimistic concurrency,
atomic multi-event appends, history reads and subscriptions."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)

from eventstore.client import Client
from eventstore.errors import (
    AppendRejected,
    ConcurrencyConflict,
    EventStoreUnavailable,
    StreamConfigConflict,
)
from eventstore.events import Event, Unreadable, decode_event, encode_event
from eventstore.ids import new_id
from eventstore.subjects import Subjects

log = logging.getLogger(__name__)

WRONG_LAST_SEQUENCE = 10071
BATCH_LIMIT = 1000


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    batch: str | None = None
    count: int | None = None
    error: dict[str, Any] | None = None


_ack_decoder = msgspec.json.Decoder(_PubAck)


def _parse_stamp(stamp: str) -> datetime:
    """A NATS RFC 3339 time with up to nanoseconds (``2026-11-24T13:10:01.123456789Z``)."""
    head, _, rest = stamp.rstrip("Z").partition(".")
    micros = (rest + "000000")[:6] if rest else "000000"
    return datetime.fromisoformat(f"{head}.{micros}+00:00")


@dataclass(frozen=True, slots=True)
class Append:
    """One event to append; ``expected`` is the subject's last sequence (0: none yet)."""

    subject: str
    event: Event
    expected: int | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """An event as stored: its stream sequence, subject and time."""

    seq: int
    subject: str
    event: Event
    stored_ns: int | None = None  # when the stream stored it, in nanoseconds since the epoch
    pending: int = 0  # events after this one the consumer had not delivered yet

    @property
    def time(self) -> datetime | None:
        return None if self.stored_ns is None else datetime.fromtimestamp(self.stored_ns / 1e9, UTC)


def _delivery(msg: Msg) -> tuple[int, int, int]:
    """(stream sequence, stored at in ns, pending) of a consumer's delivery.

    Read straight from the ack subject ``$JS.ACK.<stream>.<consumer>.
    <delivered>.<stream seq>.<consumer seq>.<ns>.<pending>``: a seventh of
    the cost of nats-py's ``metadata``, which builds dataclasses and a
    datetime for every event. Any other form goes through nats-py.
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5]), int(tokens[7]), int(tokens[8])
    meta = msg.metadata
    return meta.sequence.stream, int(meta.timestamp.timestamp() * 1e9), meta.num_pending


def _raise_for(error: dict[str, Any], subject: str | None) -> None:
    code = error.get("err_code")
    text = error.get("description", "append rejected")
    if code == WRONG_LAST_SEQUENCE:
        raise ConcurrencyConflict(f"{text} (subject {subject})", subject=subject)
    raise AppendRejected(f"JetStream rejected the append: {text}", code=code)


RETRY_FOR_S = 15.0  # how long a single append is retried while no server answers


async def _connection_error(exc: Exception) -> None:
    """nats-py's report of a failed (re)connect or a protocol error: one line,
    not the traceback its default logs for every attempt."""
    log.warning("NATS connection: %s", exc or type(exc).__name__)


class EventStore:
    """The event store over one JetStream stream."""

    # Called with ("single" | "atomic", seconds) after every acknowledged append;
    # the services set it to feed their metrics (the store itself keeps none).
    on_append: Callable[[str, float], None] | None = None

    def __init__(self, nc: NATS, *, stream: str = "QGJOB", prefix: str = "qgjob", replicas: int = 1) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.stream = stream
        self.subjects = Subjects(prefix)
        self.replicas = replicas  # of the stream and of the buckets beside it (leader lease, logs)

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        stream: str = "QGJOB",
        prefix: str = "qgjob",
        name: str = "qgjob",
        connect_timeout: float = 5.0,
        replicas: int = 1,
        **options: Any,
    ) -> EventStore:
        """Connect to NATS; ``url`` may list several servers of a cluster, comma-separated.

        The first connection tries each server twice, 0.5 s apart, then
        raises :class:`EventStoreUnavailable` (the caller decides whether to
        wait: the services do, see ``qgjob.readiness.open_store``); once
        connected, the client reconnects for as long as it lives."""
        nc = Client()
        try:
            await nc.connect(
                [u.strip() for u in url.split(",") if u.strip()],
                name=name,
                connect_timeout=connect_timeout,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
                error_cb=_connection_error,
                **options,
            )
        except (OSError, nats.errors.Error) as exc:
            raise EventStoreUnavailable(f"cannot reach NATS at {url}: {exc or type(exc).__name__}") from exc
        nc.options["max_reconnect_attempts"] = -1
        return cls(nc, stream=stream, prefix=prefix, replicas=replicas)

    async def close(self) -> None:
        """Close the connection; every append was already acknowledged."""
        if not self.nc.is_closed:
            await self.nc.close()

    # --- setup ------------------------------------------------------------

    def stream_config(self, *, replicas: int = 1, max_age: float | None = None) -> StreamConfig:
        return StreamConfig(
            name=self.stream,
            subjects=[self.subjects.all],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            num_replicas=replicas,
            max_age=max_age or 0,
            duplicate_window=120.0,
            allow_direct=True,
            allow_atomic=True,
            allow_msg_schedules=True,
        )

    async def ensure_stream(self, *, replicas: int | None = None, max_age: float | None = None) -> StreamInfo:
        """Create the stream, or bring an existing one to this configuration.

        Idempotent. Settings JetStream cannot change in place (storage,
        retention) are refused with :class:`StreamConfigConflict`.
        """
        wanted = self.stream_config(replicas=replicas or self.replicas, max_age=max_age)
        try:
            info = await self.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            info = await self.js.add_stream(wanted)
            log.info("created stream %s", self.stream)
            return info
        have = info.config
        for field in ("storage", "retention"):
            if getattr(have, field) != getattr(wanted, field):
                raise StreamConfigConflict(
                    f"stream {self.stream} has {field}={getattr(have, field)}, "
                    f"wanted {getattr(wanted, field)}; JetStream cannot change it in place"
                )
        changed = {
            f: (getattr(have, f), getattr(wanted, f))
            for f in (
                "subjects",
                "num_replicas",
                "max_age",
                "duplicate_window",
                "allow_direct",
                "allow_atomic",
                "allow_msg_schedules",
                "discard",
            )
            if getattr(have, f) != getattr(wanted, f)
        }
        if not changed:
            return info
        log.info("updating stream %s: %s", self.stream, changed)
        try:
            return await self.js.update_stream(wanted)
        except nats.js.errors.APIError as exc:
            raise StreamConfigConflict(
                f"stream {self.stream} cannot be updated ({', '.join(changed)}): {exc.description}"
            ) from exc

    # --- appends ------------------------------------------------------------

    @staticmethod
    def _headers(event: Event, expected: int | None) -> dict[str, str]:
        headers = {"Nats-Msg-Id": event.event_id}
        if expected is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expected)
        return headers

    async def _request(self, subject: str, payload: bytes, headers: dict[str, str], timeout: float) -> _PubAck:
        try:
            msg = await self.nc.request(subject, payload, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError as exc:
            raise EventStoreUnavailable(f"no stream answers on {subject}") from exc
        except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError) as exc:
            raise EventStoreUnavailable(f"append to {subject} timed out or the connection closed") from exc
        ack = _ack_decoder.decode(msg.data)
        if ack.error:
            _raise_for(ack.error, subject)
        return ack

    async def append(
        self,
        subject: str,
        event: Event,
        *,
        expected: int | None = None,
        timeout: float = 5.0,
        retry_for: float = RETRY_FOR_S,
    ) -> int:
        """Append one event; returns its stream sequence.

        With ``expected``, the append succeeds only if ``subject``'s last
        sequence is ``expected`` (0: the subject is empty), else
        :class:`ConcurrencyConflict`. While no server answers (a cluster
        electing a stream leader after a node died) the append is retried for
        up to ``retry_for`` seconds: the event's id makes a retry of an append
        that did land a duplicate JetStream drops, so nothing is stored twice.
        """
        started = time.perf_counter()
        payload, headers = encode_event(event), self._headers(event, expected)
        delay = 0.1
        try:
            while True:
                try:
                    ack = await self._request(subject, payload, headers, timeout)
                    break
                except EventStoreUnavailable:
                    if time.perf_counter() + delay - started > retry_for:
                        raise
                    log.info("no JetStream answer for %s; retrying in %.1f s", subject, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
            if EventStore.on_append is not None:
                EventStore.on_append("single", time.perf_counter() - started)
        except ConcurrencyConflict:
            already = await self._already_appended(subject, event)
            if already is None:
                raise
            return already
        return ack.seq

    async def _already_appended(self, subject: str, event: Event) -> int | None:
        """The sequence of ``event`` if it is already ``subject``'s last event.

        JetStream checks the expected sequence before the duplicate window, so a
        client retry of an append that did land comes back as a conflict.
        """
        last = await self.last(subject)
        if last is not None and last.event.event_id == event.event_id:
            return last.seq
        return None

    async def append_many(self, appends: Sequence[Append], *, timeout: float = 10.0) -> int:
        """Append events atomically: all of them land, or none does.

        Uses JetStream atomic batch publish; returns the last event's sequence.
        A single conflict rejects the whole batch with :class:`ConcurrencyConflict`.
        """
        if not appends:
            raise ValueError("append_many needs at least one event")
        if len(appends) == 1:
            a = appends[0]
            return await self.append(a.subject, a.event, expected=a.expected, timeout=timeout)
        batch_id = new_id("b")
        last = len(appends)
        started = time.perf_counter()
        try:
            for n, a in enumerate(appends[:-1], start=1):
                headers = self._headers(a.event, a.expected)
                headers["Nats-Batch-Id"] = batch_id
                headers["Nats-Batch-Sequence"] = str(n)
                await self.nc.publish(a.subject, encode_event(a.event), headers=headers)
        except nats.errors.Error as exc:
            raise EventStoreUnavailable(f"atomic append interrupted: {exc}") from exc
        a = appends[-1]
        headers = self._headers(a.event, a.expected)
        headers["Nats-Batch-Id"] = batch_id
        headers["Nats-Batch-Sequence"] = str(last)
        headers["Nats-Batch-Commit"] = "1"
        try:
            ack = await self._request(a.subject, encode_event(a.event), headers, timeout)
        except ConcurrencyConflict:
            already = await self._already_appended(a.subject, a.event)
            if already is None:
                raise
            return already
        if EventStore.on_append is not None:
            EventStore.on_append("atomic", time.perf_counter() - started)
        return ack.seq

    # --- reads --------------------------------------------------------------

    async def last_seq(self) -> int:
        """The stream's last sequence (0 when empty)."""
        info = await self.js.stream_info(self.stream)
        return int(info.state.last_seq)

    async def stored_at(self, seq: int) -> datetime | None:
        """When event ``seq`` was stored (``None``: no such event)."""
        try:
            raw = await self.js.get_msg(self.stream, seq=seq, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        stamp = (raw.headers or {}).get("Nats-Time-Stamp")
        return None if stamp is None else _parse_stamp(stamp)

    async def notify_cancelled(self, agent_id: str, job_id: str) -> None:
        """Tell the agent holding ``job_id`` that its JobCancelled is stored.

        Plain NATS and best effort: the agent checks the job's subject before
        it stops the test, and reads the subjects of its running jobs every
        heartbeat anyway, so a lost notice only delays the stop.
        """
        try:
            await self.nc.publish(self.subjects.cancel_notice(agent_id), job_id.encode())
        except nats.errors.Error as exc:
            log.warning("could not tell agent %s that job %s was cancelled: %s", agent_id, job_id, exc)

    async def last(self, subject: str) -> Recorded | None:
        """The last event on ``subject``, or ``None``."""
        try:
            raw = await self.js.get_last_msg(self.stream, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        return Recorded(seq=int(raw.seq or 0), subject=raw.subject or subject, event=decode_event(raw.data or b""))

    async def last_seq_at(self, when: datetime, *, timeout: float = 5.0) -> int:
        """The sequence of the last event JetStream stored at or before ``when``
        (0 if none): the stream as it stood at that moment is events 1..that."""
        info = await self.js.stream_info(self.stream)
        last = int(info.state.last_seq)
        if last == 0:
            return 0
        try:
            newest = (await self.js.get_msg(self.stream, seq=last, direct=True)).time
        except nats.js.errors.NotFoundError:
            newest = None  # deleted: look by time alone
        if newest is not None and newest <= when:
            return last
        sub = await self.js.subscribe(
            self.subjects.all,
            ordered_consumer=True,
            stream=self.stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=when, headers_only=True),
        )
        seen = 0
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=timeout)
                except nats.errors.TimeoutError as exc:
                    if newest is None or seen == last:
                        return last  # nothing stored after ``when``
                    raise EventStoreUnavailable(f"no event after {when.isoformat()} came within {timeout}s") from exc
                meta = msg.metadata
                seen = int(meta.sequence.stream)
                if meta.timestamp > when:
                    return seen - 1
        finally:
            await sub.unsubscribe()

    async def _ordered(self, subject: str, **options: Any) -> Any:
        """An ordered consumer; a server that does not answer (a cluster electing a
        leader, say) is :class:`EventStoreUnavailable`, to retry."""
        try:
            return await self.js.subscribe(subject, **options)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
            raise EventStoreUnavailable(f"cannot read the stream {self.stream} now: {exc!r}") from exc

    def _filters(self, filter_subject: str | Sequence[str] | None) -> tuple[str, list[str] | None]:
        """The subject and ``filter_subjects`` of a consumer over one filter or several."""
        if filter_subject is None or isinstance(filter_subject, str):
            return filter_subject or self.subjects.all, None
        filters = list(dict.fromkeys(filter_subject))
        if not filters:
            raise ValueError("at least one filter subject is needed")
        return filters[0], (filters if len(filters) > 1 else None)

    async def history(self, subject: str, *, timeout: float = 5.0) -> list[Recorded]:
        """Every event on ``subject`` (a subject or a filter), oldest first."""
        out: list[Recorded] = []
        async for rec in self.read(subject, timeout=timeout):
            out.append(rec)
        return out

    async def read(
        self,
        filter_subject: str | Sequence[str] | None = None,
        *,
        from_seq: int = 1,
        until_seq: int | None = None,
        timeout: float = 5.0,
    ) -> AsyncIterator[Recorded]:
        """Events matching ``filter_subject`` (one filter, or several) from
        ``from_seq`` up to what is stored now (or ``until_seq``), then stop."""
        subject, filters = self._filters(filter_subject)
        info = await self.js.stream_info(self.stream)
        end = int(info.state.last_seq) if until_seq is None else min(until_seq, int(info.state.last_seq))
        if end < from_seq:
            return
        sub = await self._ordered(
            subject,
            ordered_consumer=True,
            stream=self.stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=max(from_seq, 1),
                headers_only=False,
                filter_subjects=filters,
            ),
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=timeout)
                except nats.errors.TimeoutError:
                    return
                rec = self.recorded(msg)
                if rec.seq > end:
                    return
                yield rec
                if rec.seq >= end or rec.pending == 0:
                    return
        finally:
            await sub.unsubscribe()

    async def subscribe(
        self, filter_subject: str | Sequence[str] | None = None, *, from_seq: int = 1
    ) -> AsyncIterator[Recorded]:
        """Events matching ``filter_subject`` (one filter, or several) from ``from_seq`` on, then live, forever."""
        async for batch in self.subscribe_batches(filter_subject, from_seq=from_seq):
            for rec in batch:
                yield rec

    async def subscribe_batches(
        self, filter_subject: str | Sequence[str] | None = None, *, from_seq: int = 1, max_batch: int = 1000
    ) -> AsyncIterator[list[Recorded]]:
        """Like :meth:`subscribe`, but yields every event already delivered
        together, so a consumer can act once per burst instead of per event."""
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            await queue.put(msg)

        subject, filters = self._filters(filter_subject)
        sub = await self._ordered(
            subject,
            ordered_consumer=True,
            stream=self.stream,
            cb=on_msg,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(from_seq, 1), filter_subjects=filters
            ),
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        try:
            while True:
                msgs = [await queue.get()]
                while not queue.empty() and len(msgs) < max_batch:
                    msgs.append(queue.get_nowait())
                yield [self.recorded(m) for m in msgs]
        finally:
            await sub.unsubscribe()

    @staticmethod
    def recorded(msg: Msg) -> Recorded:
        seq, stored_ns, pending = _delivery(msg)
        try:
            event = decode_event(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("an event this version cannot read at seq %s: %s", seq, exc)
            event = Unreadable(reason=str(exc))
        return Recorded(seq=seq, subject=msg.subject, event=event, stored_ns=stored_ns, pending=pending)
