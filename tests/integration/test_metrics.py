"""`/metrics` and `/v1/metrics` over real HTTP after jobs ran through a real stack.

The stack's services and the simulated agent run in this process, so the API's
`/metrics` carries both the projections' figures and their own histograms and
counters (as under `qgjob up`). Process-wide counters grow over the whole test
session, so those are checked as differences.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningStack
from tests.e2e.conftest import QGJOB
from tests.integration.test_api_jobs import bulk, org_client, simulated_agent, submit, wait_for_end

pytestmark = pytest.mark.timeout(90)

FAMILIES = {
    "qgjob_jobs",
    "qgjob_queue_depth",
    "qgjob_queue_oldest_age_seconds",
    "qgjob_dispatch_latency_seconds",
    "qgjob_queue_wait_seconds",
    "qgjob_job_run_seconds",
    "qgjob_installs",
    "qgjob_installs_avoided",
    "qgjob_job_retries",
    "qgjob_jobs_flaky",
    "qgjob_agents",
    "qgjob_agent_installs",
    "qgjob_projection_lag_events",
    "qgjob_projection_lag_seconds",
    "qgjob_eventstore_append_seconds",
    "qgjob_projector_events_applied",
}


async def scrape(c: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = await c.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    names = set()
    for family in text_string_to_metric_families(r.text):
        names.add(family.name)
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    out[("__families__", ())] = names  # type: ignore[assignment]
    return out


def value(metrics: dict[Any, Any], name: str, **labels: str) -> float:
    return float(metrics.get((name, tuple(sorted(labels.items()))), 0.0))


async def test_metrics_describe_what_ran(stack: RunningStack) -> None:
    async with org_client(stack) as c:
        before = await scrape(c)
        async with simulated_agent(stack):
            ran = await submit(
                c,
                bulk(
                    ["tests/m/a.spec.js", "tests/m/b.spec.js", "tests/m/c_flaky.spec.js", "tests/m/d_fail.spec.js"],
                    max_retries=1,
                ),
            )
            ids = [j["job_id"] for j in ran["jobs"]]
            await wait_for_end(c, ids)
        waiting = await submit(c, {**bulk(["tests/w/1.spec.js", "tests/w/2.spec.js"]), "target": "browserstack"})
        assert waiting["created"] == 2
        await asyncio.sleep(0.2)  # the waiting jobs' age passes zero
        after = await scrape(c)

    names = after[("__families__", ())]
    assert FAMILIES <= names, FAMILIES - names  # type: ignore[operator]

    # From the projections (this test's own schema): exact.
    assert value(after, "qgjob_jobs", status="passed", target="emulator") == 3
    assert value(after, "qgjob_jobs", status="failed", target="emulator") == 1
    assert value(after, "qgjob_jobs", status="queued", target="browserstack") == 2
    assert value(after, "qgjob_queue_depth", app_version_id="v1.2.3", target="browserstack") == 2
    assert value(after, "qgjob_queue_oldest_age_seconds", app_version_id="v1.2.3", target="browserstack") > 0
    assert value(after, "qgjob_job_retries_total", target="emulator") == 2  # the flaky one and the failing one
    assert value(after, "qgjob_jobs_flaky_total", target="emulator") == 1
    installs = value(after, "qgjob_installs_total")
    assert installs >= 1
    assert value(after, "qgjob_installs_avoided_total") == 6 - installs  # 6 attempts ran
    assert sum(v for (n, labels), v in after.items() if n == "qgjob_agents" and ("target", "emulator") in labels) == 1
    assert value(after, "qgjob_projection_lag_events") == 0
    assert value(after, "qgjob_projection_lag_seconds") == 0

    # This process's own observations: what this test added.
    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("qgjob_dispatch_latency_seconds_count", target="emulator") == 4
    assert grew("qgjob_queue_wait_seconds_count", target="emulator") == 6  # one per attempt assigned
    assert grew("qgjob_job_run_seconds_count", target="emulator", outcome="passed") == 3
    assert grew("qgjob_job_run_seconds_count", target="emulator", outcome="failed") == 3
    assert grew("qgjob_agent_installs_total", target="emulator") >= 1
    assert grew("qgjob_eventstore_append_seconds_count", kind="atomic") >= 2  # the submissions, the batches
    assert grew("qgjob_eventstore_append_seconds_count", kind="single") >= 12  # starts and results
    assert grew("qgjob_projector_events_applied_total") > 20


async def test_the_json_view_and_the_cli_print_the_same_figures(stack: RunningStack) -> None:
    token = await stack.org_token("acme")
    async with org_client(stack) as c:
        await submit(c, bulk(["tests/j/1.spec.js", "tests/j/2.spec.js"], target="device"))
        r = await c.get("/v1/metrics")
    assert r.status_code == 200
    body = r.json()
    for key in ("jobs_by_status", "queues", "retries", "flaky", "installs", "installs_avoided", "agents_by_state"):
        assert key in body, key
    assert body["projection_lag"] == 0 and body["projection_lag_s"] == 0
    (queue,) = body["queues"]
    assert (queue["target"], queue["depth"]) == ("device", 2) and queue["oldest_age_s"] >= 0

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            str(QGJOB), "metrics", "--url", stack.settings.url, "--token", token, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        return await proc.wait(), out.decode()

    code, shown = await cli("--json")
    assert code == 0, shown
    assert json.loads(shown)["queues"][0]["depth"] == 2
    code, text = await cli()
    assert code == 0, text
    assert "queue v1.2.3/device: 2 waiting, best priority 5" in text
    assert "retries: 0; flaky jobs: 0" in text
    assert "projection lag: 0 events" in text
