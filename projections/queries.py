"""The read queries behind the HTTP API."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from projections.schema import queries

Q = queries()
TERMINAL = ("passed", "failed", "cancelled", "error")
STATUSES = ("queued", "assigned", "running", "retrying", *TERMINAL)
JOB_FIELDS = (
    "job_id",
    "org_id",
    "app_version_id",
    "test",
    "target",
    "priority",
    "max_retries",
    "run_id",
    "labels",
    "status",
    "attempts",
    "flaky",
    "agent_id",
    "batch_id",
    "submitted_at",
    "started_at",
    "finished_at",
    "duration_ms",
    "error",
    "log_tail",
)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def job_view(row: asyncpg.Record) -> dict[str, Any]:
    """A job row as the API returns it."""
    out: dict[str, Any] = {}
    for field in JOB_FIELDS:
        value = row[field]
        if isinstance(value, datetime):
            value = _iso(value)
        elif field == "labels" and isinstance(value, str):
            value = json.loads(value)
        out[field] = value
    if row["timeout_s"] is not None:
        out["timeout_s"] = row["timeout_s"]
    return out


async def get_job(conn: asyncpg.Connection | asyncpg.Pool, job_id: str, org_id: str | None) -> asyncpg.Record | None:
    """One job's row, scoped to ``org_id`` (``None``: any org, for admins)."""
    row: asyncpg.Record | None = await conn.fetchrow(Q["job_get"], job_id, org_id)
    return row


async def list_jobs(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    org_id: str | None,
    status: str | None = None,
    run_id: str | None = None,
    app_version_id: str | None = None,
    target: str | None = None,
    after: str | None = None,
    limit: int = 100,
) -> list[asyncpg.Record]:
    """Jobs in id (submission) order, after the ``after`` cursor."""
    where = []
    args: list[Any] = []
    for column, value in (
        ("org_id", org_id),
        ("status", status),
        ("run_id", run_id),
        ("app_version_id", app_version_id),
        ("target", target),
    ):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    if after is not None:
        args.append(after)
        where.append(f"job_id > ${len(args)}")
    args.append(limit)
    sql = "SELECT * FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY job_id LIMIT ${len(args)}"
    rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
    return rows


async def run_summary(
    conn: asyncpg.Connection | asyncpg.Pool, run_id: str, org_id: str | None
) -> dict[str, Any] | None:
    """Counts by status of one run; ``None`` when it has no jobs."""
    rows = await conn.fetch(Q["run_counts"], run_id, org_id)
    if not rows:
        return None
    counts = {status: 0 for status in STATUSES}
    flaky = 0
    for row in rows:
        counts[row["status"]] = int(row["n"])
        flaky += int(row["flaky"] or 0)
    total = sum(counts.values())
    done = sum(counts[s] for s in TERMINAL)
    if done < total:
        status = "running"
    elif counts["passed"] == total:
        status = "passed"
    else:
        status = "failed"
    return {"run_id": run_id, "status": status, "total": total, "counts": counts, "flaky": flaky}


async def agents(conn: asyncpg.Connection | asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await conn.fetch(Q["agents_list"])
    return [
        {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in dict(row).items() if k != "last_seq"}
        for row in rows
    ]


async def metrics(conn: asyncpg.Connection | asyncpg.Pool, org_id: str | None) -> dict[str, Any]:
    """Counts by status and target, queues with their oldest job, retries, flaky
    jobs, installs and agents by state."""
    by_status = {status: 0 for status in STATUSES}
    by_target: dict[str, dict[str, int]] = {}
    retries = flaky = 0
    for row in await conn.fetch(Q["metrics_jobs"], org_id):
        by_status[row["status"]] += int(row["n"])
        by_target.setdefault(row["target"], {})[row["status"]] = int(row["n"])
        retries += int(row["retries"] or 0)
        flaky += int(row["flaky"] or 0)
    now = datetime.now(UTC)
    queues = [
        {
            "app_version_id": r["app_version_id"],
            "target": r["target"],
            "depth": int(r["depth"]),
            "best_priority": r["best_priority"],
            "oldest": _iso(r["oldest"]),
            "oldest_age_s": round((now - r["oldest"]).total_seconds(), 3),
        }
        for r in await conn.fetch(Q["queue_depth"], org_id)
    ]
    installs = await conn.fetchrow(Q["metrics_installs"])
    agents_by_state: dict[str, dict[str, int]] = {}
    for row in await conn.fetch(Q["metrics_agents"]):
        agents_by_state.setdefault(row["target"], {})[row["state"]] = int(row["n"])
    done = int(installs["installs"] or 0) if installs else 0
    return {
        "jobs_by_status": by_status,
        "jobs_by_target": by_target,
        "queues": queues,
        "retries": retries,
        "flaky": flaky,
        "installs": done,
        "installs_avoided": max(0, int(installs["jobs"] or 0) - done) if installs else 0,
        "batches": int(installs["batches"] or 0) if installs else 0,
        "agents_by_state": agents_by_state,
    }


async def duration_estimate(
    conn: asyncpg.Connection | asyncpg.Pool, org_id: str, target: str, test: str
) -> float | None:
    """Milliseconds a test is expected to take on a target: its own mean, else its suite's."""
    value = await conn.fetchval(Q["duration_estimate"], org_id, target, test)
    return None if value is None else float(value)
