"""The HTTP API's edges over real HTTP: validation, auth and org isolation.

Every request goes through uvicorn on a real port to an API backed by real
NATS JetStream and Postgres (see ``tests/conftest.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest

from eventstore import EventStore
from tests.conftest import RunningStack

pytestmark = pytest.mark.timeout(60)

ORG = "acme"
OTHER = "globex"
MIB = 1024 * 1024
TWO_ORGS = {"app_version_id": "v", "jobs": [{"org_id": ORG, "test": "a"}, {"org_id": OTHER, "test": "b"}]}


def job(**changes: Any) -> dict[str, Any]:
    """A valid single-job body for ``ORG``; ``changes`` override or (with None) drop fields."""
    body: dict[str, Any] = {
        "org_id": ORG,
        "app_version_id": "v1.2.3",
        "test": "tests/login.spec.js",
        "target": "emulator",
    }
    for name, value in changes.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def error_body(r: httpx.Response, status: int) -> dict[str, Any]:
    """Assert the status and the ``{"error", "message", "detail"}`` shape; return the body."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    assert {"error", "message", "detail"} <= body.keys(), body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["detail"], list)
    return body


async def list_jobs(c: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    r = await c.get("/v1/jobs", params={"limit": "1000", **params})
    assert r.status_code == 200, r.text
    jobs: list[dict[str, Any]] = r.json()["jobs"]
    return jobs


# --- validation --------------------------------------------------------------------


@dataclass
class Bad:
    """One bad request and what its answer must say."""

    name: str
    status: int
    words: tuple[str, ...]  # all must appear in the message
    json: Any = None
    content: bytes | None = None
    field: str | None = None  # detail[0]["field"] when given
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def _compact_bulk(n: int) -> bytes:
    body = {"org_id": ORG, "app_version_id": "v1.2.3", "jobs": [{"test": f"t/{i}"} for i in range(n)]}
    return msgspec.json.encode(body)


BAD: list[Bad] = [
    Bad("unknown target", 422, ("target", "emulator, device, browserstack"), json=job(target="tablet"), field="target"),
    Bad("empty test", 422, ("test", "1 to 512 characters"), json=job(test=""), field="test"),
    Bad("blank test", 422, ("test", "blank", "1 to 512 characters"), json=job(test="   \t"), field="test"),
    Bad("513-character test", 422, ("test", "1 to 512 characters"), json=job(test="t" * 513), field="test"),
    Bad("negative priority", 422, ("priority", "integer from 0"), json=job(priority=-1), field="priority"),
    Bad("fractional priority", 422, ("priority", "int", "integer from 0"), json=job(priority=1.5), field="priority"),
    Bad("string priority", 422, ("priority", "int", "integer from 0"), json=job(priority="1"), field="priority"),
    Bad("missing org_id", 422, ("org_id", "required", "non-empty string"), json=job(org_id=None), field="org_id"),
    Bad(
        "missing app_version_id",
        422,
        ("app_version_id", "required", "non-empty string"),
        json=job(app_version_id=None),
        field="app_version_id",
    ),
    Bad(
        "unknown field", 422, ("colour", "unknown field", "allowed", "priority"), json=job(colour="red"), field="colour"
    ),
    Bad("test is a number", 422, ("test", "str", "spec path"), json=job(test=42), field="test"),
    Bad("labels is a string", 422, ("labels", "object", "allowed"), json=job(labels="main"), field="labels"),
    Bad(
        "max_retries is a bool", 422, ("max_retries", "int", "0 to 20"), json=job(max_retries=True), field="max_retries"
    ),
    Bad("body is a list", 422, ("body", "JSON object"), json=[job()], field="body"),
    Bad("bulk jobs is not a list", 422, ("jobs", "array"), json={"org_id": ORG, "app_version_id": "v", "jobs": {}}),
    Bad(
        "bulk jobs is empty",
        422,
        ("jobs", "empty", "1 to 10000"),
        json={"org_id": ORG, "app_version_id": "v", "jobs": []},
    ),
    Bad(
        "bulk item without app_version_id",
        422,
        ("jobs[1].app_version_id", "required"),
        json={"org_id": ORG, "jobs": [{"test": "a", "app_version_id": "v"}, {"test": "b"}]},
        field="jobs[1].app_version_id",
    ),
    Bad(
        "bulk item with a bad target",
        422,
        ("jobs[0].target", "emulator, device, browserstack"),
        json={"org_id": ORG, "app_version_id": "v", "jobs": [{"test": "a", "target": "watch"}]},
        field="jobs[0].target",
    ),
    Bad(
        "invalid JSON",
        400,
        ("JSON",),
        content=b'{"org_id": "acme", "test": ',
        headers={"content-type": "application/json"},
    ),
    Bad(
        "body over 1 MiB",
        413,
        ("bytes", str(MIB)),
        content=msgspec.json.encode(job(test="x" * (MIB + MIB // 10))),
        headers={"content-type": "application/json"},
    ),
    Bad(
        "10,001 jobs in one request",
        422,
        ("jobs", "10001", "at most 10000"),
        content=_compact_bulk(10_001),
        field="jobs",
        headers={"content-type": "application/json"},
    ),
]


def test_the_compact_10001_job_body_is_under_the_body_limit() -> None:
    # Otherwise the 10,001-job case would test the body limit, not the job count.
    assert len(_compact_bulk(10_001)) < MIB


async def test_bad_input_gets_a_precise_error_and_changes_nothing(stack: RunningStack, store: EventStore) -> None:
    token = await stack.org_token(ORG)
    async with stack.client(token) as c:
        good = await c.post("/v1/jobs", json=job(test="tests/good.spec.js"))
        assert good.status_code == 201, good.text
        good_id = good.json()["job_id"]
        before = await store.last_seq()

        for bad in BAD:
            if bad.content is not None:
                r = await c.post("/v1/jobs", content=bad.content, headers=bad.headers)
            else:
                r = await c.post("/v1/jobs", json=bad.json, headers=bad.headers)
            body = error_body(r, bad.status)
            for word in bad.words:
                assert word in body["message"], f"{bad.name}: {word!r} not in {body['message']!r}"
            if bad.field is not None:
                assert body["detail"], f"{bad.name}: no detail"
                assert body["detail"][0]["field"] == bad.field, f"{bad.name}: {body['detail']}"

        # Nothing was appended to the stream, and the read side shows only the good job.
        assert await store.last_seq() == before
        jobs = await list_jobs(c)
        assert [j["job_id"] for j in jobs] == [good_id]
        r = await c.get(f"/v1/jobs/{good_id}")
        assert r.status_code == 200 and r.json()["status"] == "queued"


async def test_a_chunked_body_over_the_limit_is_refused_while_streaming(stack: RunningStack) -> None:
    """Without a Content-Length the API must still stop reading at 1 MiB."""
    token = await stack.org_token(ORG)
    payload = msgspec.json.encode(job(test="x" * (MIB + MIB // 10)))

    async def chunks() -> Any:
        for start in range(0, len(payload), 64 * 1024):
            yield payload[start : start + 64 * 1024]

    async with stack.client(token) as c:
        r = await c.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        body = error_body(r, 413)
        assert str(MIB) in body["message"]
        assert await list_jobs(c) == []


async def test_defaults_are_filled_in(stack: RunningStack) -> None:
    token = await stack.org_token(ORG)
    async with stack.client(token) as c:
        r = await c.post("/v1/jobs", json=job(target=None))
        assert r.status_code == 201, r.text
        view = r.json()
        assert view["status"] == "queued"
        assert (view["target"], view["priority"], view["max_retries"], view["labels"]) == ("emulator", 5, 3, {})
        assert view["run_id"]
        got = (await c.get(f"/v1/jobs/{view['job_id']}")).json()
        assert (got["target"], got["priority"], got["max_retries"], got["run_id"]) == ("emulator", 5, 3, view["run_id"])


# --- auth --------------------------------------------------------------------------


async def test_auth(stack: RunningStack) -> None:
    token = await stack.org_token(ORG)

    async with stack.client(None) as anonymous:
        assert error_body(await anonymous.post("/v1/jobs", json=job()), 401)["error"] == "unauthorized"
        error_body(await anonymous.get("/v1/jobs"), 401)
    async with stack.client("qgj_org_not-a-real-token") as wrong:
        error_body(await wrong.post("/v1/jobs", json=job()), 401)
        error_body(await wrong.get("/v1/jobs"), 401)
    async with httpx.AsyncClient(base_url=stack.settings.url, headers={"authorization": f"Basic {token}"}) as basic:
        error_body(await basic.get("/v1/jobs"), 401)

    async with stack.client(token) as org:
        body = error_body(await org.post("/v1/jobs", json=job(org_id=OTHER)), 403)
        assert "org_id" in body["message"] and OTHER in body["message"]
        body = error_body(await org.post("/v1/jobs", json=TWO_ORGS), 403)
        assert "jobs[1].org_id" in body["message"]
        body = error_body(await org.post("/v1/tokens", json={"org_id": ORG}), 403)
        assert "admin" in body["message"]
        assert await list_jobs(org) == []

    async with stack.client(stack.admin_token) as admin:
        for org_id in (ORG, OTHER):
            r = await admin.post("/v1/jobs", json=job(org_id=org_id))
            assert r.status_code == 201, r.text
            assert r.json()["org_id"] == org_id
        body = error_body(await admin.post("/v1/jobs", json=TWO_ORGS), 422)
        assert "org_id" in body["message"] and "one org" in body["message"]

    async with stack.client(token) as org:
        assert [j["org_id"] for j in await list_jobs(org)] == [ORG]


# --- org isolation -----------------------------------------------------------------


async def test_an_org_never_sees_or_touches_another_orgs_jobs(stack: RunningStack) -> None:
    a_token = await stack.org_token(ORG)
    b_token = await stack.org_token(OTHER)
    async with stack.client(a_token) as a, stack.client(b_token) as b:
        r = await a.post("/v1/jobs", json=job())
        assert r.status_code == 201, r.text
        a_job, a_run = r.json()["job_id"], r.json()["run_id"]
        r = await b.post("/v1/jobs", json=job(org_id=OTHER))
        assert r.status_code == 201, r.text  # the same test for another org is no duplicate
        b_job = r.json()["job_id"]

        for call in (
            b.get(f"/v1/jobs/{a_job}"),
            b.post(f"/v1/jobs/{a_job}/cancel"),
            b.get(f"/v1/jobs/{a_job}/events"),
            b.get(f"/v1/runs/{a_run}"),
            b.post(f"/v1/runs/{a_run}/cancel"),
        ):
            body = error_body(await call, 404)
            assert body["error"] == "not_found"

        assert [j["job_id"] for j in await list_jobs(b)] == [b_job]
        assert await list_jobs(b, run_id=a_run) == []
        assert [j["job_id"] for j in await list_jobs(a)] == [a_job]

        # B's attempts changed nothing for A.
        r = await a.get(f"/v1/jobs/{a_job}")
        assert r.status_code == 200 and r.json()["status"] == "queued"
        r = await a.get(f"/v1/runs/{a_run}")
        assert r.status_code == 200 and r.json()["total"] == 1
