"""Dispatch benchmark: how fast a job reaches an idle agent, and how many jobs
per second flow from submit to `passed`.

Measured in one run against real servers, every service its own process:

- dispatch latency: submit (POST /v1/jobs) to JobStarted seen on NATS, p50 and
  p99 over jobs submitted one at a time to idle agents, beside a raw NATS
  request/reply round trip measured in the same run (the floor); twice: each
  job as soon as the last one started (its finish overlaps the next submit),
  and each job once the last one is over (a quiet system);
- throughput: jobs/s from the first submit to the last job `passed` in the
  projections, zero-duration simulated tests, 4 agents; the median of
  ``--rounds`` rounds, as a shared machine's speed drifts between them.

Aims: dispatch p99 <= 10 ms; throughput >= 1,000 jobs/s.
With ``--nats-nodes 3`` it runs on a three-node JetStream cluster with the
stream at 3 replicas, the topology of ``docker-compose.yml``.

Usage: python bench/dispatch.py [--jobs 2000] [--throughput-jobs 8000] [--rounds 3] [--nats-nodes 1|3]
                                [--batches-on-disk]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
import nats
import psutil

from bench.common import Servers, percentile, servers, table, write_json
from bench.loadclient import Connection
from eventstore import EventStore


async def raw_round_trips(url: str, n: int) -> list[float]:
    nc = await nats.connect(url.split(","))

    async def echo(msg) -> None:  # type: ignore[no-untyped-def]
        await msg.respond(msg.data)

    await nc.subscribe("bench.echo", cb=echo)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await nc.request("bench.echo", b"x" * 300, timeout=5)
        out.append((time.perf_counter() - t) * 1000)
    await nc.close()
    return out


async def dispatch_latencies(s: Servers, url: str, token: str, n: int, *, settle: bool = False) -> list[float]:
    """Submit ``n`` jobs one at a time, each once the last one has started.

    With ``settle`` each job is submitted only once the previous one is over
    (its batch finished, and `passed` in the projections), so every job meets
    a quiet system with idle agents; without it the next job's submission
    overlaps the previous one's finish (its result, batch end, projection).
    """
    nc = await nats.connect(s.nats_url.split(","))
    started: dict[str, asyncio.Event] = {}
    seen: dict[str, float] = {}
    finished: asyncio.Queue[None] = asyncio.Queue()
    app = "settled-1.0" if settle else "dispatch-1.0"

    async def on_event(msg) -> None:  # type: ignore[no-untyped-def]
        if b'"type":"JobStarted"' in msg.data:
            job_id = msg.subject.rsplit(".", 1)[1]
            seen[job_id] = time.perf_counter()
            if job_id in started:
                started[job_id].set()
        elif b'"type":"BatchFinished"' in msg.data:
            finished.put_nowait(None)

    token_app = app.replace(".", "%2E")
    await nc.subscribe(f"qgjob.job.{token_app}.>", cb=on_event)
    await nc.subscribe(f"qgjob.batch.{token_app}.>", cb=on_event)
    out = []
    async with Connection(url, token) as conn:
        for i in range(n + 20):
            body = msgspec.json.encode(
                {"org_id": "acme", "app_version_id": app, "test": f"t/{i}.spec.js", "target": "emulator"}
            )
            t = time.perf_counter()
            status, answer = await conn.request("POST", "/v1/jobs", body)
            if status != 201:
                raise RuntimeError(f"submit failed: {status} {answer[:200]!r}")
            job_id = msgspec.json.decode(answer)["job_id"]
            if job_id not in seen:
                started[job_id] = asyncio.Event()
                await asyncio.wait_for(started[job_id].wait(), 10)
            if i >= 20:  # the first ones warm up caches and install the build
                out.append((seen[job_id] - t) * 1000)
            if settle:
                await asyncio.wait_for(finished.get(), 10)
                while (await job_status(conn, job_id)) != "passed":
                    await asyncio.sleep(0.001)
    await nc.close()
    return out


async def job_status(conn: Connection, job_id: str) -> str:
    _status, answer = await conn.request("GET", f"/v1/jobs/{job_id}")
    return str(msgspec.json.decode(answer)["status"])


async def passed_now(conn: Connection) -> int:
    _status, answer = await conn.request("GET", "/v1/metrics")
    return int(msgspec.json.decode(answer)["jobs_by_status"]["passed"])


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by each role's server and service processes.

    A process's reaped children count with it (``children_user``,
    ``children_system``), so a Postgres backend that exits during the run
    still counts, through the postmaster that reaped it.
    """
    out: dict[str, float] = {}
    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "nats-server" in cmd:
            role = "nats"
        elif "postgres" in cmd:
            role = "postgres"
        elif " serve " in cmd or " agent " in cmd:
            role = cmd.split(" serve ", 1)[-1].split()[0] if " serve " in cmd else "agents"
        else:
            continue
        t = proc.info["cpu_times"]
        if t is not None:
            out[role] = out.get(role, 0.0) + t.user + t.system + t.children_user + t.children_system
    return out


async def throughput(url: str, token: str, n: int, cpu: dict[str, float] | None = None) -> float:
    before = cpu_seconds()
    try:
        return await _throughput(url, token, n)
    finally:
        if cpu is not None:
            for role, seconds in cpu_seconds().items():
                cpu[role] = (seconds - before.get(role, 0.0)) * 1000 / n


