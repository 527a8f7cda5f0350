"""``GET /v1/stream``: a snapshot, then live changes, resumable with ``Last-Event-ID``.

Real uvicorn, real NATS JetStream and Postgres: the projector's commits wake
the stream through Postgres notifications.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from qgjob.api import stream
from qgjob.services import ApiService
from tests.conftest import RunningStack, free_port
from tests.integration.test_api_jobs import ORG, bulk, org_client, simulated_agent, submit

pytestmark = pytest.mark.timeout(60)

TERMINAL = {"passed", "failed", "cancelled", "error"}


@dataclass
class Message:
    event: str = "message"
    data: str = ""
    id: str | None = None

    def job(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.data)
        return out


@dataclass
class Feed:
    """What one open stream has delivered so far."""

    messages: list[Message] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    last_id: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def jobs(self) -> list[dict[str, Any]]:
        return [m.job() for m in self.messages if m.event == "job"]

    def latest(self) -> dict[str, dict[str, Any]]:
        return {j["job_id"]: j for j in self.jobs()}

    async def until(self, check: Any, timeout: float = 20) -> None:
        async def loop() -> None:
            while not check(self):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)


async def read_feed(response: httpx.Response, feed: Feed) -> None:
    """Parse server-sent events as a browser does (ids persist across messages)."""
    current = Message()
    async for line in response.aiter_lines():
        if line == "":
            if current.data or current.event != "message":
                current.id = feed.last_id
                feed.messages.append(current)
                feed.changed.set()
            current = Message()
        elif line.startswith(":"):
            feed.comments.append(line)
            feed.changed.set()
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                current.event = value
            elif name == "data":
                current.data = value if not current.data else current.data + "\n" + value
            elif name == "id":
                feed.last_id = value


@asynccontextmanager
async def open_feed(c: httpx.AsyncClient, **params: Any) -> AsyncIterator[Feed]:
    headers = params.pop("headers", {})
    feed = Feed()
    async with c.stream("GET", "/v1/stream", params=params, headers=headers, timeout=None) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        task = asyncio.create_task(read_feed(r, feed))
        try:
            yield feed
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def caught_up(feed: Feed) -> bool:
    return any(m.event == "caught-up" for m in feed.messages)


async def test_a_run_streams_its_snapshot_then_every_change_to_the_end(stack: RunningStack) -> None:
    async with org_client(stack) as c, org_client(stack, "globex") as other:
        run = await submit(c, bulk(["tests/a.spec.js", "tests/b_flaky.spec.js", "tests/c.spec.js"], run_id="run-1"))
        await submit(c, bulk(["tests/elsewhere.spec.js"], run_id="run-2"))
        foreign = await submit(other, {**bulk(["tests/a.spec.js"], run_id="run-1"), "org_id": "globex"})
        ids = {j["job_id"] for j in run["jobs"]}

        async with open_feed(c, run_id="run-1") as feed:
            await feed.until(caught_up)
            snapshot = feed.jobs()
            assert {j["job_id"] for j in snapshot} == ids  # not run-2, not globex's run-1
            assert {j["status"] for j in snapshot} == {"queued"}

            async with simulated_agent(stack):
                await feed.until(lambda f: {j["status"] for j in f.latest().values()} <= TERMINAL)

            seen = feed.jobs()
            assert {j["job_id"] for j in seen} == ids
            assert foreign["jobs"][0]["job_id"] not in {j["job_id"] for j in seen}
            latest = feed.latest()
            assert {j["status"] for j in latest.values()} == {"passed"}
            assert [j["flaky"] for j in latest.values()].count(True) == 1
            statuses = [j["status"] for j in seen]
            assert "running" in statuses or "assigned" in statuses  # live transitions, not only the end
            sequence = [int(m.id) for m in feed.messages if m.event == "job" and m.id is not None]
            assert sequence == sorted(sequence)
            for job_id in ids:
                history = [j["status"] for j in seen if j["job_id"] == job_id]
                assert history[0] == "queued" and history[-1] == "passed"
                assert history.index("passed") == len(history) - 1  # nothing after the end


async def test_last_event_id_resumes_after_what_was_seen(stack: RunningStack) -> None:
    async with org_client(stack) as c:
        first = await submit(c, bulk(["tests/one.spec.js", "tests/two.spec.js"], run_id="resume"))
        async with open_feed(c, run_id="resume") as feed:
            await feed.until(caught_up)
            cut = feed.last_id
        assert cut is not None and len(feed.jobs()) == 2

        # While nobody listens, a job is added and another cancelled.
        later = await submit(c, bulk(["tests/three.spec.js"], run_id="resume"))
        r = await c.post(f"/v1/jobs/{first['jobs'][0]['job_id']}/cancel")
        assert r.status_code == 200, r.text

        async with open_feed(c, run_id="resume", headers={"Last-Event-ID": cut}) as again:
            await again.until(caught_up)
        resumed = again.latest()
        assert set(resumed) == {first["jobs"][0]["job_id"], later["jobs"][0]["job_id"]}
        assert resumed[first["jobs"][0]["job_id"]]["status"] == "cancelled"

        async with open_feed(c, run_id="resume", since=again.last_id) as nothing_new:
            await nothing_new.until(caught_up)
        assert nothing_new.jobs() == []


async def test_a_backlog_larger_than_a_page_arrives_whole(stack: RunningStack, monkeypatch: Any) -> None:
    monkeypatch.setattr(stream, "PAGE", 7)
    tests = [f"tests/t{i:02d}.spec.js" for i in range(30)]
    async with org_client(stack) as c:
        await submit(c, bulk(tests, run_id="big"))
        async with open_feed(c, run_id="big") as feed:
            await feed.until(caught_up)
        assert sorted(j["test"] for j in feed.jobs()) == tests
        async with open_feed(c) as everything:  # no filter: the whole org
            await everything.until(caught_up)
        assert len(everything.jobs()) == 30


async def test_keepalives_keep_a_quiet_stream_open(stack: RunningStack, monkeypatch: Any) -> None:
    monkeypatch.setattr(stream, "KEEPALIVE_S", 0.2)
    async with org_client(stack) as c, open_feed(c, job_id="nothing-like-this") as feed:
        await feed.until(lambda f: len(f.comments) >= 2, timeout=10)
        assert feed.jobs() == []
        assert feed.comments[0] == ": keepalive"


async def test_a_job_filter_follows_one_job(stack: RunningStack) -> None:
    async with org_client(stack) as c:
        out = await submit(c, bulk(["tests/x.spec.js", "tests/y.spec.js"]))
        wanted = out["jobs"][1]["job_id"]
        async with open_feed(c, job_id=wanted) as feed:
            await feed.until(caught_up)
            assert [j["job_id"] for j in feed.jobs()] == [wanted]
            r = await c.post(f"/v1/jobs/{wanted}/cancel")
            assert r.status_code == 200
            await feed.until(lambda f: f.latest()[wanted]["status"] == "cancelled")


@pytest.mark.parametrize(
    ("params", "headers", "field_name"),
    [
        ({"status": "finished"}, {}, "status"),
        ({"since": "-3"}, {}, "since"),
        ({}, {"Last-Event-ID": "abc"}, "Last-Event-ID"),
    ],
)
async def test_bad_stream_parameters_name_the_field(
    stack: RunningStack, params: dict[str, str], headers: dict[str, str], field_name: str
) -> None:
    async with org_client(stack) as c:
        r = await c.get("/v1/stream", params=params, headers=headers)
    assert r.status_code == 422
    body = r.json()
    assert body["detail"][0]["field"] == field_name
    assert "allowed" in body["message"]


async def test_the_stream_needs_a_token(stack: RunningStack) -> None:
    async with stack.client(None) as anonymous:
        r = await anonymous.get("/v1/stream")
    assert r.status_code == 401
    assert ORG  # the org-scoped cases above use ORG's token


async def test_stopping_the_api_ends_open_streams(stack: RunningStack) -> None:
    """An open stream must not hold up a stop (uvicorn waits for open responses)."""
    port = free_port()
    settings = stack.settings.with_(url=f"http://127.0.0.1:{port}")
    api = ApiService(settings, port=port)
    served = asyncio.create_task(api.run())
    while not api.started:
        await asyncio.sleep(0.01)
    async with httpx.AsyncClient(base_url=settings.url, headers={"authorization": f"Bearer {stack.admin_token}"}) as c:
        async with open_feed(c) as feed:
            await feed.until(caught_up)
            api.stop()
            await asyncio.wait_for(served, 2)  # well inside the 3 s graceful-shutdown cap
