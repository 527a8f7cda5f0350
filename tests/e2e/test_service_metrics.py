"""`qgjob agent` and `qgjob serve scheduler` expose their own metrics with --metrics-port."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qgjob.stack.servers import free_port
from tests.e2e.conftest import QGJOB, Stack, describe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def start(stack: Stack, tmp_path: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    with (tmp_path / f"{name}.log").open("w") as log:
        return subprocess.Popen([str(QGJOB), *args], cwd=stack.workdir, env=stack.env(), stdout=log, stderr=log)


def poll(check, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except httpx.TransportError:
            found = None
        if found:
            return found
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_an_agent_and_a_standby_scheduler_serve_their_own_metrics(make_stack, tmp_path: Path) -> None:
    stack = make_stack(agents=0).start()
    agent_port, scheduler_port = free_port(), free_port()
    agent = start(stack, tmp_path, "agent", "agent", "--target", "emulator", "--name", "metered",
                  "--test-seconds", "0.05", "--install-seconds", "0.05", "--metrics-port", str(agent_port))  # fmt: skip
    standby = start(stack, tmp_path, "scheduler", "serve", "scheduler", "--metrics-port", str(scheduler_port))
    try:
        poll(lambda: samples(agent_port) and samples(scheduler_port))
        app = f"m-{uuid.uuid4().hex[:6]}"
        ids = []
        for test in ("tests/a.spec.js", "tests/b.spec.js"):
            r = stack.cli("submit", "--org-id", "acme", "--app-version-id", app, "--test", test, "--json")
            assert r.returncode == 0, describe(r)
            ids.append(json.loads(r.stdout)["job_id"])
        r = stack.cli("wait", *[a for j in ids for a in ("--job-id", j)], "--timeout", "60")
        assert r.returncode == 0, describe(r)

        runs = ("qgjob_job_run_seconds_count", (("outcome", "passed"), ("target", "emulator")))
        got = poll(lambda: (s := samples(agent_port)).get(runs) == 2 and s)
        assert got[("qgjob_agent_installs_total", (("target", "emulator"),))] == 1
        assert got[("qgjob_eventstore_append_seconds_count", (("kind", "single"),))] >= 4  # starts and results

        # The standby follows the stream like the leader, so it sees the same dispatches.
        dispatched = ("qgjob_dispatch_latency_seconds_count", (("target", "emulator"),))
        assert poll(lambda: samples(scheduler_port).get(dispatched) == 2)
    finally:
        for proc in (agent, standby):
            proc.terminate()
        for proc in (agent, standby):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