async def _throughput(url: str, token: str, n: int) -> float:
    async with Connection(url, token) as conn:
        before = await passed_now(conn)
        start = time.perf_counter()
        for r in range(0, n, 1000):
            body = msgspec.json.encode(
                {
                    "org_id": "acme",
                    "app_version_id": f"flow-{r // 1000 % 4}.0",
                    "target": "emulator",
                    "jobs": [{"test": f"t/{r + i}.spec.js"} for i in range(min(1000, n - r))],
                }
            )
            status, answer = await conn.request("POST", "/v1/jobs", body)
            if status != 201:
                raise RuntimeError(f"submit failed: {status} {answer[:200]!r}")
        while True:
            passed = await passed_now(conn) - before
            if passed >= n:
                return n / (time.perf_counter() - start)
            if time.perf_counter() - start > 600:
                raise RuntimeError(f"only {passed} of {n} passed")
            await asyncio.sleep(0.05)


async def breakdown(url: str) -> None:
    """Where the dispatch time goes, from the stream's own timestamps."""
    store = await EventStore.connect(url)
    times: dict[str, dict[str, float]] = {}
    async for rec in store.read(store.subjects.jobs("dispatch-1.0")):
        if rec.time is not None:
            times.setdefault(rec.subject, {})[type(rec.event).__name__] = rec.time.timestamp()
    await store.close()
    gaps: dict[str, list[float]] = {"submitted->assigned": [], "assigned->started": []}
    for t in times.values():
        if {"JobSubmitted", "JobAssigned", "JobStarted"} <= set(t):
            gaps["submitted->assigned"].append((t["JobAssigned"] - t["JobSubmitted"]) * 1000)
            gaps["assigned->started"].append((t["JobStarted"] - t["JobAssigned"]) * 1000)
    for name, values in gaps.items():
        print(f"{name}: p50 {percentile(values, 50):.2f} ms, p99 {percentile(values, 99):.2f} ms", file=sys.stderr)


async def main(args: argparse.Namespace) -> None:
    with servers(nats_nodes=args.nats_nodes, stage_in_memory=not args.batches_on_disk) as s:
        token = await s.admin_token()
        url = s.start_api(1)
        s.start("serve", "projector", "--log-level", "warning")
        s.start("serve", "scheduler", "--log-level", "warning")
        for n in range(4):
            s.start(
                "agent", "--target", "emulator", "--name", f"emu-{n}", "--test-seconds", "0",
                "--install-seconds", "0", "--log-level", "warning",
            )  # fmt: skip
        await asyncio.sleep(2)
        raw = await raw_round_trips(s.nats_url, args.jobs)
        lat = await dispatch_latencies(s, url, token, args.jobs)
        quiet = await dispatch_latencies(s, url, token, args.jobs, settle=True)
        if args.breakdown:
            await breakdown(s.nats_url)
        before = cpu_seconds()
        rounds = [
            await throughput(url, token, args.throughput_jobs)
            for _ in range(args.rounds if args.throughput_jobs else 0)
        ]
        flow = statistics.median(rounds) if rounds else float("nan")
        jobs = args.throughput_jobs * len(rounds)
        cpu = {role: (t - before.get(role, 0.0)) * 1000 / jobs for role, t in cpu_seconds().items()} if jobs else {}

    rows = [
        ("raw NATS request/reply p50", f"{percentile(raw, 50):.2f} ms", "floor"),
        ("raw NATS request/reply p99", f"{percentile(raw, 99):.2f} ms", "floor"),
        (f"dispatch submit->JobStarted p50 ({len(lat)} jobs)", f"{percentile(lat, 50):.2f} ms", ""),
        (f"dispatch submit->JobStarted p99 ({len(lat)} jobs)", f"{percentile(lat, 99):.2f} ms", "<= 10 ms"),
        (f"same, each job into a quiet system p50 ({len(quiet)} jobs)", f"{percentile(quiet, 50):.2f} ms", ""),
        (f"same, each job into a quiet system p99 ({len(quiet)} jobs)", f"{percentile(quiet, 99):.2f} ms", "<= 10 ms"),
        (
            f"end-to-end throughput, 4 agents ({args.throughput_jobs} jobs), median of {len(rounds)}",
            f"{flow:,.0f} jobs/s",
            ">= 1,000 jobs/s",
        ),
        ("... each round", " / ".join(f"{r:,.0f}" for r in rounds), ""),
    ]
    rows += [
        (f"CPU per job during the throughput rounds: {role}", f"{ms:.2f} ms", "") for role, ms in sorted(cpu.items())
    ]
    topology = "one NATS server" if args.nats_nodes == 1 else f"{args.nats_nodes}-node NATS cluster, 3 replicas"
    if args.nats_nodes == 1:
        topology += ", atomic batches staged " + ("on disk" if args.batches_on_disk else "in memory")
    print(table(f"qgjob dispatch benchmark ({topology})", rows))
    path = write_json(
        "dispatch" if args.nats_nodes == 1 else "dispatch-cluster",
        {
            "raw_rtt_p50_ms": percentile(raw, 50),
            "raw_rtt_p99_ms": percentile(raw, 99),
            "dispatch_p50_ms": percentile(lat, 50),
            "dispatch_p99_ms": percentile(lat, 99),
            "dispatch_quiet_p50_ms": percentile(quiet, 50),
            "dispatch_quiet_p99_ms": percentile(quiet, 99),
            "throughput_jobs_per_s": flow,
            "throughput_rounds_jobs_per_s": rounds,
            "cpu_ms_per_job": cpu,
            "params": vars(args),
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000, help="jobs submitted one at a time for the latency")
    parser.add_argument("--throughput-jobs", type=int, default=8000, help="jobs for the throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds, 0 for none; the median is reported")
    parser.add_argument("--nats-nodes", type=int, choices=(1, 3), default=1, help="one NATS server, or a cluster of 3")
    parser.add_argument(
        "--batches-on-disk", action="store_true", help="stage atomic batches on disk (the server's default)"
    )
    parser.add_argument("--breakdown", action="store_true", help="also print where the dispatch time goes")
    asyncio.run(main(parser.parse_args()))
