"""Scrape benchmark: how long `GET /metrics` takes with 100,000 jobs in the projections.

Loads the jobs through the API in 1,000-job requests (20 builds x 3 targets),
lets simulated agents take a share of them to an end for ``--run-seconds`` so
several statuses are counted, stops them, waits until the projector has
everything, then times scrapes of
`/metrics` and `GET /v1/metrics` one after another, beside `GET /healthz`
(the HTTP floor) measured in the same run.

Aim: a /metrics scrape under 50 ms.
Usage: python bench/metrics.py [--jobs 100000] [--scrapes 50]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentile, servers, table, write_json
from bench.ingest import bulk_posts, wait_projected
from bench.loadclient import Connection


async def timed(url: str, token: str, path: str, n: int) -> list[float]:
    out = []
    async with Connection(url, token) as conn:
        for _ in range(n + 3):
            t = time.perf_counter()
            status, body = await conn.request("GET", path)
            out.append((time.perf_counter() - t) * 1000)
            if status != 200:
                raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
    return out[3:]  # the first ones warm caches


async def main(args: argparse.Namespace) -> None:
    with servers() as s:
        token = await s.admin_token()
        url = s.start_api(1)
        s.start("serve", "projector", "--log-level", "warning")
        s.start("serve", "scheduler", "--log-level", "warning")
        quick = ("--test-seconds", "0", "--install-seconds", "0", "--log-level", "warning")
        agents = [s.start("agent", "--target", target, *quick) for target in ("emulator", "device")]
        await bulk_posts(url, token, args.jobs // 1000, 0)
        await asyncio.sleep(args.run_seconds)  # agents take some of the jobs to an end: several statuses to count
        for agent in agents:
            agent.terminate()
            agent.wait(30)
        await wait_projected(url, token, args.jobs)
        health = await timed(url, token, "/healthz", args.scrapes)
        scrape = await timed(url, token, "/metrics", args.scrapes)
        json_view = await timed(url, token, "/v1/metrics", args.scrapes)

    rows = [
        ("GET /healthz p50 (reference)", f"{percentile(health, 50):.2f} ms", "HTTP floor"),
        (f"GET /metrics p50 ({args.jobs:,} jobs)", f"{percentile(scrape, 50):.2f} ms", "< 50 ms"),
        (f"GET /metrics p99 ({args.jobs:,} jobs)", f"{percentile(scrape, 99):.2f} ms", "< 50 ms"),
        ("GET /metrics p50 / GET /healthz p50", f"{percentile(scrape, 50) / percentile(health, 50):.1f}x", ""),
        (f"GET /v1/metrics p50 ({args.jobs:,} jobs)", f"{percentile(json_view, 50):.2f} ms", ""),
    ]
    print(table("qgjob metrics scrape benchmark", rows))
    path = write_json(
        "metrics",
        {
            "healthz_p50_ms": percentile(health, 50),
            "metrics_p50_ms": percentile(scrape, 50),
            "metrics_p99_ms": percentile(scrape, 99),
            "v1_metrics_p50_ms": percentile(json_view, 50),
            "params": vars(args),
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs in the projections (a multiple of 1,000)")
    parser.add_argument("--scrapes", type=int, default=50, help="timed requests of each kind")
    parser.add_argument("--run-seconds", type=float, default=10.0, help="how long agents run jobs before the scrapes")
    asyncio.run(main(parser.parse_args()))
