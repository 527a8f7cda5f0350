"""The projector against real JetStream and Postgres: idempotent under
redelivery, survives SIGKILL mid-batch, and equals a replay of the stream."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from eventstore import EventStore, Recorded
from eventstore.events import (
    AgentRegistered,
    Event,
    JobAssigned,
    JobCancelled,
    JobFailed,
    JobPassed,
    JobRequeued,
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
)
from projections import replay
from projections.apply import apply_many
from projections.projector import apply_batch, checkpoint
from projections.schema import migrate, migrations, queries
from qgjob.settings import Settings
from tests.integration.history import write_history

QGJOB = str(Path(sys.executable).parent / "qgjob")


def service_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QGJOB_")}
    env.update(
        QGJOB_NATS_URL=settings.nats_url,
        QGJOB_DATABASE_URL=settings.database_url,
        QGJOB_STREAM=settings.stream,
        QGJOB_PREFIX=settings.prefix,
        QGJOB_SCHEMA=settings.schema,
        QGJOB_DATA_DIR="/nonexistent-qgjob-test",
    )
    return env


async def wait_for_checkpoint(pool: asyncpg.Pool, target: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while await checkpoint(pool) < target:
        if time.monotonic() > deadline:
            raise AssertionError(f"projection stuck at {await checkpoint(pool)} of {target}")
        await asyncio.sleep(0.02)


async def status_counts(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT status, count(*) AS n FROM jobs GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def test_a_redelivered_batch_changes_nothing(store: EventStore, pool: asyncpg.Pool) -> None:
    await write_history(store, 120)
    records = [r async for r in store.read()]
    async with pool.acquire() as conn:
        top = await apply_batch(conn, records[:500])
        snapshot = await conn.fetch("SELECT * FROM jobs ORDER BY job_id")
        assert await apply_batch(conn, records[:500]) == top  # the same batch again
        assert await conn.fetch("SELECT * FROM jobs ORDER BY job_id") == snapshot
        assert await apply_batch(conn, records[250:]) == records[-1].seq  # overlapping redelivery
    live = await status_counts(pool)
    assert sum(live.values()) == 120


async def test_projector_killed_mid_batch_resumes_with_identical_rows(
    store: EventStore, pool: asyncpg.Pool, settings: Settings
) -> None:
    expected = await write_history(store, 3000)
    last = await store.last_seq()
    env = service_env(settings)
    proc = subprocess.Popen([QGJOB, "serve", "projector", "--log-level", "warning"], env=env)
    try:
        killed_at = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = await checkpoint(pool)
            if done > 0:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                killed_at = await checkpoint(pool)
                break
            await asyncio.sleep(0.005)
        assert 0 < killed_at < last, f"the projector was not killed mid-stream ({killed_at} of {last})"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc = subprocess.Popen([QGJOB, "serve", "projector", "--log-level", "warning"], env=env)
    try:
        await wait_for_checkpoint(pool, last)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert await status_counts(pool) == expected
    upto = await replay.rebuild(store, settings.database_url, f"{settings.schema}_rb", until_seq=last)
    try:
        assert upto == last
        assert await replay.compare(settings.database_url, settings.schema, f"{settings.schema}_rb", last) == []
    finally:
        await pool.execute(f'DROP SCHEMA "{settings.schema}_rb" CASCADE')


async def test_replay_verify_reports_each_differing_row(
    store: EventStore, pool: asyncpg.Pool, settings: Settings
) -> None:
    await write_history(store, 200)
    records = [r async for r in store.read()]
    async with pool.acquire() as conn:
        await apply_batch(conn, records)
    env = service_env(settings)
    clean = subprocess.run([QGJOB, "replay", "--verify"], env=env, capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no differences" in clean.stdout
    await pool.execute("UPDATE jobs SET status = 'passed', attempts = 9 WHERE job_id = 'job_000011'")
    await pool.execute("DELETE FROM jobs WHERE job_id = 'job_000012'")
    dirty = subprocess.run([QGJOB, "replay", "--verify"], env=env, capture_output=True, text=True, timeout=60)
    assert dirty.returncode == 1, dirty.stdout + dirty.stderr
    assert "jobs job_000011: status: live='passed' rebuilt='failed'" in dirty.stdout
    assert "attempts: live=9 rebuilt=2" in dirty.stdout
    assert "jobs job_000012: missing in live" in dirty.stdout
    assert "2 row(s) differ" in dirty.stdout


async def test_migrations_from_zero_match_the_schema(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute('DROP SCHEMA IF EXISTS "mig_a" CASCADE')
        assert await migrate(conn, "mig_a") == [version for version, _, _ in migrations()]
        assert await migrate(conn, "mig_a") == []  # idempotent
        tables = {
            r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'mig_a'")
        }
        assert {
            "jobs",
            "claim_groups",
            "agents",
            "batches",
            "tokens",
            "checkpoints",
            "schema_migrations",
            "test_durations",
        } <= tables
        await conn.execute('SET search_path TO "mig_a"')
        for _name, sql in queries().items():
            if "$" not in sql:
                continue
            await conn.prepare(sql)  # every named query parses against the schema
    finally:
        await conn.execute('DROP SCHEMA IF EXISTS "mig_a" CASCADE')
        await conn.close()


RECOUNT = """
SELECT org_id, app_version_id, target, status, count(*) AS n,
       sum(greatest(attempts - 1, 0)) AS retries, count(*) FILTER (WHERE flaky) AS flaky
