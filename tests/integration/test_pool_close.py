"""Postgres pools: closing never waits forever on a connection in use; what a
released connection runs; generic plans where asked for."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from projections.schema import close_pool, connect_pool


async def test_a_pool_with_a_stuck_query_closes_within_its_timeout(database_url: str) -> None:
    pool = await connect_pool(database_url, "public", max_size=2)
    held = await pool.acquire()
    stuck = asyncio.create_task(held.execute("SELECT pg_sleep(60)"))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await close_pool(pool, timeout=1.0)
    assert time.monotonic() - started < 5
    assert isinstance((await asyncio.gather(stuck, return_exceptions=True))[0], BaseException)


async def test_an_idle_pool_closes_at_once(database_url: str) -> None:
    pool = await connect_pool(database_url, "public", max_size=2)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
    started = time.monotonic()
    await close_pool(pool, timeout=5.0)
    assert time.monotonic() - started < 1


async def test_a_released_connection_runs_no_reset_query_but_an_open_transaction_is_rolled_back(
    database_url: str,
) -> None:
    pool = await connect_pool(database_url, "public", min_size=1, max_size=1)
    watcher = await asyncpg.connect(database_url)
    try:
        pid = await pool.fetchval("SELECT pg_backend_pid()")
        assert await pool.fetchval("SELECT 42 AS marker") == 42
        last = await watcher.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
        assert last == "SELECT 42 AS marker"  # the last statement is the query's own: no RESET ALL after it
        async with pool.acquire() as conn:
            await conn.execute("CREATE TEMP TABLE IF NOT EXISTS left_open (n int)")
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO left_open VALUES (1)")
        assert await pool.fetchval("SELECT count(*) FROM left_open") == 0
        assert await pool.fetchval("SHOW search_path") == "public"
    finally:
        await watcher.close()
        await close_pool(pool)


async def test_a_pool_with_generic_plans_plans_the_dedup_query_once(database_url: str) -> None:
    """The submitter's pool: its dedup probes reuse one plan; a default pool plans them at every run."""
    from projections.schema import migrate, queries

    dedup = queries()["dedup_state"]
    args = (["acme"], ["v1"], ["emulator"], ["key-1", "key-2"])
    seen = {}
    for generic in (False, True):
        pool = await connect_pool(database_url, "plans", max_size=1, generic_plans=generic)
        try:
            async with pool.acquire() as conn:
                await migrate(conn, "plans")
                for _ in range(8):
                    assert await conn.fetch(dedup, *args) == []
                seen[generic] = await conn.fetchrow(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1", dedup
                )
        finally:
            await close_pool(pool)
    assert seen[True]["custom_plans"] == 0 and seen[True]["generic_plans"] == 8
    assert seen[False]["custom_plans"] == 8
