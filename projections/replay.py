"""Rebuild the projections from the stream, and compare a rebuild with live.

``rebuild`` folds events 1..``until_seq`` into a fresh schema with the same
``apply`` the projector uses. ``verify`` rebuilds up to the live checkpoint and
reports every row that differs, table by table.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from eventstore import EventStore, Recorded
from projections.projector import apply_batch, checkpoint
from projections.schema import check_schema_name, migrate

TABLES: dict[str, tuple[str, ...]] = {
    "jobs": ("job_id",),
    "claim_groups": ("org_id", "app_version_id", "target"),
    "agents": ("agent_id",),
    "batches": ("batch_id",),
    "tokens": ("token_id",),
    "test_durations": ("org_id", "test", "target"),
}


@dataclass(frozen=True, slots=True)
class Difference:
    table: str
    key: str
    problem: str  # "missing in rebuild", "missing in live", or "differs"
    columns: dict[str, tuple[Any, Any]]  # column -> (live, rebuilt)

    def describe(self) -> str:
        if self.problem != "differs":
            return f"{self.table} {self.key}: {self.problem}"
        cols = ", ".join(f"{c}: live={lv!r} rebuilt={rv!r}" for c, (lv, rv) in self.columns.items())
        return f"{self.table} {self.key}: {cols}"


async def rebuild(store: EventStore, dsn: str, schema: str, *, until_seq: int | None = None, batch: int = 1000) -> int:
    """Drop and rebuild ``schema`` from the stream; returns the last sequence applied."""
    check_schema_name(schema)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await migrate(conn, schema)
        await conn.execute(f'SET search_path TO "{schema}"')
        pending: list[Recorded] = []
        top = 0
        async for rec in store.read(from_seq=1, until_seq=until_seq):
            pending.append(rec)
            if len(pending) >= batch:
                top = await apply_batch(conn, pending)
                pending.clear()
        if pending:
            top = await apply_batch(conn, pending)
        return top
    finally:
        await conn.close()


async def _rows(conn: asyncpg.Connection, schema: str, table: str, key: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    rows = await conn.fetch(f'SELECT * FROM "{schema}".{table}')
    return {"/".join(str(r[k]) for k in key): dict(r) for r in rows}


async def compare(dsn: str, live: str, rebuilt: str, upto: int) -> list[Difference]:
    """Rows of ``live`` last touched at or before ``upto`` against ``rebuilt``."""
    conn = await asyncpg.connect(dsn)
    out: list[Difference] = []
    try:
        for table, key in TABLES.items():
            a = await _rows(conn, live, table, key)
            b = await _rows(conn, rebuilt, table, key)
            for k in sorted(set(a) | set(b)):
                lr, rr = a.get(k), b.get(k)
                if lr is not None and lr["last_seq"] > upto:
                    continue  # changed after the rebuild's end: not comparable
                if lr is None:
                    out.append(Difference(table, k, "missing in live", {}))
                elif rr is None:
                    out.append(Difference(table, k, "missing in rebuild", {}))
                else:
                    cols = {c: (lr[c], rr.get(c)) for c in lr if lr[c] != rr.get(c)}
                    if cols:
                        out.append(Difference(table, k, "differs", cols))
    finally:
        await conn.close()
    return out


async def verify(
    store: EventStore, dsn: str, live: str, *, keep: bool = False, timeout: float = 60.0
) -> tuple[int, list[Difference]]:
    """Rebuild into ``<live>_verify`` up to the live checkpoint and compare."""
    pool_conn = await asyncpg.connect(dsn, server_settings={"search_path": check_schema_name(live)})
    try:
        target = await store.last_seq()
        deadline = time.monotonic() + timeout
        while (done := await checkpoint(pool_conn)) < target and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await pool_conn.close()
    scratch = check_schema_name(f"{live}_verify")
    upto = await rebuild(store, dsn, scratch, until_seq=done)
    try:
        return upto, await compare(dsn, live, scratch, done)
    finally:
        if not keep:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{scratch}" CASCADE')
            finally:
                await conn.close()
