"""Closing a Postgres pool never waits forever on a connection in use."""

from __future__ import annotations

import asyncio
import time

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
