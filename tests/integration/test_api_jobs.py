"""The HTTP API's job life over real HTTP: submit, read, dedup, idempotency,
bulk, cancel, events, health and metrics, and jobs run by a simulated agent.

Every request goes through uvicorn on a real port to an API backed by real
NATS JetStream and Postgres (see ``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from agents.runners import SimulateRunner
from qgjob.services import AgentRunner
from tests.conftest import RunningStack

pytestmark = pytest.mark.timeout(60)

ORG = "acme"
APP = "v1.2.3"
TERMINAL = {"passed", "failed", "cancelled", "error"}


def job(test: str = "tests/login.spec.js", **changes: Any) -> dict[str, Any]:
    """A valid single-job body for ``ORG``."""
    return {"org_id": ORG, "app_version_id": APP, "test": test, "target": "emulator", **changes}


def bulk(tests: list[str], **top: Any) -> dict[str, Any]:
    """A bulk body: shared fields at the top, one ``{"test"}`` per job."""
    return {"org_id": ORG, "app_version_id": APP, "target": "emulator", **top, "jobs": [{"test": t} for t in tests]}


@asynccontextmanager
async def org_client(stack: RunningStack, org_id: str = ORG) -> AsyncIterator[httpx.AsyncClient]:
    async with stack.client(await stack.org_token(org_id)) as c:
        yield c


async def submit(c: httpx.AsyncClient, body: dict[str, Any], status: int = 201, **kwargs: Any) -> dict[str, Any]:
    r = await c.post("/v1/jobs", json=body, **kwargs)
    assert r.status_code == status, r.text
    out: dict[str, Any] = r.json()
    return out


async def get_job(c: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    r = await c.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def list_jobs(c: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    r = await c.get("/v1/jobs", params={"limit": "1000", **params})
    assert r.status_code == 200, r.text
    jobs: list[dict[str, Any]] = r.json()["jobs"]
    return jobs


async def cancel(c: httpx.AsyncClient, job_id: str, status: int = 200) -> dict[str, Any]:
    r = await c.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == status, r.text
    out: dict[str, Any] = r.json()
    return out


async def wait_for_end(c: httpx.AsyncClient, job_ids: list[str], timeout: float = 30) -> dict[str, dict[str, Any]]:
    """Poll until every job is terminal; returns the last views by id."""
    deadline = time.monotonic() + timeout
    while True:
        views = {j: await get_job(c, j) for j in job_ids}
        if all(v["status"] in TERMINAL for v in views.values()):
            return views
        if time.monotonic() > deadline:
            pytest.fail(f"jobs did not end within {timeout}s: { {j: v['status'] for j, v in views.items()} }")
        await asyncio.sleep(0.05)


async def caught_up_metrics(c: httpx.AsyncClient, timeout: float = 10) -> dict[str, Any]:
    """``GET /v1/metrics`` once the projections hold every event."""
    deadline = time.monotonic() + timeout
    while True:
        r = await c.get("/v1/metrics")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["projection_lag"] == 0:
            return body
        assert time.monotonic() < deadline, f"projection lag stayed at {body['projection_lag']}"
        await asyncio.sleep(0.02)


# --- read-your-writes --------------------------------------------------------------


async def test_a_read_right_after_a_submit_finds_the_job(stack: RunningStack) -> None:
    async with org_client(stack) as c:
        for n in range(50):
            created = await submit(c, job(f"tests/ryw/{n}.spec.js"))
            r = await c.get(f"/v1/jobs/{created['job_id']}")
            assert r.status_code == 200, f"submit #{n}: {r.status_code} {r.text}"
            assert r.json()["status"] == "queued"

        created = await submit(c, bulk([f"tests/bulk/{n}.spec.js" for n in range(200)]))
        last = created["jobs"][-1]
        view = await get_job(c, last["job_id"])
        assert (view["test"], view["status"]) == ("tests/bulk/199.spec.js", "queued")


# --- dedup -------------------------------------------------------------------------


async def test_dedup_of_unfinished_jobs(stack: RunningStack) -> None:
    async with org_client(stack) as c:
        first = await submit(c, job())
        dup = await submit(c, job(), status=409)
        assert dup["duplicate_of"] == first["job_id"]
        assert dup["status"] == "queued"
        assert first["job_id"] in dup["message"]

        # Another target, test or build is another job.
        await submit(c, job(target="device"))
        await submit(c, job("tests/other.spec.js"))
        await submit(c, job(app_version_id="v9"))

        # A bulk request reports its duplicate item, and appends the rest.
        answer = await submit(c, bulk(["tests/new.spec.js", "tests/login.spec.js"]))
        assert (answer["created"], answer["duplicates"]) == (1, 1)
        fresh, again = answer["jobs"]
        assert "duplicate_of" not in fresh
        assert again["duplicate_of"] == first["job_id"] and again["status"] == "queued"

        # Once the first ends, the same test may be submitted again.
        assert (await cancel(c, first["job_id"]))["status"] == "cancelled"
        second = await submit(c, job())
        assert second["job_id"] != first["job_id"]
        assert second["status"] == "queued"
        dup = await submit(c, job(), status=409)
        assert dup["duplicate_of"] == second["job_id"]

        tests = sorted((j["test"], j["target"], j["app_version_id"], j["status"]) for j in await list_jobs(c))
        assert tests == [
            ("tests/login.spec.js", "device", APP, "queued"),
            ("tests/login.spec.js", "emulator", APP, "cancelled"),
            ("tests/login.spec.js", "emulator", APP, "queued"),
            ("tests/login.spec.js", "emulator", "v9", "queued"),
            ("tests/new.spec.js", "emulator", APP, "queued"),
            ("tests/other.spec.js", "emulator", APP, "queued"),
        ]


async def test_concurrent_identical_submissions_create_one_job(stack: RunningStack) -> None:
    async with org_client(stack) as c:
        answers = await asyncio.gather(*(c.post("/v1/jobs", json=job()) for _ in range(20)))
        codes = sorted(r.status_code for r in answers)
        assert codes == [201] + [409] * 19, [r.text for r in answers if r.status_code not in (201, 409)]
        winner = next(r.json()["job_id"] for r in answers if r.status_code == 201)
        assert {r.json()["duplicate_of"] for r in answers if r.status_code == 409} == {winner}
        assert [j["job_id"] for j in await list_jobs(c)] == [winner]


# --- idempotency -------------------------------------------------------------------


async def test_a_retried_request_with_the_same_idempotency_key_gets_the_same_answer(stack: RunningStack) -> None:
    body = bulk([f"tests/idem/{n}.spec.js" for n in range(5)])
    headers = {"Idempotency-Key": "ci-run-4711-step-3"}
    async with org_client(stack) as c:
        first = await submit(c, body, headers=headers)
        again = await submit(c, body, headers=headers)
        ids = [j["job_id"] for j in first["jobs"]]
        assert [j["job_id"] for j in again["jobs"]] == ids
        assert again["run_id"] == first["run_id"]
        assert all("duplicate_of" not in j for j in again["jobs"])
        assert sorted(j["job_id"] for j in await list_jobs(c)) == sorted(ids)

        # Another key is another request: the same tests are now duplicates.
        other = await submit(c, body, headers={"Idempotency-Key": "ci-run-4712-step-3"})
        assert (other["created"], other["duplicates"]) == (0, 5)
        assert [j["duplicate_of"] for j in other["jobs"]] == ids
        assert len(await list_jobs(c)) == 5


# --- bulk --------------------------------------------------------------------------


async def test_a_bulk_submit_of_1000_jobs_is_one_run(stack: RunningStack) -> None:
    tests = [f"tests/suite/{n:04d}.spec.js" for n in range(1000)]
    async with org_client(stack) as c:
        answer = await submit(c, bulk(tests, priority=2, labels={"branch": "main"}))
        assert (answer["created"], answer["duplicates"]) == (1000, 0)
        assert [j["test"] for j in answer["jobs"]] == tests
        assert {j["run_id"] for j in answer["jobs"]} == {answer["run_id"]}
        assert {(j["status"], j["priority"], j["labels"]["branch"]) for j in answer["jobs"]} == {("queued", 2, "main")}
        assert len({j["job_id"] for j in answer["jobs"]}) == 1000

        r = await c.get(f"/v1/runs/{answer['run_id']}")
        assert r.status_code == 200, r.text
        run = r.json()
        assert (run["total"], run["counts"]["queued"], run["status"]) == (1000, 1000, "running")
        assert sorted(j["test"] for j in run["jobs"]) == tests


# --- cancel ------------------------------------------------------------------------


async def test_cancel_a_job_and_a_run(stack: RunningStack) -> None:
    async with org_client(stack) as c:
        one = await submit(c, job())
        assert await cancel(c, one["job_id"]) == {"job_id": one["job_id"], "status": "cancelled"}
        view = await get_job(c, one["job_id"])
        assert view["status"] == "cancelled" and view["finished_at"] is not None
        again = await cancel(c, one["job_id"], status=409)
        assert again["status"] == "cancelled" and "cancelled" in again["message"]

        run = await submit(c, bulk([f"tests/run/{n}.spec.js" for n in range(5)]))
        ids = [j["job_id"] for j in run["jobs"]]
        await cancel(c, ids[0])
        r = await c.post(f"/v1/runs/{run['run_id']}/cancel")
        assert r.status_code == 200, r.text
        assert r.json() == {"run_id": run["run_id"], "cancelled": 4}
        assert [(await get_job(c, j))["status"] for j in ids] == ["cancelled"] * 5
        summary = (await c.get(f"/v1/runs/{run['run_id']}")).json()
        assert (summary["counts"]["cancelled"], summary["status"]) == (5, "failed")

        # Cancelling a run right after submitting it reaches every one of its jobs.
        big = await submit(c, bulk([f"tests/big/{n}.spec.js" for n in range(500)]))
        r = await c.post(f"/v1/runs/{big['run_id']}/cancel")
        assert r.status_code == 200, r.text
        assert r.json()["cancelled"] == 500
        assert {j["status"] for j in await list_jobs(c, run_id=big["run_id"])} == {"cancelled"}

        r = await c.post("/v1/jobs/job_does_not_exist/cancel")
        assert r.status_code == 404, r.text
        r = await c.post("/v1/runs/run_does_not_exist/cancel")
        assert r.status_code == 404, r.text


# --- events ------------------------------------------------------------------------


async def test_a_jobs_events_are_its_history_in_order(stack: RunningStack) -> None:
    async with org_client(stack) as c:
        created = await submit(c, job(priority=1, labels={"commit": "abc123"}))
        await cancel(c, created["job_id"])
        r = await c.get(f"/v1/jobs/{created['job_id']}/events")
        assert r.status_code == 200, r.text
        body = r.json()
        events = body["events"]
        assert body["job_id"] == created["job_id"]
        assert [e["type"] for e in events] == ["JobSubmitted", "JobCancelled"]
        assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
        assert {e["job_id"] for e in events} == {created["job_id"]}
        submitted = events[0]
        assert (submitted["test"], submitted["priority"], submitted["labels"]) == (
            "tests/login.spec.js",
            1,
            {"commit": "abc123"},
        )


# --- health and metrics ------------------------------------------------------------


async def test_health_readiness_and_the_openapi_document(stack: RunningStack) -> None:
    async with stack.client(None) as c:
        r = await c.get("/healthz")
        assert (r.status_code, r.json()) == (200, {"status": "ok"})

        r = await c.get("/readyz")
        assert r.status_code == 200, r.text
        checks = r.json()["checks"]
        assert (checks["nats"], checks["postgres"]) == ("ok", "ok")

        r = await c.get("/openapi.json")
        assert r.status_code == 200
        paths = r.json()["paths"]
        assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/runs/{run_id}"} <= paths.keys()
        assert {"get", "post"} <= paths["/v1/jobs"].keys()


async def test_metrics_count_what_was_submitted(stack: RunningStack) -> None:
    async with org_client(stack) as c:
        await submit(c, bulk([f"tests/m/{n}.spec.js" for n in range(3)]))
        await submit(c, job(target="device"))
        gone = await submit(c, job("tests/gone.spec.js"))
        await cancel(c, gone["job_id"])
        async with org_client(stack, "globex") as other:
            await submit(other, job(org_id="globex"))

        metrics = await caught_up_metrics(c)
        counts = {k: v for k, v in metrics["jobs_by_status"].items() if v}
        assert counts == {"queued": 4, "cancelled": 1}
        assert metrics["jobs_by_target"] == {"emulator": {"queued": 3, "cancelled": 1}, "device": {"queued": 1}}
        depth = {(q["app_version_id"], q["target"]): q["depth"] for q in metrics["queues"]}
        assert depth == {(APP, "emulator"): 3, (APP, "device"): 1}

        r = await c.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        lines = r.text.splitlines()
        assert "# TYPE qgjob_jobs gauge" in lines
        # Prometheus sees every org: acme's 3 plus globex's 1 queued on the emulator.
        assert 'qgjob_jobs{status="queued",target="emulator"} 4.0' in lines
        assert 'qgjob_jobs{status="cancelled",target="emulator"} 1.0' in lines
        assert 'qgjob_jobs{status="queued",target="device"} 1.0' in lines


# --- running jobs ------------------------------------------------------------------


@asynccontextmanager
async def simulated_agent(stack: RunningStack, target: str = "emulator") -> AsyncIterator[AgentRunner]:
    runner = AgentRunner(
        stack.settings, agent_id=f"sim-{target}", target=target, runner=SimulateRunner(duration_s=0.01, install_s=0.01)
    )
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        runner.stop()
        await asyncio.wait_for(task, 15)


async def test_cancelling_a_running_job_through_the_api_stops_its_test_at_once(stack: RunningStack) -> None:
    """The API tells the agent holding the job; with a heartbeat a minute
    apart, the agent's own read-back cannot be what stops the test."""
    runner = AgentRunner(
        stack.settings, agent_id="sim-long", target="emulator", runner=SimulateRunner(duration_s=30), lease_s=300
    )
    task = asyncio.create_task(runner.run())
    try:
        async with org_client(stack) as c:
            created = await submit(c, job("tests/very_long.spec.js"))
            deadline = time.monotonic() + 15
            while (await get_job(c, created["job_id"]))["status"] != "running":
                assert time.monotonic() < deadline, "the job never started"
                await asyncio.sleep(0.02)
            agent = runner.agent
            assert agent is not None and created["job_id"] in agent._running
            started = time.monotonic()
            assert (await cancel(c, created["job_id"]))["status"] == "cancelled"
            while created["job_id"] in agent._running and time.monotonic() - started < 10:
                await asyncio.sleep(0.02)
            assert time.monotonic() - started < 2, "the test ran on after its cancel"
            view = await get_job(c, created["job_id"])
            assert (view["status"], view["attempts"]) == ("cancelled", 1)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 15)


