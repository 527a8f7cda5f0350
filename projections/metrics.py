"""Metrics of the read side: the projector's own, and the queue's state read
from the projections when ``/metrics`` is scraped."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from eventstore import EventStore
from projections.schema import queries

Q = queries()

EVENTS_APPLIED = Counter("qgjob_projector_events_applied", "Events folded into the projections by this process")
APPLY_SECONDS = Histogram(
    "qgjob_projector_batch_seconds",
    "Time to apply one fetched batch of events and its checkpoint in one transaction",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


async def lag(pool: asyncpg.Pool, store: EventStore) -> tuple[int, float]:
    """Events stored but not yet projected, and the age of the oldest of them."""
    done, last = await asyncio.gather(pool.fetchval(Q["checkpoint_get"], "main"), store.last_seq())
    done = int(done or 0)
    events = max(0, last - done)
    behind = await store.stored_at(done + 1) if events else None
    return events, max(0.0, (datetime.now(UTC) - behind).total_seconds()) if behind is not None else 0.0


async def snapshot(pool: asyncpg.Pool, store: EventStore) -> dict[str, Any]:
    """The figures ``/metrics`` reports from the projections, read concurrently."""
    jobs, queues, agents, installs, (lag_events, lag_s) = await asyncio.gather(
        pool.fetch(Q["metrics_jobs"], None),
        pool.fetch(Q["queue_depth"], None),
        pool.fetch(Q["metrics_agents"]),
        pool.fetchrow(Q["metrics_installs"]),
        lag(pool, store),
    )
    return {
        "jobs": [dict(r) for r in jobs],
        "queues": [dict(r) for r in queues],
        "agents": [dict(r) for r in agents],
        "installs": int(installs["installs"] or 0),
        "installs_avoided": max(0, int(installs["jobs"] or 0) - int(installs["installs"] or 0)),
        "lag_events": lag_events,
        "lag_s": lag_s,
        "now": datetime.now(UTC),
    }


def families(data: dict[str, Any]) -> list[Metric]:
    """Prometheus metric families of a :func:`snapshot`."""
    jobs = GaugeMetricFamily("qgjob_jobs", "Jobs by status and target (projections)", labels=["status", "target"])
    retries = CounterMetricFamily(
        "qgjob_job_retries", "Attempts after the first, over every job, by target", labels=["target"]
    )
    flaky = CounterMetricFamily("qgjob_jobs_flaky", "Jobs that passed after a failure, by target", labels=["target"])
    per_target: dict[str, list[int]] = {}
    for row in data["jobs"]:
        jobs.add_metric([row["status"], row["target"]], row["n"])
        sums = per_target.setdefault(row["target"], [0, 0])
        sums[0] += int(row["retries"] or 0)
        sums[1] += int(row["flaky"] or 0)
    for target, (r, f) in sorted(per_target.items()):
        retries.add_metric([target], r)
        flaky.add_metric([target], f)
    depth = GaugeMetricFamily(
        "qgjob_queue_depth", "Jobs waiting per (app_version_id, target) group", labels=["app_version_id", "target"]
    )
    oldest = GaugeMetricFamily(
        "qgjob_queue_oldest_age_seconds",
        "Age of the oldest waiting job per (app_version_id, target) group",
        labels=["app_version_id", "target"],
    )
    for q in data["queues"]:
        depth.add_metric([q["app_version_id"], q["target"]], q["depth"])
        oldest.add_metric([q["app_version_id"], q["target"]], (data["now"] - q["oldest"]).total_seconds())
    agents = GaugeMetricFamily("qgjob_agents", "Agents by target and state", labels=["target", "state"])
    for a in data["agents"]:
        agents.add_metric([a["target"], a["state"]], a["n"])
    installs = CounterMetricFamily("qgjob_installs", "Builds installed for batches, from the projections")
    installs.add_metric([], data["installs"])
    avoided = CounterMetricFamily(
        "qgjob_installs_avoided", "Test attempts that ran without an install of their own (batched or kept build)"
    )
    avoided.add_metric([], data["installs_avoided"])
    lag_events = GaugeMetricFamily("qgjob_projection_lag_events", "Events stored but not yet projected")
    lag_events.add_metric([], data["lag_events"])
    lag_s = GaugeMetricFamily("qgjob_projection_lag_seconds", "Age of the oldest event not yet projected (0: none)")
    lag_s.add_metric([], data["lag_s"])
    return [jobs, retries, flaky, depth, oldest, agents, installs, avoided, lag_events, lag_s]


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def exposition(data: dict[str, Any]) -> bytes:
    """The projection families in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families(data)))
    return generate_latest(registry)
