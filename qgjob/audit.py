"""Printing the audit trail: one readable line per event, for ``qgjob events`` and ``qgjob tail``."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

# Fields worth a ``name=value`` on a line, in order, with their label.
_FIELDS = (
    ("org_id", "org"),
    ("app_version_id", "app"),
    ("target", "target"),
    ("job_id", "job"),
    ("attempt", "attempt"),
    ("agent_id", "agent"),
    ("batch_id", "batch"),
    ("run_id", "run"),
    ("test", "test"),
    ("duration_ms", "ms"),
)
_QUOTED = ("error", "reason")


def event_line(event: dict[str, Any], *, omit: Collection[str] = ()) -> str:
    """``<time>  #<seq>  <type>  job=... attempt=... agent=... batch=...``, leaving
    out the ids in ``omit`` (those every line of the listing shares)."""
    bits = [str(event.get("at") or event.get("stored") or "-"), f"#{event['seq']}", str(event["type"])]
    for key, label in _FIELDS:
        value = event.get(key)
        if key not in omit and value is not None and value != "":
            bits.append(f"{label}={value}")
    if event["type"] == "BatchAssigned":
        bits.append(f"jobs={len(event.get('jobs') or [])}")
        bits.append(f"install={'yes' if event.get('install') else 'no'}")
    if event["type"] == "JobFailed" and event.get("final"):
        bits.append("final")
    for key in _QUOTED:
        if event.get(key):
            bits.append(f"{key}={event[key]!r}")
    return "  ".join(bits)


ONE_JOB = ("org_id", "app_version_id", "target", "job_id")
ONE_RUN = ("org_id", "app_version_id", "target", "run_id")
