"""``qgjob simulate``: read a workload, simulate it under policies, lay out the figures."""

from __future__ import annotations

from pathlib import Path

import msgspec

from scheduler.policy import Config
from scheduler.simulate import POLICIES, Report, decode_workload, simulate


class WorkloadError(ValueError):
    """The workload file cannot be read or is not a workload."""


def run(path: Path, policies: tuple[str, ...] = POLICIES, config: Config | None = None) -> list[Report]:
    """Simulate the workload at ``path`` under each policy, in order
    (``qgjob`` with ``config``, else the scheduler's defaults)."""
    for name in policies:
        if name not in POLICIES:
            raise WorkloadError(f"--policy: {name!r} is not one of {', '.join(POLICIES)}")
    try:
        workload = decode_workload(path.read_bytes())
    except OSError as exc:
        raise WorkloadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise WorkloadError(f"{path} is not a workload: {exc}") from exc
    return [simulate(workload, name, config) for name in policies]


def as_json(reports: list[Report]) -> dict[str, object]:
    first = reports[0]
    return {
        "workload": first.workload,
        "jobs": first.jobs,
        "lower_bound_s": round(first.lower_bound_s, 1),
        "arrival_bound_s": round(first.arrival_bound_s, 1),
        "latency_p50_floor_s": {str(p): round(v, 1) for p, v in sorted(first.latency_floor_s.items())},
        "results": {r.policy: r.as_dict() for r in reports},
    }


def rows(reports: list[Report]) -> list[tuple[str, ...]]:
    """One row per figure, one column per policy."""
    out: list[tuple[str, ...]] = [
        ("installs", *(f"{r.installs:,}" for r in reports)),
        ("batches", *(f"{r.batches:,}" for r in reports)),
        ("makespan", *(f"{r.makespan_s:,.0f} s" for r in reports)),
        ("makespan / lower bound", *(f"{r.makespan_ratio:.3f}" for r in reports)),
    ]
    for priority in sorted({p for r in reports for p in r.latency}):
        for pct in ("p50", "p95"):
            cells = []
            for r in reports:
                lat = r.latency.get(priority)
                cells.append("-" if lat is None else f"{getattr(lat, f'{pct}_s'):,.0f} s")
            out.append((f"run latency {pct}, priority {priority}", *cells))
    for pct in ("p50", "p95", "mean"):
        out.append((f"run latency {pct}, all runs", *(f"{getattr(r.all_runs, f'{pct}_s'):,.0f} s" for r in reports)))
    out.append(("fairness (worst / best org)", *(f"{r.fairness:.2f}" for r in reports)))
    out.append(("utilization", *(f"{r.utilization:.1%}" for r in reports)))
    out.append(("attempts (passed / failed jobs)", *(f"{r.attempts:,} ({r.passed:,} / {r.failed:,})" for r in reports)))
    return out


def table(reports: list[Report]) -> str:
    first = reports[0]
    header = ("", *(r.policy for r in reports))
    body = rows(reports)
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    lines = [
        f"{first.workload}: {first.jobs:,} jobs; lower bound {first.lower_bound_s:,.0f} s "
        f"(with submit times: {first.arrival_bound_s:,.0f} s = {first.arrival_bound_s / first.lower_bound_s:.3f} x)",
        "no schedule's p50 run latency beats: "
        + ", ".join(f"{v:,.0f} s for priority {p}" for p, v in sorted(first.latency_floor_s.items())),
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
    ]
    for row in body:
        lines.append(
            "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])
        )
    return "\n".join(lines)