async def test_a_simulated_agent_runs_jobs_to_their_end(stack: RunningStack) -> None:
    async with org_client(stack) as c, simulated_agent(stack):
        failing = await submit(c, job("tests/checkout_fail.spec.js", max_retries=2))
        flaky = await submit(c, job("tests/search_flaky.spec.js"))
        plain = await submit(c, job("tests/home.spec.js"))
        ids = [failing["job_id"], flaky["job_id"], plain["job_id"]]
        assert len({failing["run_id"], flaky["run_id"], plain["run_id"]}) == 3

        views = await wait_for_end(c, ids)
        f, fl, p = (views[j] for j in ids)
        assert (f["status"], f["attempts"], f["flaky"]) == ("failed", 3, False)
        assert "assertion failed" in f["error"]
        assert (fl["status"], fl["attempts"], fl["flaky"]) == ("passed", 2, True)
        assert (p["status"], p["attempts"], p["flaky"]) == ("passed", 1, False)
        for view in views.values():
            assert view["agent_id"] == "sim-emulator"
            assert view["started_at"] and view["finished_at"]

        r = await c.get(f"/v1/jobs/{failing['job_id']}/events")
        types = [e["type"] for e in r.json()["events"]]
        assert types[0] == "JobSubmitted" and types[-1] == "JobFailed"
        assert types.count("JobStarted") == 3

        # An ended job cannot be cancelled; the answer names its status.
        answer = await cancel(c, plain["job_id"], status=409)
        assert answer["status"] == "passed" and "passed" in answer["message"]
        # And its test may be submitted again.
        await submit(c, job("tests/home.spec.js"))
