"""Agents as real processes: SIGKILL one mid-batch and its jobs come back
within the lease and finish on another agent, each exactly once; SIGTERM
drains an agent."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from tests.e2e.conftest import QGJOB, Stack, describe

LEASE = 3.0
SIMULATE = {"default_duration": 0.8, "install_seconds": {"emulator": 0.1}}


def start_agent(stack: Stack, name: str, sim: Path) -> subprocess.Popen[str]:
    log = (sim.parent / f"{name}.log").open("w")
    proc = subprocess.Popen(
        [
            str(QGJOB),
            "agent",
            "--target",
            "emulator",
            "--name",
            name,
            "--simulate-file",
            str(sim),
            "--lease-seconds",
            str(LEASE),
            "--log-level",
            "info",
        ],
        cwd=stack.workdir,
        env=stack.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log.close()  # the child has its own copy
    return proc


def agent_log(sim: Path, name: str) -> str:
    return (sim.parent / f"{name}.log").read_text()


def agents(stack: Stack) -> dict[str, dict[str, Any]]:
    return {a["agent_id"]: a for a in stack.cli_json("agents")["agents"]}


def wait_until(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def submit_run(stack: Stack, app: str, n: int) -> str:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    args = ["submit", "--org-id", "acme", "--app-version-id", app, "--run-id", run_id, "--retries", "0"]
    for i in range(n):
        args += ["--test", f"tests/t{i}.spec.js"]
    r = stack.cli(*args)
    assert r.returncode == 0, describe(r)
    return run_id


def run_jobs(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = stack.cli_json("list", "--run-id", run_id)["jobs"]
    return jobs


def assert_never_on_two_agents_at_once(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = stack.cli_json("events", "--job-id", job_id)["events"]
    holder = None
    for e in events:
        if e["type"] == "JobStarted":
            assert holder is None, f"{job_id} started on {e['agent_id']} while {holder} held it: {events}"
            holder = e["agent_id"]
        elif e["type"] in ("JobRequeued", "JobPassed", "JobFailed", "JobCancelled", "JobErrored"):
            holder = None
    assert sum(e["type"] in ("JobPassed", "JobCancelled", "JobErrored") for e in events) == 1, events
    return events


def test_sigkill_of_an_agent_mid_batch_loses_no_job(make_stack, tmp_path: Path) -> None:
    stack = make_stack(agents=0, extra=("--lease-seconds", str(LEASE))).start()
    sim = tmp_path / "sim.json"
    sim.write_text(json.dumps(SIMULATE))
    doomed = start_agent(stack, "emu-doomed", sim)
    survivor = None
    try:
        wait_until(lambda: "emu-doomed" in agents(stack), 20, "the first agent to register")
        run_id = submit_run(stack, "kill-1.0", 5)
        wait_until(
            lambda: any(j["status"] == "running" for j in run_jobs(stack, run_id)), 20, "a job running on the agent"
        )
        survivor = start_agent(stack, "emu-survivor", sim)
        wait_until(lambda: "emu-survivor" in agents(stack), 20, "the second agent to register")
        doomed.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        doomed.wait(10)
        r = stack.cli("wait", "--run-id", run_id, "--timeout", "60")
        assert r.returncode == 0, describe(r)
        finished_in = time.monotonic() - killed_at
        jobs = run_jobs(stack, run_id)
        assert [j["status"] for j in jobs] == ["passed"] * 5
        requeued = []
        interrupted = []
        for job in jobs:
            events = assert_never_on_two_agents_at_once(stack, job["job_id"])
            if any(e["type"] == "JobRequeued" for e in events):
                requeued.append(job)
                assert job["agent_id"] == "emu-survivor"
            if any(e["type"] == "JobStarted" and e["agent_id"] == "emu-doomed" for e in events) and not any(
                e["type"] == "JobPassed" and e["agent_id"] == "emu-doomed" for e in events
            ):
                interrupted.append(job)
        assert requeued, "the killed agent held no job when it died"
        assert len(interrupted) == 1, interrupted  # the test it was running
        assert interrupted[0] in requeued
        assert interrupted[0]["attempts"] == 2  # the lost run counts as started...
        assert not interrupted[0]["flaky"]  # ...but not as a failure
        # back in the queue within the lease, then five 0.8 s tests and an install
        assert finished_in < LEASE + 5 * 0.8 + 10, finished_in
        lost = agents(stack)["emu-doomed"]
        assert lost["state"] == "lost", lost
    finally:
        for proc in (doomed, survivor):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_sigterm_drains_an_agent(make_stack, tmp_path: Path) -> None:
    stack = make_stack(agents=0, extra=("--lease-seconds", str(LEASE))).start()
    sim = tmp_path / "sim.json"
    sim.write_text(json.dumps(SIMULATE))
    first = start_agent(stack, "emu-first", sim)
    second = None
    try:
        wait_until(lambda: "emu-first" in agents(stack), 20, "the agent to register")
        run_id = submit_run(stack, "drain-1.0", 4)
        wait_until(lambda: any(j["status"] == "running" for j in run_jobs(stack, run_id)), 20, "a running job")
        first.send_signal(signal.SIGTERM)
        assert first.wait(20) == 0, agent_log(sim, "emu-first")

        # what the agent held and had not started goes back to the queue
        def settled() -> list[dict[str, Any]] | None:
            now = run_jobs(stack, run_id)
            return now if all(j["status"] in ("passed", "queued") for j in now) else None

        jobs = wait_until(settled, 15, "the drained agent's jobs to settle")
        done = [j for j in jobs if j["status"] == "passed"]
        assert len(done) >= 1, jobs  # the test in progress finished
        assert all(j["status"] in ("passed", "queued") for j in jobs), jobs  # the rest were handed back
        wait_until(lambda: agents(stack)["emu-first"]["state"] == "stopped", 10, "the agent to show as stopped")
        second = start_agent(stack, "emu-second", sim)
        r = stack.cli("wait", "--run-id", run_id, "--timeout", "60")
        assert r.returncode == 0, describe(r)
        for job in run_jobs(stack, run_id):
            assert_never_on_two_agents_at_once(stack, job["job_id"])
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
