"""The scheduler service: feeds the policy core every event and publishes its
decisions as events, fenced by each job's expected subject sequence."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import msgspec
from nats.aio.msg import Msg

from eventstore import Append, ConcurrencyConflict, EventStore, QgjobError
from eventstore.events import (
    AgentLost,
    AgentRegistered,
)
from eventstore.ids import new_id
from eventstore.tasks import cancel_and_wait
from scheduler import policy
from scheduler.leader import Leadership
from scheduler.metrics import Observer

log = logging.getLogger(__name__)
DEFAULT_LEASE_S = 15.0


class Heartbeat(msgspec.Struct):
    agent_id: str


class SchedulerService:
    """Runs until :meth:`stop`; rebuilds its state from the stream on start."""

    def __init__(
        self,
        store: EventStore,
        config: policy.Config | None = None,
        *,
        tick_s: float = 0.5,
        lease_s: float = DEFAULT_LEASE_S,
        leadership: Leadership | None = None,
    ) -> None:
        self.store = store
        self.leadership = leadership
        self.state = policy.State(config=config or policy.Config())
        self.tick_s = tick_s
        self.lease_s = lease_s
        self._seen: dict[str, float] = {}  # agent -> when it last showed signs of life (monotonic)
        self._agent_seq: dict[str, int] = {}  # agent -> last sequence on its subject
        self.caught_up = asyncio.Event()
        self.last_seq = 0
        self._lock = asyncio.Lock()
        self._observer = Observer()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    @property
    def leading(self) -> bool:
        return self.leadership is None or self.leadership.leading.is_set()

    async def run(self) -> None:
        heartbeats = await self.store.nc.subscribe(self.store.subjects.heartbeats, cb=self._on_heartbeat)
        election = asyncio.create_task(self.leadership.run()) if self.leadership is not None else None
        try:
            await self._run()
        finally:
            if election is not None:
                await cancel_and_wait(election)
                await self.leadership.resign()  # type: ignore[union-attr]
            await heartbeats.unsubscribe()

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = msgspec.json.decode(msg.data, type=Heartbeat)
        except msgspec.DecodeError:
            return
        self._seen[beat.agent_id] = time.monotonic()

    async def _run(self) -> None:
        consume = asyncio.create_task(self._consume())
        tick = asyncio.create_task(self._tick())
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({consume, tick, stop}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            await cancel_and_wait(consume, tick, stop)

    async def _consume(self) -> None:
        end = await self.store.last_seq()
        if end == 0:
            self.caught_up.set()
        async for batch in self.store.subscribe_batches(from_seq=1):
            live = self.caught_up.is_set()
            for rec in batch:
                if live:
                    self._observer.observe(self.state, rec.event)
                policy.apply(self.state, rec.seq, rec.event)
                self.last_seq = rec.seq
                agent_id = getattr(rec.event, "agent_id", None)
                if agent_id is not None and rec.subject.startswith(self._agent_prefix):
                    self._agent_seq[agent_id] = rec.seq
                if isinstance(rec.event, AgentRegistered):
                    self._seen[rec.event.agent_id] = time.monotonic()
            if not self.caught_up.is_set() and (self.last_seq >= end or batch[-1].pending == 0):
                log.info("scheduler caught up at sequence %s", self.last_seq)
                self.caught_up.set()
            if self.caught_up.is_set() and self.leading:
                await self.decide()

    @property
    def _agent_prefix(self) -> str:
        return f"{self.store.subjects.prefix}.agent."

    async def _tick(self) -> None:
        await self.caught_up.wait()
        now = time.monotonic()
        for agent_id in self.state.agents:
            self._seen.setdefault(agent_id, now)  # every agent gets a full lease after a (re)start
        while True:
            await asyncio.sleep(self.tick_s)
            if not self.leading:
                continue  # a standby keeps its state current and waits
            await self.expire_leases()
            await self.decide()

    async def expire_leases(self) -> None:
        """Record AgentLost for every live agent silent for longer than the lease."""
        now = time.monotonic()
        for agent in list(self.state.agents.values()):
            if not agent.alive:
                continue
            seen = self._seen.setdefault(agent.agent_id, now)
            if now - seen <= self.lease_s:
                continue
            reason = f"no heartbeat for {now - seen:.0f}s (lease {self.lease_s:g}s)"
            try:
                await self.store.append(
                    self.store.subjects.agent(agent.target, agent.agent_id),
                    AgentLost(agent_id=agent.agent_id, reason=reason),
                    expected=self._agent_seq.get(agent.agent_id),
                )
                log.warning("agent %s lost: %s", agent.agent_id, reason, extra={"agent_id": agent.agent_id})
            except ConcurrencyConflict:
                log.info("agent %s spoke meanwhile; its lease stands", agent.agent_id)
            except QgjobError as exc:
                log.warning("could not record that agent %s is lost: %s", agent.agent_id, exc)

    async def decide(self) -> None:
        async with self._lock:
            decisions = policy.decide(self.state, time.time(), lambda: new_id("bat"))
            if decisions:
                # subjects now, while every job decided about is in the state: one
                # that ends while the decisions are on their way leaves it
                await asyncio.gather(*(self._publish(d, self._subjects(d)) for d in decisions))

    def _subjects(self, decision: policy.Decision) -> list[str]:
        """The subjects of the jobs a decision is about."""
        job = self.store.subjects.job
        if isinstance(decision, policy.Assign):
            return [job(decision.app_version_id, decision.target, j.org_id, j.job_id) for j in decision.jobs]
        held = self.state.jobs[decision.job_id]
        return [job(held.app_version_id, held.target, held.org_id, held.job_id)]

    async def _publish(self, decision: policy.Decision, subjects: list[str]) -> None:
        events = policy.decision_events(decision, lambda t: datetime.fromtimestamp(t, UTC))
        try:
            if isinstance(decision, policy.Assign):
                batch_subject = self.store.subjects.batch(decision.app_version_id, decision.target, decision.batch_id)
                appends = [Append(batch_subject, events[0], 0)]
                for subject, event, expected in zip(subjects, events[1:], decision.expected, strict=True):
                    appends.append(Append(subject, event, expected))
                await self.store.append_many(appends)
                log.info(
                    "assigned batch %s (%d jobs) to %s",
                    decision.batch_id,
                    len(decision.jobs),
                    decision.agent_id,
                    extra={"batch_id": decision.batch_id, "agent_id": decision.agent_id},
                )
            else:
                (event,) = events
                await self.store.append(subjects[0], event, expected=decision.expected)
                log.info("job %s: %s", decision.job_id, type(event).__name__, extra={"job_id": decision.job_id})
        except ConcurrencyConflict as exc:
            log.info("decision overtaken by events, reconsidering: %s", exc)
            policy.reject(self.state, decision)
        except QgjobError as exc:
            log.warning("could not publish a decision, will retry: %s", exc)
            policy.reject(self.state, decision)
