"""``qgjob replay --until TIME|SEQ``: the projections as they stood at a past
moment, rebuilt into their own schema, while the live ones move on.

Jobs are submitted and left queued, the moment is noted (as a stream sequence
and as a time), then an agent runs them to ``passed``; each replay is a real
``qgjob replay`` process against real NATS JetStream and Postgres.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from eventstore import EventStore
from tests.conftest import RunningStack
from tests.integration.test_api_jobs import bulk, org_client, simulated_agent, submit, wait_for_end
from tests.integration.test_projections import QGJOB, service_env

pytestmark = pytest.mark.timeout(120)

# A zone of its own for the replay process, so a time without a zone must be
# read as that local time (POSIX TZ: "UTC+5:30" is written "-05:30").
LOCAL_ZONE = "QGJ-05:30"
LOCAL_OFFSET = timezone(timedelta(hours=5, minutes=30))


def replay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QGJOB, "replay", *args], env=env, capture_output=True, text=True, timeout=60)


async def statuses(pool: asyncpg.Pool, schema: str) -> dict[str, str]:
    rows = await pool.fetch(f'SELECT job_id, status FROM "{schema}".jobs')
    return {r["job_id"]: r["status"] for r in rows}


async def test_replay_until_shows_the_queue_as_it_was(
    stack: RunningStack, store: EventStore, pool: asyncpg.Pool
) -> None:
    s = stack.settings
    env = service_env(s)
    async with org_client(stack) as c:
        created = await submit(c, bulk(["tests/a.spec.js", "tests/b.spec.js", "tests/c.spec.js"], run_id="audit"))
        ids = {j["job_id"] for j in created["jobs"]}
        before_any = min(datetime.now(UTC), *(await _stored_times(store)))  # before the jobs were submitted
        await asyncio.sleep(0.3)
        cut_seq = await store.last_seq()
        cut_time = datetime.now(UTC)
        await asyncio.sleep(0.3)
        async with simulated_agent(stack):
            await wait_for_end(c, list(ids))
    live = await statuses(pool, s.schema)
    assert {live[j] for j in ids} == {"passed"}

    schemas = [f"{s.schema}_{n}" for n in ("seq", "local", "utc", "after", "before")]
    try:
        r = replay(env, "--until", str(cut_seq), "--schema", schemas[0], "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        report: dict[str, Any] = json.loads(r.stdout)
        assert (report["schema"], report["upto"], report["until"]) == (schemas[0], cut_seq, cut_seq)
        assert await statuses(pool, schemas[0]) == dict.fromkeys(ids, "queued")

        # The same moment as a local time without a zone, in the replay process's own zone.
        local = cut_time.astimezone(LOCAL_OFFSET).replace(tzinfo=None).isoformat()
        r = replay({**env, "TZ": LOCAL_ZONE}, "--until", local, "--schema", schemas[1])
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"from events 1..{cut_seq}" in r.stdout, r.stdout
        assert await statuses(pool, schemas[1]) == dict.fromkeys(ids, "queued")

        # With a zone (Z), and the same process zone: the zone written wins.
        r = replay(
            {**env, "TZ": LOCAL_ZONE}, "--until", cut_time.isoformat().replace("+00:00", "Z"), "--schema", schemas[2]
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert await statuses(pool, schemas[2]) == dict.fromkeys(ids, "queued")

        # Now: everything has passed; before the first submission: no job at all.
        r = replay(env, "--until", datetime.now(UTC).isoformat(), "--schema", schemas[3])
        assert r.returncode == 0, r.stdout + r.stderr
        assert await statuses(pool, schemas[3]) == dict.fromkeys(ids, "passed")
        r = replay(env, "--until", (before_any - timedelta(seconds=1)).isoformat(), "--schema", schemas[4])
        assert r.returncode == 0, r.stdout + r.stderr
        assert await statuses(pool, schemas[4]) == {}

        assert await statuses(pool, s.schema) == live  # the live projections were not touched
    finally:
        for schema in schemas:
            await pool.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def _stored_times(store: EventStore) -> list[datetime]:
    return [rec.time async for rec in store.read() if rec.time is not None]


async def test_replay_until_refuses_bad_input_clearly(stack: RunningStack) -> None:
    env = service_env(stack.settings)
    r = replay(env, "--until", "yesterday at tea time", "--schema", "audit_x")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--until" in r.stderr and "ISO 8601" in r.stderr and "sequence" in r.stderr, r.stderr

    r = replay(env, "--until", "12", "--verify")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--until cannot be combined with --verify" in r.stderr, r.stderr

    r = replay(env, "--until", "12", "--schema", stack.settings.schema)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "is the live schema" in r.stderr, r.stderr

    # Bad input is refused before any server is asked: no NATS needed.
    r = replay({**env, "QGJOB_NATS_URL": "nats://127.0.0.1:1"}, "--until", "2025-13-45", "--schema", "audit_x")
    assert r.returncode == 2 and "--until" in r.stderr, r.stdout + r.stderr
