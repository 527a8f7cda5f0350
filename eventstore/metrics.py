"""Append latency, fed by :attr:`EventStore.on_append` (services only: this needs prometheus-client)."""

from __future__ import annotations

from prometheus_client import Histogram

from eventstore.store import EventStore

APPEND_SECONDS = Histogram(
    "qgjob_eventstore_append_seconds",
    "Time from sending an append to its JetStream acknowledgement; kind=atomic is a whole atomic batch",
    ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)


def install() -> None:
    """Record every acknowledged append of this process."""
    EventStore.on_append = lambda kind, seconds: APPEND_SECONDS.labels(kind=kind).observe(seconds)