FROM jobs GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""
COUNTS = "SELECT * FROM job_counts WHERE n > 0 ORDER BY 1, 2, 3, 4"  # columns as in RECOUNT


async def test_the_set_based_migration_keeps_counts_and_durations(database_url: str) -> None:
    """Rows written under the per-row trigger and the running mean, then
    migrated: the counts still match the jobs, through inserts, updates and
    deletes of many rows at once, and a test's mean is its total over its runs."""
    conn = await asyncpg.connect(database_url)
    schema = "mig_b"
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL)")
        for version, name, sql in migrations():
            if version < 6:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version, name)
        await conn.execute(
            "INSERT INTO jobs (job_id, org_id, app_version_id, test, target, priority, max_retries, run_id,"
            " dedup_key, status, attempts, flaky, submitted_at, subject_seq, last_seq)"
            " SELECT 'job_' || n, 'acme', 'v1', 't/' || (n % 3), 'emulator', 5, 2, 'run-1', 'k' || n,"
            " (ARRAY['queued', 'running', 'passed'])[n % 3 + 1], n % 3, n % 4 = 0, now(), n, n"
            " FROM generate_series(1, 30) AS n"
        )
        await conn.execute("UPDATE jobs SET status = 'failed', attempts = 3 WHERE job_id IN ('job_1', 'job_2')")
        await conn.execute(
            "INSERT INTO test_durations (org_id, test, target, runs, mean_ms, last_ms, last_seq)"
            " VALUES ('acme', 't/1', 'emulator', 3, 34.0 / 3, 12, 40)"
        )
        before = await conn.fetch(COUNTS)
        assert before == await conn.fetch(RECOUNT)

        assert await migrate(conn, schema) == [6]
        await conn.execute(f'SET search_path TO "{schema}"')
        assert await conn.fetch(COUNTS) == before
        row = await conn.fetchrow("SELECT runs, total_ms, mean_ms FROM test_durations")
        assert (row["runs"], row["total_ms"], row["mean_ms"]) == (3, 34, 34 / 3)

        at = datetime(2026, 12, 1, tzinfo=UTC)
        records = [
            Recorded(seq=100 + n, subject="x", event=e)
            for n, e in enumerate(
                [
                    JobSubmitted(job_id="job_new", org_id="acme", app_version_id="v1", test="t/1", target="emulator",
                                 run_id="run-1"),
                    *(JobStarted(job_id=f"job_{n}", batch_id="b", agent_id="a", attempt=2) for n in (3, 6, 9)),
                    *(JobPassed(job_id=f"job_{n}", batch_id="b", agent_id="a", attempt=2, duration_ms=n)
                      for n in (3, 6, 9)),
                    JobCancelled(job_id="job_new", at=at),
                ]
            )
        ]  # fmt: skip
        async with conn.transaction():
            await apply_many(conn, records)
        assert await conn.fetch(COUNTS) == await conn.fetch(RECOUNT)
        await conn.execute("DELETE FROM jobs WHERE job_id IN ('job_4', 'job_5', 'job_new')")
        assert await conn.fetch(COUNTS) == await conn.fetch(RECOUNT)
        row = await conn.fetchrow("SELECT runs, total_ms, mean_ms, last_ms FROM test_durations WHERE test = 't/0'")
        assert (row["runs"], row["total_ms"], row["mean_ms"], row["last_ms"]) == (3, 18, 6.0, 9)
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


@pytest.mark.parametrize("bad", ["Live", "drop table", "a" * 64, "1abc"])
def test_schema_names_are_checked(bad: str) -> None:
    from projections.schema import check_schema_name

    with pytest.raises(ValueError, match="not allowed"):
        check_schema_name(bad)


