"""``qgjob replay``: rebuild projections from the stream, or verify live ones.

``--until`` rebuilds the projections as they stood at a past moment: after a
stream sequence, or after the last event JetStream stored at or before a time.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

from eventstore import EventStore
from projections import replay
from projections.schema import check_schema_name
from qgjob.settings import Settings

UNTIL_FORMS = (
    "allowed: a stream sequence (an integer >= 0) or an ISO 8601 time such as "
    "2025-01-31T14:03:00Z, 2025-01-31T16:03+02:00, 2025-01-31 14:03 or 14:03 "
    "(without a zone: local time; a time alone: today)"
)


def parse_until(text: str) -> int | datetime:
    """A stream sequence, or an aware UTC time, from ``--until``'s value.

    A time without a zone is local time; a time of day alone is today's.
    """
    value = text.strip()
    if value.isdigit():
        return int(value)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        try:
            when = datetime.combine(date.today(), time.fromisoformat(value))
        except ValueError:
            raise ValueError(f"--until: {text!r} is not a sequence or a time; {UNTIL_FORMS}") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, the machine's zone
    return when.astimezone(UTC)


def _plan(s: Settings, *, verify: bool, schema: str | None, until: str | None) -> tuple[str, int | datetime | None]:
    """Check the flags before touching a server: the schema to rebuild into and where to cut."""
    cut = parse_until(until) if until is not None else None
    if verify:
        if cut is not None:
            raise ValueError(
                "--until cannot be combined with --verify: --verify compares a full rebuild with the live projections"
            )
        return f"{s.schema}_verify", None
    target = check_schema_name(schema or f"{s.schema}_replay")
    if target == s.schema:
        raise ValueError(f"--schema: {target!r} is the live schema; rebuild into another one")
    if target == "public":
        raise ValueError("--schema: 'public' is refused: the rebuild drops and recreates the schema it writes")
    return target, cut


async def run_replay(
    s: Settings, *, verify: bool, schema: str | None, keep: bool, until: str | None = None
) -> tuple[int, dict[str, Any]]:
    target, cut = _plan(s, verify=verify, schema=schema, until=until)
    store = await EventStore.connect(s.nats_url, stream=s.stream, prefix=s.prefix, name="qgjob-replay")
    try:
        if verify:
            return await _verify(store, s, keep=keep)
        until_seq = await store.last_seq_at(cut) if isinstance(cut, datetime) else cut
        upto = await replay.rebuild(store, s.database_url, target, until_seq=until_seq)
        line = f"rebuilt schema {target} from events 1..{upto}" if upto else f"rebuilt schema {target}: no events"
        report: dict[str, Any] = {"schema": target, "upto": upto, "lines": [line]}
        if cut is not None:
            report["until"] = _iso(cut) if isinstance(cut, datetime) else cut
            report["lines"].append(f"schema {target} holds the projections as of {report['until']}")
        return 0, report
    finally:
        await store.close()


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


async def _verify(store: EventStore, s: Settings, *, keep: bool) -> tuple[int, dict[str, Any]]:
    upto, diffs = await replay.verify(store, s.database_url, s.schema, keep=keep)
    lines = [f"replayed events 1..{upto} into {s.schema}_verify and compared with {s.schema}"]
    lines += [d.describe() for d in diffs]
    lines.append(f"{len(diffs)} row(s) differ" if diffs else "no differences: the projections match the stream")
    report = {
        "upto": upto,
        "differences": [
            {
                "table": d.table,
                "key": d.key,
                "problem": d.problem,
                "columns": {c: [str(a), str(b)] for c, (a, b) in d.columns.items()},
            }
            for d in diffs
        ],
        "lines": lines,
    }
    return (1 if diffs else 0), report
