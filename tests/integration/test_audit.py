"""The audit trail over real HTTP: a job's and a run's history read from
JetStream, and ``GET /v1/tail``, the live feed filtered by subject on the server.

Real uvicorn, real NATS JetStream and Postgres (see ``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest

from eventstore import EventStore
from qgjob.api.auth import create_token
from qgjob.services import ApiService, ProjectorService
from qgjob.settings import Settings
from qgjob.stack.servers import free_port
from tests.conftest import RunningStack
from tests.integration.test_api_jobs import ORG, bulk, job, org_client, simulated_agent, submit, wait_for_end

pytestmark = pytest.mark.timeout(90)


# --- histories ---------------------------------------------------------------------


async def test_a_jobs_history_names_attempt_agent_and_batch_on_every_event(stack: RunningStack) -> None:
    async with org_client(stack) as c, simulated_agent(stack):
        created = await submit(c, job("tests/search_flaky.spec.js"))  # fails once, then passes
        await wait_for_end(c, [created["job_id"]])
        r = await c.get(f"/v1/jobs/{created['job_id']}/events")
        assert r.status_code == 200, r.text
        events = r.json()["events"]

    types = [e["type"] for e in events]
    assert types[0] == "JobSubmitted" and types[-1] == "JobPassed", types
    assert "JobFailed" in types and "JobRetryScheduled" in types, types
    for e in events:
        assert {"seq", "subject", "stored", "at", "type", "job_id", "attempt", "agent_id", "batch_id"} <= set(e), e
        assert e["job_id"] == created["job_id"]
        assert (e["org_id"], e["app_version_id"], e["target"]) == (ORG, "v1.2.3", "emulator")  # from the subject
    started = [e for e in events if e["type"] == "JobStarted"]
    assert [e["attempt"] for e in started] == [1, 2]
    assert all(e["agent_id"] == "sim-emulator" and e["batch_id"] for e in started)
    assert events[0]["attempt"] is None and events[0]["agent_id"] is None  # JobSubmitted says neither
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)


async def test_a_runs_history_merges_its_jobs_and_batches_and_shows_no_other_run(stack: RunningStack) -> None:
    async with org_client(stack) as c, org_client(stack, "globex") as other:
        run = await submit(c, bulk(["tests/a.spec.js", "tests/b.spec.js"], run_id="audit-run"))
        neighbour = await submit(c, bulk(["tests/c.spec.js"], run_id="audit-neighbour"))  # same group: same batch
        ids = {j["job_id"] for j in run["jobs"]}
        async with simulated_agent(stack):
            await wait_for_end(c, [*ids, neighbour["jobs"][0]["job_id"]])

        r = await c.get("/v1/runs/audit-run/events")
        assert r.status_code == 200, r.text
        body = r.json()
        assert (await other.get("/v1/runs/audit-run/events")).status_code == 404  # another org's run
        assert (await c.get("/v1/runs/no-such-run/events")).status_code == 404

    events = body["events"]
    assert body["run_id"] == "audit-run"
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    job_events = [e for e in events if e["type"].startswith("Job")]
    assert {e["job_id"] for e in job_events} == ids  # not the neighbour's
    for job_id in ids:
        mine = [e["type"] for e in job_events if e["job_id"] == job_id]
        assert mine[0] == "JobSubmitted" and mine[-1] == "JobPassed", mine
    batches = [e for e in events if e["type"] == "BatchAssigned"]
    assert batches, [e["type"] for e in events]
    for b in batches:
        assert {j["job_id"] for j in b["jobs"]} <= ids  # a shared batch lists only this run's jobs
    assert {e["batch_id"] for e in events if e["type"] == "JobStarted"} <= {b["batch_id"] for b in batches}
    assert any(e["type"] == "BatchFinished" for e in events)


# --- the live feed -----------------------------------------------------------------


@dataclass
class Tail:
    """What one open ``/v1/tail`` has delivered: ``(event type, data)`` pairs."""

    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def events(self) -> list[dict[str, Any]]:
        return [data for kind, data in self.messages if kind != "ready"]

    async def until(self, check: Any, timeout: float = 30) -> None:
        async def loop() -> None:
            while not check(self):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)


async def _read(response: httpx.Response, tail: Tail) -> None:
    kind, data = "message", ""
    async for line in response.aiter_lines():
        if line == "":
            if data:
                tail.messages.append((kind, json.loads(data)))
                tail.changed.set()
            kind, data = "message", ""
        elif line.startswith("event:"):
            kind = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data += line.partition(":")[2].removeprefix(" ")


@asynccontextmanager
async def open_tail(c: httpx.AsyncClient, **params: Any) -> AsyncIterator[Tail]:
    tail = Tail()
    async with c.stream("GET", "/v1/tail", params=params, timeout=None) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        task = asyncio.create_task(_read(r, tail))
        try:
            await tail.until(lambda t: any(kind == "ready" for kind, _ in t.messages), 10)
            yield tail
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _types_of(tail: Tail, job_id: str) -> list[str]:
    return [e["type"] for e in tail.events() if e.get("job_id") == job_id]


async def test_tail_follows_one_group_of_one_org_and_nothing_else(stack: RunningStack) -> None:
    async with org_client(stack) as c, org_client(stack, "globex") as other:
        async with open_tail(c, app_version_id="v1.2.3", target="emulator") as feed:
            ready = feed.messages[0][1]
            assert ready["subjects"] == [stack.settings.prefix + ".job.v1%2E2%2E3.emulator.acme.*"]
            wanted = await submit(c, job("tests/tail.spec.js"))
            other_build = await submit(c, job("tests/tail.spec.js", app_version_id="v9"))
            other_target = await submit(c, job("tests/tail.spec.js", target="device"))
            other_org = await submit(other, job("tests/tail.spec.js", org_id="globex"))
            async with simulated_agent(stack):
                await feed.until(lambda t: "JobPassed" in _types_of(t, wanted["job_id"]))
            # the others were appended before the wanted job passed: had they leaked, they would be here
            seen = {e["job_id"] for e in feed.events()}
            assert seen == {wanted["job_id"]}, seen
            for leak in (other_build, other_target, other_org):
                assert leak["job_id"] not in seen
            types = _types_of(feed, wanted["job_id"])
            assert types == ["JobSubmitted", "JobAssigned", "JobStarted", "JobPassed"], types
            seqs = [e["seq"] for e in feed.events()]
            assert seqs == sorted(seqs)


async def test_tail_by_run_and_type_and_what_an_org_token_may_not_ask(stack: RunningStack) -> None:
    async with org_client(stack) as c:
        before = await submit(c, bulk(["tests/early.spec.js"], run_id="tail-run"))  # known from the projection
        async with open_tail(c, run_id="tail-run", type=["JobSubmitted", "JobPassed"]) as feed:
            later = await submit(c, bulk(["tests/late.spec.js"], run_id="tail-run"))  # learnt from JobSubmitted
            stranger = await submit(c, bulk(["tests/stranger.spec.js"], run_id="another-run"))
            ids = [before["jobs"][0]["job_id"], later["jobs"][0]["job_id"]]
            async with simulated_agent(stack):
                await feed.until(lambda t: all("JobPassed" in _types_of(t, j) for j in ids))
                await wait_for_end(c, [stranger["jobs"][0]["job_id"]])
            assert _types_of(feed, ids[0]) == ["JobPassed"]  # submitted before the feed began
            assert _types_of(feed, ids[1]) == ["JobSubmitted", "JobPassed"]
            assert {e["job_id"] for e in feed.events()} == set(ids)  # not the other run's job
            assert {e["type"] for e in feed.events()} <= {"JobSubmitted", "JobPassed"}

        r = await c.get("/v1/tail", params={"type": "AgentLost"})
        assert r.status_code == 403 and "admin" in r.json()["message"], r.text
        r = await c.get("/v1/tail", params={"org_id": "globex"})
        assert r.status_code == 403, r.text
        r = await c.get("/v1/tail", params={"type": "JobExploded"})
        assert r.status_code == 422 and "JobPassed" in r.json()["message"], r.text
        r = await c.get("/v1/tail", params={"target": "toaster"})
        assert r.status_code == 422 and "emulator" in r.json()["message"], r.text
        r = await c.get("/v1/tail", params={"since": "yesterday"})
        assert r.status_code == 422, r.text


async def test_an_admin_tails_batches_and_agents_and_resumes_with_since(stack: RunningStack) -> None:
    async with org_client(stack) as c, stack.client(stack.admin_token) as admin:
        async with open_tail(admin, target="emulator", type="BatchAssigned,AgentRegistered") as feed:
            assert len(feed.messages[0][1]["subjects"]) == 2  # batch and agent subjects, no job subjects
            created = await submit(c, job("tests/admin_tail.spec.js"))
            async with simulated_agent(stack):
                await feed.until(lambda t: any(e["type"] == "BatchAssigned" for e in t.events()))
                await wait_for_end(c, [created["job_id"]])
            events = feed.events()
            assert {e["type"] for e in events} == {"BatchAssigned", "AgentRegistered"}, events
            batch = next(e for e in events if e["type"] == "BatchAssigned")
            assert [j["job_id"] for j in batch["jobs"]] == [created["job_id"]]
            assert batch["agent_id"] == "sim-emulator" and batch["target"] == "emulator"

        # ?since=N replays what came after N, then goes on live
        async with open_tail(admin, since=str(batch["seq"] - 1), type="BatchAssigned") as again:
            await again.until(lambda t: bool(t.events()))
            assert again.events()[0]["seq"] == batch["seq"]


async def test_a_stopping_api_ends_open_tails(settings: Settings, store: EventStore, pool: asyncpg.Pool) -> None:
    port = free_port()
    s = settings.with_(url=f"http://127.0.0.1:{port}")
    admin, _ = await create_token(store, org_id=None, admin=True)
    projector, api = ProjectorService(s), ApiService(s, port=port)
    projecting = asyncio.create_task(projector.run())
    served = asyncio.create_task(api.run())
    try:
        while not api.started:
            assert not served.done(), served
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"authorization": f"Bearer {admin}"}
        ) as c:
            async with c.stream("GET", "/v1/tail", timeout=None) as r:
                assert r.status_code == 200
                lines = r.aiter_lines()
                while "event: ready" not in await anext(lines):
                    pass
                api.stop()
                # the feed ends at once, well before uvicorn gives up waiting (3 s) and cuts it
                rest = await asyncio.wait_for(_drain(lines), 2.5)
                assert all(not line.startswith("id:") for line in rest)
        await asyncio.wait_for(served, 15)
    finally:
        api.stop()
        projector.stop()
        await asyncio.gather(served, projecting, return_exceptions=True)


async def _drain(lines: AsyncIterator[str]) -> list[str]:
    return [line async for line in lines]
