"""Ingest benchmark: how fast jobs get in, and how fast a status read is.

Measured in one run against real servers, with the API and projector as their
own processes:

(a) raw JetStream publish of the same JobSubmitted payloads from Python
    (32 concurrent publishers, each awaiting its ack): the reference;
(b) single-job POST /v1/jobs with 32 concurrent clients;
(c) bulk POST /v1/jobs in 1,000-job requests, jobs per second;
(d) GET /v1/jobs/{id} p50 and p99 with 100,000 jobs in the projections.

Aims: (c) >= 0.5 x (a); (b) >= 2,000 jobs/s; (d) p99 <= 10 ms.
Usage: python bench/ingest.py [--jobs 100000] [--single 4000] [--api-workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import msgspec
import nats

from bench.common import Servers, percentile, servers, table, write_json
from bench.loadclient import Connection
from eventstore import EventStore
from eventstore.events import JobSubmitted, encode_event
from eventstore.ids import new_id

CONCURRENCY = 32


async def raw_publish(s: Servers, n: int) -> float:
    """Jobs/s publishing the JobSubmitted payload straight to JetStream."""
    store = await EventStore.connect(s.nats_url, stream="RAWBENCH", prefix="rawbench")
    await store.ensure_stream()
    nc = await nats.connect(s.nats_url)
    js = nc.jetstream()
    payloads = [
        (
            store.subjects.job("bench-1.0", "emulator", "acme", job_id := new_id("job")),
            encode_event(
                JobSubmitted(
                    job_id=job_id,
                    org_id="acme",
                    app_version_id="bench-1.0",
                    test=f"tests/spec_{i}.spec.js",
                    target="emulator",
                    run_id="raw",
                )
            ),
        )
        for i in range(n)
    ]
    queue = iter(payloads)

    async def worker() -> None:
        for subject, data in queue:
            await js.publish(subject, data)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - start
    await js.delete_stream("RAWBENCH")
    await nc.close()
    await store.close()
    return n / elapsed


async def single_posts(url: str, token: str, n: int) -> float:
    counter = iter(range(n))

    async def worker() -> None:
        async with Connection(url, token) as conn:
            for i in counter:
                body = msgspec.json.encode(
                    {
                        "org_id": "acme",
                        "app_version_id": "single-1.0",
                        "test": f"tests/single_{i}.spec.js",
                        "target": "emulator",
                    }
                )
                status, answer = await conn.request("POST", "/v1/jobs", body)
                if status != 201:
                    raise RuntimeError(f"single submit failed: {status} {answer[:200]!r}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return n / (time.perf_counter() - start)


async def bulk_posts(url: str, token: str, requests: int, offset: int) -> tuple[float, list[str]]:
    """Jobs/s submitting 1,000-job requests one after another."""
    ids: list[str] = []
    bodies = [
        msgspec.json.encode(
            {
                "org_id": "acme",
                "app_version_id": f"bulk-{(offset + r) % 20}.0",
                "target": ("emulator", "device", "browserstack")[r % 3],
                "jobs": [{"test": f"tests/bulk_{offset + r}_{i}.spec.js"} for i in range(1000)],
            }
        )
        for r in range(requests)
    ]
    answers = []
    async with Connection(url, token) as conn:
        start = time.perf_counter()
        for body in bodies:
            status, answer = await conn.request("POST", "/v1/jobs", body)
            if status != 201:
                raise RuntimeError(f"bulk submit failed: {status} {answer[:200]!r}")
            answers.append(answer)
        elapsed = time.perf_counter() - start
    for answer in answers:
        ids.extend(j["job_id"] for j in msgspec.json.decode(answer)["jobs"])
    return requests * 1000 / elapsed, ids


async def wait_projected(url: str, token: str, total: int, timeout: float = 600) -> float:
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {token}"}) as client:
        while time.perf_counter() - start < timeout:
            m = (await client.get("/v1/metrics")).json()
            if sum(m["jobs_by_status"].values()) >= total and m["projection_lag"] == 0:
                return time.perf_counter() - start
            await asyncio.sleep(0.5)
    raise RuntimeError("projections did not catch up")


async def reads(url: str, token: str, ids: list[str], n: int) -> list[float]:
    """Status reads from 4 concurrent clients; per-request latency in ms."""
    sample = random.Random(7).choices(ids, k=n)
    latencies: list[float] = []
    it = iter(sample)

    async def worker() -> None:
        async with Connection(url, token) as conn:
            for job_id in it:
                t = time.perf_counter()
                status, _ = await conn.request("GET", f"/v1/jobs/{job_id}")
                latencies.append((time.perf_counter() - t) * 1000)
                if status != 200:
                    raise RuntimeError(f"read failed: {status}")

    await asyncio.gather(*(worker() for _ in range(4)))
    return latencies


async def main(args: argparse.Namespace) -> None:
    with servers() as s:
        token = await s.admin_token()
        url = s.start_api(args.api_workers)
        s.start("serve", "projector", "--log-level", "warning")

        raw = await raw_publish(s, args.raw)
        single = await single_posts(url, token, args.single)
        bulk_requests = max(1, args.bulk_requests)
        bulk, ids = await bulk_posts(url, token, bulk_requests, 0)
        remaining = max(0, args.jobs - args.single - len(ids))
        if remaining:
            _, more = await bulk_posts(url, token, remaining // 1000, bulk_requests)
            ids.extend(more)
        total = args.single + len(ids)
        catch_up = await wait_projected(url, token, total)
        latencies = await reads(url, token, ids, args.reads)

    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    rows = [
        ("(a) raw JetStream publish, 32 concurrent", f"{raw:,.0f} jobs/s", "reference"),
        ("(b) POST /v1/jobs single, 32 clients", f"{single:,.0f} jobs/s", ">= 2,000 jobs/s"),
        ("(c) POST /v1/jobs bulk, 1,000 per request", f"{bulk:,.0f} jobs/s", f">= {raw / 2:,.0f} (0.5 x a)"),
        ("(c) / (a)", f"{bulk / raw:.2f}", ">= 0.50"),
        (f"(d) GET /v1/jobs/id p50, {total:,} jobs", f"{p50:.2f} ms", ""),
        (f"(d) GET /v1/jobs/id p99, {total:,} jobs", f"{p99:.2f} ms", "<= 10 ms"),
        ("projector catch-up after the last submit", f"{catch_up:.1f} s", ""),
    ]
    print(table("qgjob ingest benchmark", rows))
    path = write_json(
        "ingest",
        {
            "raw_publish_jobs_per_s": raw,
            "single_post_jobs_per_s": single,
            "bulk_post_jobs_per_s": bulk,
            "bulk_over_raw": bulk / raw,
            "read_p50_ms": p50,
            "read_p99_ms": p99,
            "jobs_in_projection": total,
            "projector_catch_up_s": catch_up,
            "params": vars(args),
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs in the projections for (d)")
    parser.add_argument("--raw", type=int, default=20_000, help="messages for (a)")
    parser.add_argument("--single", type=int, default=4_000, help="single submits for (b)")
    parser.add_argument("--bulk-requests", type=int, default=20, help="1,000-job requests timed for (c)")
    parser.add_argument("--reads", type=int, default=4_000, help="status reads for (d)")
    parser.add_argument("--api-workers", type=int, default=1, help="API processes sharing the port")
    asyncio.run(main(parser.parse_args()))
