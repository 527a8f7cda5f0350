"""Ordered SQL migrations and the named queries, loaded from ``sql/``."""

from __future__ import annotations

import asyncio
import logging
import re
from functools import cache
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).parent / "sql"
MIGRATIONS_DIR = SQL_DIR / "migrations"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIGRATION_LOCK = 7_201_135  # advisory lock id for migrations


def check_schema_name(schema: str) -> str:
    """``schema`` if it is a plain lower-case identifier, else ``ValueError``."""
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema name {schema!r} is not allowed: use lower-case letters, digits and _ (at most 63)")
    return schema


def migrations() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of every migration file, in order."""
    out = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        version = int(path.name.split("_", 1)[0])
        out.append((version, path.stem, path.read_text()))
    return out


@cache
def queries() -> dict[str, str]:
    """The named queries of ``sql/queries.sql``."""
    text = (SQL_DIR / "queries.sql").read_text()
    out: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        out[name.strip()] = body.strip().rstrip(";")
    return out


async def migrate(conn: asyncpg.Connection, schema: str) -> list[int]:
    """Bring ``schema`` up to the newest migration; returns versions applied."""
    check_schema_name(schema)
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations '
            "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')}
        await conn.execute(f'SET LOCAL search_path TO "{schema}"')
        for version, name, sql in migrations():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied.append(version)
            log.info("applied migration %s to schema %s", name, schema)
    return applied


async def connect_pool(
    dsn: str,
    schema: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    name: str = "qgjob",
    synchronous: bool = True,
    generic_plans: bool = False,
) -> asyncpg.Pool:
    """A pool whose connections use ``schema`` as their search path.

    ``synchronous=False`` lets commits return before the WAL is flushed; the
    projector uses it because everything it writes is derived from the stream
    and its checkpoint rolls back with its rows, so a crash only replays events.

    ``generic_plans=True`` plans each prepared statement once rather than at
    every execution. For a pool running only index probes whose best plan
    does not depend on the values (the submitter's dedup query), that saves
    planning, which is most of such a query's cost; a query whose plan
    should depend on its values (``$1 IS NULL OR ...`` filters) belongs in a
    pool without it.

    A connection goes back to the pool without asyncpg's reset query
    (``RESET ALL``, ``UNLISTEN *``, ``CLOSE ALL``, advisory unlocks), which is
    one more round trip inside every ``pool.fetch``: nothing here leaves
    session state on a pooled connection (migrations ``SET LOCAL``, the stream
    listener has a connection of its own). A transaction left open is still
    rolled back.
    """
    check_schema_name(schema)
    settings = {"search_path": schema, "application_name": name}
    if not synchronous:
        settings["synchronous_commit"] = "off"
    if generic_plans:
        settings["plan_cache_mode"] = "force_generic_plan"
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, server_settings=settings, reset=_no_session_state
    )
    if pool is None:  # pragma: no cover - asyncpg returns a pool or raises
        raise RuntimeError("no pool")
    return pool


async def _no_session_state(conn: asyncpg.Connection) -> None:
    """Nothing to reset: see :func:`connect_pool`."""


async def close_pool(pool: asyncpg.Pool, timeout: float = 5.0) -> None:
    """Close ``pool``, waiting at most ``timeout`` for connections in use;
    then asyncpg terminates the rest, so a stuck query never blocks a stop."""
    try:
        await asyncio.wait_for(pool.close(), timeout)
    except TimeoutError:
        log.warning("Postgres connections were still in use after %.0f s; closed them", timeout)
