"""``qgjob demo``: a fresh stack, a sample suite, a report.

The suite covers two app versions on two targets with one priority-1 job, one
flaky test (fails once, then passes) and one failing test (fails every
attempt). The demo exits 0 when every job ended as designed.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qgjob.client import Client
from qgjob.services import run as run_services
from qgjob.services import run_until_signalled
from qgjob.stack.embedded import EmbeddedStack, StackOptions
from qgjob.watch import wait

EXAMPLES = "examples"  # specs/ pass (one is flaky); specs-failing/ fails


@dataclass(frozen=True)
class DemoGroup:
    app_version_id: str
    target: str
    tests: tuple[str, ...]
    priority: int = 5


SUITE = (
    DemoGroup(
        "2.4.0",
        "emulator",
        ("specs/login.spec.js", "specs/checkout.spec.js", "specs/search.spec.js", "specs/onboarding_flaky.spec.js"),
    ),
    DemoGroup(
        "2.4.0", "device", ("specs/login.spec.js", "specs-failing/payments_fail.spec.js", "specs/profile.spec.js")
    ),
    DemoGroup("2.5.0-rc.1", "emulator", ("specs/login.spec.js", "specs/search.spec.js", "specs/profile.spec.js")),
    DemoGroup("2.5.0-rc.1", "emulator", ("specs/smoke.spec.js",), priority=1),
    DemoGroup("2.5.0-rc.1", "device", ("specs/checkout.spec.js", "specs/search.spec.js")),
)


def expected_status(test: str) -> tuple[str, bool]:
    """What the simulate runner's rules promise for a test: (status, flaky)."""
    if "fail" in test:
        return "failed", False
    if "flaky" in test:
        return "passed", True
    return "passed", False


def run_demo(data_dir: Path | None = None, *, test_seconds: float = 0.3, install_seconds: float = 1.0) -> int:
    folder = data_dir or Path(tempfile.mkdtemp(prefix="qgjob-demo-"))
    fresh = data_dir is None
    stack = EmbeddedStack(
        folder,
        StackOptions(
            api_port=0,
            agents_per_target=1,
            test_seconds=test_seconds,
            install_seconds=install_seconds,
            durable=False,
            retry_backoff_s=0.2,
        ),
    )
    print(f"Starting an embedded stack in {folder} ...", flush=True)
    stack.lock()
    try:
        nats_url, dsn, api_port = stack.start_servers()
        try:
            creds = asyncio.run(stack.bootstrap(nats_url, dsn, api_port))
            services = stack.services()
            outcome: dict[str, int] = {}

            async def drive() -> None:
                while not services[2].started:
                    await asyncio.sleep(0.02)
                outcome["code"] = await asyncio.to_thread(_drive, creds.url, creds.token)
                raise _Done()

            try:
                run_services(run_until_signalled(services, on_ready=drive))
            except _Done:
                pass
            return outcome.get("code", 3)
        finally:
            stack.stop_servers()
    finally:
        stack.unlock()
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)


class _Done(Exception):
    """The demo finished; stop the stack."""


def _drive(url: str, token: str) -> int:
    with Client(url, token) as client:
        run_id = f"demo-{int(time.time())}"
        ids: list[str] = []
        for group in SUITE:
            body = {
                "org_id": "demo",
                "app_version_id": group.app_version_id,
                "target": group.target,
                "priority": group.priority,
                "run_id": run_id,
                "jobs": [{"test": f"{EXAMPLES}/{t}"} for t in group.tests],
            }
            _, answer = client.submit(body)
            for job in answer["jobs"]:
                ids.append(job["job_id"])
                print(
                    f"Job submitted! ID: {job['job_id']} | Status: {job['status']} | "
                    f"{group.app_version_id}/{group.target} p{group.priority} {job['test']}",
                    flush=True,
                )

        def show(job: dict[str, Any], before: str | None) -> None:
            if before is not None:
                print(f"Job {job['job_id']} -> {job['status']}  ({job['test'].rsplit('/', 1)[-1]})", flush=True)

        result = wait(client, run_id=run_id, timeout=180, on_change=show)
        metrics = client.metrics()
    jobs = sorted(result.jobs.values(), key=lambda j: (j["app_version_id"], j["target"], j["job_id"]))
    return _report(jobs, metrics, timed_out=result.timed_out)


def _report(jobs: list[dict[str, Any]], metrics: dict[str, Any], *, timed_out: bool) -> int:
    header = ("TEST", "APP VERSION", "TARGET", "PRIO", "STATUS", "ATTEMPTS", "FLAKY", "DURATION")
    rows = [
        (
            j["test"].rsplit("/", 1)[-1],
            j["app_version_id"],
            j["target"],
            str(j["priority"]),
            j["status"],
            str(j["attempts"]),
            "yes" if j["flaky"] else "",
            f"{(j['duration_ms'] or 0) / 1000:.1f}s",
        )
        for j in jobs
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    passed = sum(1 for j in jobs if j["status"] == "passed")
    failed = sum(1 for j in jobs if j["status"] in ("failed", "error", "cancelled"))
    flaky = sum(1 for j in jobs if j["flaky"])
    attempts = sum(j["attempts"] for j in jobs)
    installs = metrics["installs"]
    print()
    print(f"Summary: {passed} passed, {failed} failed, {flaky} flaky; {len(jobs)} jobs, {attempts} attempts run")
    print(f"Installs: {installs} done for {attempts} test runs ({attempts - installs} installs saved by batching)")
    problems = []
    if timed_out:
        problems.append("the suite did not finish in time")
    for j in jobs:
        want, want_flaky = expected_status(j["test"])
        if j["status"] != want or bool(j["flaky"]) != want_flaky:
            problems.append(f"{j['test']} on {j['app_version_id']}/{j['target']}: {j['status']}, expected {want}")
        if want == "failed" and j["attempts"] != j["max_retries"] + 1:
            problems.append(f"{j['test']}: {j['attempts']} attempts, expected {j['max_retries'] + 1}")
    if installs >= attempts:
        problems.append(f"batching saved nothing: {installs} installs for {attempts} runs")
    if problems:
        print("\nThe demo did not behave as designed:")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("\nEverything behaved as designed: the failing spec failed after its retries, the flaky one passed on retry.")
    return 0
