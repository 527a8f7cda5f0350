"""``--log-format json``: every service process writes one JSON object per
stderr line, and the lines about a job carry its ids.

Each service is a real ``qgjob`` process (``serve api``, ``serve scheduler``,
``serve projector``, ``agent``, then ``up``); a job goes through them and every
stderr line they wrote is parsed as JSON.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventstore import EventStore
from qgjob.api.auth import create_token
from qgjob.settings import Settings
from qgjob.stack.servers import free_port
from tests.e2e.conftest import QGJOB, clean_env
from tests.integration.test_projections import service_env

pytestmark = pytest.mark.timeout(180)

JSON_LOGS = ("--log-format", "json", "--log-level", "info")


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(QGJOB), *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
    return proc.returncode, out, err


def parse(name: str, stderr: str) -> list[dict[str, Any]]:
    """Every stderr line as JSON; fails naming the first line that is not."""
    records = []
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{name}: a stderr line is not JSON: {line!r}\nall of stderr:\n{stderr}")
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= set(record), line
        records.append(record)
    assert records, f"{name} logged nothing"
    return records


def wait_for_job(c: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = c.get(f"/v1/jobs/{job_id}")
        if r.status_code == 200 and r.json()["status"] in ("passed", "failed", "error", "cancelled"):
            out: dict[str, Any] = r.json()
            return out
        time.sleep(0.1)
    pytest.fail(f"job {job_id} did not finish within {timeout}s")


@pytest.fixture
def processes() -> Iterator[dict[str, subprocess.Popen[str]]]:
    running: dict[str, subprocess.Popen[str]] = {}
    yield running
    for proc in running.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


async def test_every_service_logs_json_lines_with_the_ids_of_a_job(
    settings: Settings, store: EventStore, tmp_path: Path, processes: dict[str, subprocess.Popen[str]]
) -> None:
    admin, _ = await create_token(store, org_id=None, admin=True)
    env = service_env(settings)
    port = free_port()
    processes["api"] = start(["serve", "api", "--port", str(port), *JSON_LOGS], env, tmp_path)
    processes["projector"] = start(["serve", "projector", *JSON_LOGS], env, tmp_path)
    processes["scheduler"] = start(["serve", "scheduler", *JSON_LOGS], env, tmp_path)
    agent_args = ["agent", "--target", "emulator", "--name", "json-agent", "--test-seconds", "0.05"]
    processes["agent"] = start([*agent_args, "--install-seconds", "0.05", *JSON_LOGS], env, tmp_path)

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"authorization": f"Bearer {admin}"}) as c:
        deadline = time.monotonic() + 60
        while True:
            try:
                if c.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not become ready"
            for name, proc in processes.items():
                assert proc.poll() is None, f"{name} exited: {stop(proc)}"
            time.sleep(0.1)
        body = {"org_id": "acme", "app_version_id": "1.0", "test": "tests/log.spec.js", "run_id": "json-run"}
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        job_id = r.json()["job_id"]
        assert wait_for_job(c, job_id)["status"] == "passed"
        batch_id = c.get(f"/v1/jobs/{job_id}").json()["batch_id"]

    logs = {}
    for name in ("agent", "scheduler", "projector", "api"):  # agents first: they hand back work on SIGTERM
        code, _, err = stop(processes[name])
        assert code == 0, f"{name} exited {code}:\n{err}"
        logs[name] = parse(name, err)

    def carrying(name: str, **ids: str) -> list[dict[str, Any]]:
        return [r for r in logs[name] if all(r.get(k) == v for k, v in ids.items())]

    assert carrying("api", job_id=job_id, run_id="json-run"), logs["api"]
    assert carrying("scheduler", batch_id=batch_id, agent_id="json-agent"), logs["scheduler"]
    agent_lines = carrying("agent", job_id=job_id, batch_id=batch_id, agent_id="json-agent")
    assert any("started" in r["message"] for r in agent_lines), logs["agent"]
    assert any("passed" in r["message"] for r in agent_lines), logs["agent"]
    assert carrying("agent", agent_id="json-agent", batch_id=batch_id), logs["agent"]
    assert any(r["logger"].startswith("uvicorn") for r in logs["api"]), "uvicorn's own lines must be JSON too"


def test_qgjob_up_logs_json_lines(tmp_path: Path) -> None:
    data = tmp_path / "data"
    up = start(
        ["up", "--data-dir", str(data), "--port", "0", "--test-seconds", "0.05", *JSON_LOGS], clean_env(), tmp_path
    )
    try:
        assert up.stdout is not None
        deadline = time.monotonic() + 90
        for line in up.stdout:  # the banner goes to stdout
            if line.startswith("Press Ctrl-C to stop."):
                break
            assert time.monotonic() < deadline
        env = clean_env(QGJOB_DATA_DIR=str(data))
        r = subprocess.run(
            [str(QGJOB), "submit", "--org-id", "acme", "--app-version-id", "2.0", "--test", "tests/up.spec.js",
             "--wait", "--timeout", "60", "--json"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        job_id = json.loads(r.stdout)["jobs"][0]["job_id"]
    finally:
        code, _, err = stop(up, signal.SIGINT)
    assert code == 0, err
    records = parse("up", err)
    mine = [r for r in records if r.get("job_id") == job_id]
    assert {r["logger"] for r in mine} >= {"qgjob.api.app", "agents.agent"}, mine
    assert any(r.get("batch_id") and r.get("agent_id") for r in mine), mine
