"""An org's queue quota over real HTTP: past it a submission gets 429 and
nothing of it is appended; duplicates and retried requests still attach; jobs
that finish make room again. The setting is read from the environment.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from eventstore import EventStore
from eventstore.events import JobSubmitted
from qgjob import settings as settings_mod
from qgjob.settings import Settings
from tests.conftest import RunningStack
from tests.integration.test_api_jobs import bulk, cancel, job, list_jobs, org_client, submit

pytestmark = pytest.mark.timeout(60)

QUOTA = 5


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_(org_queue_quota=QUOTA)


async def submitted(store: EventStore) -> int:
    return len([rec async for rec in store.read(from_seq=1) if isinstance(rec.event, JobSubmitted)])


async def test_past_the_quota_a_submission_is_refused_whole_and_room_comes_back(
    stack: RunningStack, store: EventStore
) -> None:
    async with org_client(stack) as c, org_client(stack, "globex") as other:
        first = [await submit(c, job(f"tests/t{n}.spec.js")) for n in range(3)]

        r = await c.post("/v1/jobs", json=bulk(["tests/a.spec.js", "tests/b.spec.js", "tests/c.spec.js"]))
        assert r.status_code == 429, r.text
        answer = r.json()
        assert answer["error"] == "quota_exceeded"
        assert "org 'acme'" in answer["message"] and f"quota of {QUOTA}" in answer["message"]
        assert "adding 3" in answer["message"]
        assert await submitted(store) == 3  # nothing of the refused request was appended

        await submit(c, bulk(["tests/a.spec.js", "tests/b.spec.js"]))  # exactly up to the quota
        r = await c.post("/v1/jobs", json=job("tests/one-more.spec.js"))
        assert r.status_code == 429, r.text

        # At the quota, a duplicate still attaches to its job, and a retried
        # request still gets its first answer.
        r = await c.post("/v1/jobs", json=job("tests/t0.spec.js"))
        assert r.status_code == 409 and r.json()["duplicate_of"] == first[0]["job_id"], r.text
        other_org = await submit(other, {**job("tests/t0.spec.js"), "org_id": "globex"})
        assert other_org["status"] == "queued"  # the quota is per org
        assert await submitted(store) == 6

        # Jobs that end make room, as soon as the projections show it.
        for j in first[:2]:
            await cancel(c, j["job_id"])
        deadline = time.monotonic() + 10
        while True:
            r = await c.post("/v1/jobs", json=bulk(["tests/x.spec.js", "tests/y.spec.js"]))
            if r.status_code == 201 or time.monotonic() > deadline:
                break
            assert r.status_code == 429, r.text
            await asyncio.sleep(0.05)
        assert r.status_code == 201, r.text
        mine = await list_jobs(c)
        assert len(mine) == 7 and sum(1 for j in mine if j["status"] == "queued") == QUOTA


async def test_a_retried_request_at_the_quota_gets_its_first_answer(stack: RunningStack) -> None:
    async with org_client(stack) as c:
        headers = {"idempotency-key": "ci-run-7"}
        answer = await submit(c, bulk([f"tests/t{n}.spec.js" for n in range(QUOTA)]), headers=headers)
        again = await submit(c, bulk([f"tests/t{n}.spec.js" for n in range(QUOTA)]), headers=headers)
        assert [j["job_id"] for j in again["jobs"]] == [j["job_id"] for j in answer["jobs"]]
        r = await c.post("/v1/jobs", json=job("tests/new.spec.js"), headers={"idempotency-key": "ci-run-8"})
        assert r.status_code == 429, r.text


def test_the_quota_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QGJOB_ORG_QUEUE_QUOTA", "250")
    assert settings_mod.load().org_queue_quota == 250
    for bad in ("0", "-3", "lots"):
        monkeypatch.setenv("QGJOB_ORG_QUEUE_QUOTA", bad)
        with pytest.raises(settings_mod.SettingError, match=r"QGJOB_ORG_QUEUE_QUOTA: .* at least 1"):
            settings_mod.load()
