"""Scheduling benchmark: the policy core against the baselines, in virtual time.

Runs ``ci-day`` (``../shared/workloads/``) and the generated workloads in
``bench/workloads/`` under ``qgjob``, ``fifo`` and ``per-job-install``, prints
one table per workload (qgjob's figure, the baselines' and the aim) and writes
``bench/results/simulate.json``.

Aims on ci-day (fifo's figures from ``../shared/workloads/README.md``): installs
<= 0.35 x fifo's 406; makespan <= 1.08 x lower bound; run latency p50 <= 0.5 x
fifo's for priority 1 and <= 0.8 x for priority 5; fairness <= 1.5. On the
other workloads: better than fifo.

Then, per workload, the trade an operator makes with the scheduler's
``--install-value`` (``policy.Config.install_value_s``): installs against run
latency, at a few settings, beside fifo.

Usage: python bench/simulate.py [--write-workloads] [WORKLOAD.json ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import table, write_json
from scheduler.policy import Config
from scheduler.simulate import POLICIES, Report, Workload, decode_workload, encode_workload, simulate
from scheduler.workloads import SHAPES, generate

HERE = Path(__file__).resolve().parent
CI_DAY = HERE.parent.parent / "shared" / "workloads" / "ci-day.json"
OURS = HERE / "workloads"
# ci-day's fifo figures as ../shared/workloads/README.md gives them
README_FIFO = {"installs": 406, "p50_1": 1289.0, "p50_5": 4427.0}


def _aims(workload: Workload, fifo: Report) -> dict[str, str]:
    if workload.name == "ci-day":
        return {
            "installs": f"<= {0.35 * README_FIFO['installs']:.0f}",
            "makespan / lower bound": "<= 1.08",
            "p50 1": f"<= {0.5 * README_FIFO['p50_1']:,.0f} s",
            "p50 5": f"<= {0.8 * README_FIFO['p50_5']:,.0f} s",
            "fairness": "<= 1.5",
        }
    aims = {"installs": f"< {fifo.installs:,}", "fairness": f"< {fifo.fairness:.2f}"}
    for priority, lat in fifo.latency.items():
        aims[f"p50 {priority}"] = f"< {lat.p50_s:,.0f} s"
    return aims


def _rows(reports: dict[str, Report], aims: dict[str, str], elapsed: float) -> list[tuple[str, str, str]]:
    q, f, p = reports["qgjob"], reports["fifo"], reports["per-job-install"]

    def ref(fifo: str, per_job: str, aim: str | None) -> str:
        text = f"fifo {fifo}, per-job-install {per_job}"
        return f"{text}; aim {aim}" if aim else text

    rows = [
        ("installs", f"{q.installs:,}", ref(f"{f.installs:,}", f"{p.installs:,}", aims.get("installs"))),
        (
            "makespan / lower bound",
            f"{q.makespan_ratio:.3f}",
            ref(f"{f.makespan_ratio:.3f}", f"{p.makespan_ratio:.3f}", aims.get("makespan / lower bound"))
            + f"; with submit times no schedule beats {q.arrival_bound_s / q.lower_bound_s:.3f}",
        ),
    ]
    for priority in sorted(q.latency):
        for pct in ("p50", "p95"):
            key = f"{pct}_s"
            rows.append(
                (
                    f"run latency {pct}, priority {priority}",
                    f"{getattr(q.latency[priority], key):,.0f} s",
                    ref(
                        f"{getattr(f.latency[priority], key):,.0f} s",
                        f"{getattr(p.latency[priority], key):,.0f} s",
                        aims.get(f"p50 {priority}") if pct == "p50" else None,
                    )
                    + (f"; no schedule beats {q.latency_floor_s[priority]:,.0f} s" if pct == "p50" else ""),
                )
            )
    for pct in ("p50", "p95", "mean"):
        key = f"{pct}_s"
        rows.append(
            (
                f"run latency {pct}, all runs",
                f"{getattr(q.all_runs, key):,.0f} s",
                ref(f"{getattr(f.all_runs, key):,.0f} s", f"{getattr(p.all_runs, key):,.0f} s", None),
            )
        )
    rows += [
        (
            "fairness (worst / best org)",
            f"{q.fairness:.2f}",
            ref(f"{f.fairness:.2f}", f"{p.fairness:.2f}", aims.get("fairness")),
        ),
        ("utilization", f"{q.utilization:.1%}", ref(f"{f.utilization:.1%}", f"{p.utilization:.1%}", None)),
        ("simulation time (qgjob)", f"{elapsed:.2f} s", "aim < 10 s for ci-day"),
    ]
    return rows


INSTALL_VALUES = (0.0, 120.0, 270.0, 400.0)  # seconds; 0 is the default


def _trade_off(workload: Workload, default: Report, fifo: Report) -> tuple[str, list[dict[str, object]]]:
    """qgjob at each of ``INSTALL_VALUES`` (``default``: its run at the
    default, already simulated), and fifo: installs against latency."""
    priorities = sorted(fifo.latency)
    header = ("install value", "installs", *(f"p50 prio {p}" for p in priorities), "fairness", "makespan / lb")
    lines: list[tuple[str, ...]] = []
    records: list[dict[str, object]] = []
    for value in INSTALL_VALUES:
        r = default if value == Config().install_value_s else simulate(workload, "qgjob", Config(install_value_s=value))
        records.append({"install_value_s": value, **r.as_dict()})
        lines.append(_trade_row(f"{value:,.0f} s", r, priorities))
    lines.append(_trade_row("fifo", fifo, priorities))
    widths = [max(len(row[i]) for row in (header, *lines)) for i in range(len(header))]
    text = [f"{workload.name}: --install-value, installs against run latency"]
    for row in (header, *lines):
        text.append(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
    return "\n".join(text), records


def _trade_row(label: str, r: Report, priorities: list[int]) -> tuple[str, ...]:
    latency = (f"{r.latency[p].p50_s:,.0f} s" if p in r.latency else "-" for p in priorities)
    return (label, f"{r.installs:,}", *latency, f"{r.fairness:.2f}", f"{r.makespan_ratio:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", type=Path, help="default: ci-day and bench/workloads/*.json")
    parser.add_argument("--write-workloads", action="store_true", help="regenerate bench/workloads/ first")
    args = parser.parse_args()
    if args.write_workloads:
        OURS.mkdir(exist_ok=True)
        for shape in SHAPES:
            (OURS / f"{shape.name}.json").write_bytes(encode_workload(generate(shape)) + b"\n")
    paths = args.workloads or [p for p in (CI_DAY, *sorted(OURS.glob("*.json"))) if p.exists()]
    results: dict[str, object] = {}
    for path in paths:
        workload = decode_workload(path.read_bytes())
        reports: dict[str, Report] = {}
        elapsed = 0.0
        for name in POLICIES:
            started = time.perf_counter()
            reports[name] = simulate(workload, name)
            if name == "qgjob":
                elapsed = time.perf_counter() - started
        q = reports["qgjob"]
        title = (
            f"\n{workload.name}: {len(workload.jobs):,} jobs, {len(workload.agents)} agents; "
            f"lower bound {q.lower_bound_s:,.0f} s"
        )
        print(table(title, _rows(reports, _aims(workload, reports["fifo"]), elapsed)))
        trade, records = _trade_off(workload, reports["qgjob"], reports["fifo"])
        print(f"\n{trade}")
        results[workload.name] = {
            "path": str(path),
            "qgjob_seconds": round(elapsed, 3),
            "aims": _aims(workload, reports["fifo"]),
            **{name: r.as_dict() for name, r in reports.items()},
            "install_value": records,
        }
    out = write_json("simulate", {"workloads": results})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
