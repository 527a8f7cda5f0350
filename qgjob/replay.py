"""``qgjob replay``: rebuild projections from the stream, or verify live ones."""

from __future__ import annotations

from typing import Any

from eventstore import EventStore
from projections import replay
from projections.schema import check_schema_name
from qgjob.settings import Settings


async def run_replay(s: Settings, *, verify: bool, schema: str | None, keep: bool) -> tuple[int, dict[str, Any]]:
    store = await EventStore.connect(s.nats_url, stream=s.stream, prefix=s.prefix, name="qgjob-replay")
    try:
        if verify:
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
        target = check_schema_name(schema or f"{s.schema}_replay")
        if target == s.schema:
            raise ValueError(f"--schema: {target!r} is the live schema; rebuild into another one")
        upto = await replay.rebuild(store, s.database_url, target)
        return 0, {"schema": target, "upto": upto, "lines": [f"rebuilt schema {target} from events 1..{upto}"]}
    finally:
        await store.close()