async def test_durations_per_test_and_target_and_suite_estimates(store: EventStore, pool: asyncpg.Pool) -> None:
    await write_history(store, 100)
    records = [r async for r in store.read()]
    async with pool.acquire() as conn:
        await apply_batch(conn, records)
    rows = await pool.fetch("SELECT * FROM test_durations ORDER BY test")
    by_test = {(r["test"], r["target"]): r for r in rows}
    # job_000007 failed once (10 ms) then passed (12 ms): two runs, mean 11
    seven = by_test[("tests/job_000007.spec.js", "emulator")]
    assert (seven["runs"], seven["mean_ms"], seven["last_ms"]) == (2, 11.0, 12)
    plain = by_test[("tests/job_000001.spec.js", "emulator")]
    assert (plain["runs"], plain["mean_ms"]) == (1, 12.0)
    assert ("tests/job_000013.spec.js", "emulator") not in by_test  # cancelled before it ran
    from projections.queries import duration_estimate

    assert await duration_estimate(pool, "acme", "emulator", "tests/job_000007.spec.js") == 11.0
    suite = await duration_estimate(pool, "acme", "emulator", "tests/brand_new.spec.js")
    assert suite is not None and 11.0 < suite < 12.0  # the mean of the tests in tests/
    assert await duration_estimate(pool, "acme", "emulator", "other/new.spec.js") is None
    assert await duration_estimate(pool, "globex", "emulator", "tests/job_000007.spec.js") is None


def _lifecycles(jobs: int, seed: int) -> list[list[Event]]:
    """Each job's own events in order: retries, requeues, cancels; few tests
    shared by many jobs, so results of one test meet in one batch."""
    rng = random.Random(seed)
    out = []
    for n in range(jobs):
        job_id, agent = f"job_{n:04d}", f"emu-{n % 3}"
        batch = f"bat_{n // 4}"
        run = {"job_id": job_id, "batch_id": batch, "agent_id": agent}
        events: list[Event] = [
            JobSubmitted(
                job_id=job_id, org_id="acme", app_version_id="v1", test=f"t/{n % 5}.spec.js",
                target="emulator", run_id="run-1", max_retries=2, dedup_key=f"k{n}",
            ),
            JobAssigned(**run),
        ]  # fmt: skip
        ending = rng.choice(["pass", "retry", "requeue", "cancel", "fail"])
        if ending == "cancel":
            tail = [JobCancelled(job_id=job_id, dedup_key=f"k{n}")]
        else:
            tail = [JobStarted(**run, attempt=1)]
            if ending == "retry":
                tail += [
                    JobFailed(**run, attempt=1, duration_ms=rng.randint(1, 900), error="boom", final=False),
                    JobRetryScheduled(job_id=job_id, attempt=2, not_before=datetime(2026, 12, 1, tzinfo=UTC)),
                    JobAssigned(**run),
                    JobStarted(**run, attempt=2),
                ]
            if ending == "requeue":
                tail += [JobRequeued(job_id=job_id, reason="agent lost"), JobAssigned(**run)]
                tail += [JobStarted(**run, attempt=1)]
            if ending == "fail":
                tail.append(JobFailed(**run, attempt=1, duration_ms=rng.randint(1, 900), error="boom", final=True))
            else:
                tail.append(JobPassed(**run, attempt=2 if ending == "retry" else 1, duration_ms=rng.randint(1, 900)))
        out.append(events + tail)
    return out


async def test_a_batch_of_interleaved_jobs_equals_one_event_at_a_time(
    store: EventStore, pool: asyncpg.Pool, settings: Settings
) -> None:
    """The projector runs a batch in waves of many rows at once; the rows, the
    counts and the test durations it leaves equal those of applying each event
    in its own transaction, in stream order."""
    rng = random.Random(7)
    pending = _lifecycles(120, seed=7)
    for agent in range(3):
        await store.append(
            store.subjects.agent("emulator", f"emu-{agent}"),
            AgentRegistered(agent_id=f"emu-{agent}", target="emulator"),
        )
    while pending:  # interleave the jobs at random, each keeping its own order
        events = rng.choice(pending)
        event = events.pop(0)
        job_id = event.job_id  # type: ignore[attr-defined]
        await store.append(store.subjects.job("v1", "emulator", "acme", job_id), event)
        if not events:
            pending.remove(events)
    records = [r async for r in store.read()]
    async with pool.acquire() as conn:
        assert await apply_batch(conn, records) == records[-1].seq
    one_by_one = f"{settings.schema}_one"
    conn = await asyncpg.connect(settings.database_url)
    try:
        await migrate(conn, one_by_one)
        await conn.execute(f'SET search_path TO "{one_by_one}"')
        for rec in records:
            await apply_batch(conn, [rec])
        counts = (
            "SELECT org_id, app_version_id, target, status, n, retries, flaky FROM {}.job_counts"
            " WHERE n > 0 ORDER BY 1, 2, 3, 4"
        )
        assert await conn.fetch(counts.format(f'"{settings.schema}"')) == await conn.fetch(
            counts.format(f'"{one_by_one}"')
        )
        durations = await conn.fetch(f'SELECT count(*) FROM "{one_by_one}".test_durations')
        assert durations[0][0] == 5
        assert await replay.compare(settings.database_url, settings.schema, one_by_one, records[-1].seq) == []
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{one_by_one}" CASCADE')
        await conn.close()
