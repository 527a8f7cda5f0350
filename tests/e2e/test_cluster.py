"""The docker-compose topology, started from the wheels: a NATS node dies mid-suite.

Three `nats-server` processes form a JetStream cluster on loopback, the stream
and its buckets keep 3 replicas, and every qgjob service of
`docker-compose.yml` runs as a real process with the command the compose file
gives it (as many as its replicas), pointed at the three nodes and the test
Postgres. A suite runs through it; one NATS node is killed with SIGKILL
midway; every job must still pass, exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from eventstore import EventStore
from qgjob.stack.servers import NatsServer, free_port
from tests.e2e.conftest import QGJOB

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = {"--host": "127.0.0.1", "--metrics-host": "127.0.0.1"}
FAST_AGENT = ["--test-seconds", "0.2", "--install-seconds", "0.3"]  # the simulate runner, quicker than its defaults


def qgjob_services(compose: dict[str, Any]) -> dict[str, tuple[list[str], int]]:
    """The qgjob services of the compose file: (command, replicas), one-off tools left out."""
    out = {}
    for name, svc in compose["services"].items():
        if svc.get("image", "").startswith(("nats", "postgres")) or svc.get("profiles"):
            continue
        out[name] = (list(svc["command"]), int(svc.get("deploy", {}).get("replicas", 1)))
    return out


def localised(command: list[str]) -> tuple[list[str], int | None]:
    """The command with loopback hosts and free ports; returns the API port if it has one."""
    args, api_port = [], None
    it = iter(command)
    for arg in it:
        args.append(arg)
        if arg in LOOPBACK:
            next(it)
            args.append(LOOPBACK[arg])
        elif arg in ("--port", "--metrics-port"):
            next(it)
            port = free_port()
            args.append(str(port))
            if arg == "--port":
                api_port = port
    if command[0] == "agent":
        args += FAST_AGENT
    return args, api_port


async def stream_replicas(url: str, stream: str) -> int:
    store = await EventStore.connect(url, stream=stream)
    try:
        info = await store.js.stream_info(stream)
        return int(info.config.num_replicas or 1)
    finally:
        await store.close()


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except (httpx.TransportError, httpx.HTTPStatusError):
            found = None
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def test_the_compose_topology_loses_no_job_when_a_nats_node_dies(database_url: str, tmp_path: Path) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = qgjob_services(compose)
    assert {"api", "scheduler", "projector", "agent-emulator", "agent-device", "agent-browserstack"} <= set(services)
    assert services["api"][1] == 2 and services["scheduler"][1] == 2
    env_of_compose = compose["x-qgjob"]["environment"]
    assert env_of_compose["QGJOB_STREAM_REPLICAS"] == "3"
    assert env_of_compose["QGJOB_NATS_URL"].count("nats://") == 3

    cluster_ports = [free_port() for _ in range(3)]
    routes = [f"nats://127.0.0.1:{p}" for p in cluster_ports]
    nodes = []
    for i, port in enumerate(cluster_ports):
        (tmp_path / f"n{i + 1}").mkdir()
        nodes.append(
            NatsServer(
                tmp_path / f"n{i + 1}", cluster_name="qgjob", cluster_port=port, routes=routes, server_name=f"n{i + 1}"
            )
        )
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    tag = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("QGJOB_")}
    env |= {
        "QGJOB_NATS_URL": ",".join(n.start() for n in nodes),
        "QGJOB_DATABASE_URL": database_url,
        "QGJOB_STREAM_REPLICAS": env_of_compose["QGJOB_STREAM_REPLICAS"],
        "QGJOB_STREAM": f"CLUSTER_{tag}",
        "QGJOB_PREFIX": f"cl{tag}",
        "QGJOB_SCHEMA": f"cluster_{tag}",
        "QGJOB_DATA_DIR": str(tmp_path / "no-credentials"),
    }
    try:
        # The first admin token, as `docker compose run --rm qgjob token admin` makes it; it waits for
        # the cluster to elect its JetStream leader and creates the stream with 3 replicas.
        def admin() -> str | None:
            r = subprocess.run(
                [str(QGJOB), "token", "admin", "--json"], env=env, capture_output=True, text=True, timeout=30
            )
            return yaml.safe_load(r.stdout)["token"] if r.returncode == 0 else None

        token = wait_until(admin, 60, "the JetStream cluster")
        assert asyncio.run(stream_replicas(env["QGJOB_NATS_URL"], env["QGJOB_STREAM"])) == 3
        api_urls = []
        for name, (command, replicas) in services.items():
            for n in range(replicas):
                args, api_port = localised(command)
                with (logs / f"{name}-{n}.log").open("w") as log:
                    procs.append(subprocess.Popen([str(QGJOB), *args], env=env, stdout=log, stderr=log))
                if api_port is not None:
                    api_urls.append(f"http://127.0.0.1:{api_port}")
        assert len(api_urls) == 2
        headers = {"authorization": f"Bearer {token}"}
        for url in api_urls:
            wait_until(lambda url=url: httpx.get(f"{url}/readyz", timeout=3).status_code == 200, 60, f"{url}/readyz")

        jobs = [
            {"test": f"tests/cluster/{t}_{i:02d}.spec.js", "target": t}
            for t, n in (("emulator", 30), ("device", 15), ("browserstack", 15))
            for i in range(n)
        ]
        suite = {"org_id": "acme", "app_version_id": "9.9.9", "run_id": f"run-{tag}", "jobs": jobs}
        r = httpx.post(f"{api_urls[0]}/v1/jobs", headers=headers, timeout=30, json=suite)
        assert r.status_code == 201, r.text

        def summary(url: str) -> dict[str, Any]:
            answer = httpx.get(f"{url}/v1/runs/run-{tag}", headers=headers, timeout=10)
            answer.raise_for_status()
            body: dict[str, Any] = answer.json()
            return body

        wait_until(lambda: summary(api_urls[1])["counts"]["passed"] >= 15, 90, "a quarter of the suite")
        nodes[0].kill()  # SIGKILL of one NATS node while jobs run
        done = wait_until(lambda: (s := summary(api_urls[1]))["counts"]["passed"] == 60 and s, 120, "every job")
        assert done["status"] == "passed" and done["total"] == 60

        def history() -> list[dict[str, Any]] | None:  # 503 while the cluster settles: retry
            answer = httpx.get(f"{api_urls[0]}/v1/runs/run-{tag}/events", headers=headers, timeout=30)
            assert answer.status_code in (200, 503), answer.text
            return answer.json()["events"] if answer.status_code == 200 else None

        events = wait_until(history, 60, "the run's history")
        passes = Counter(e["job_id"] for e in events if e["type"] == "JobPassed")
        assert len(passes) == 60 and set(passes.values()) == {1}, passes.most_common(3)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for node in nodes:
            node.stop()
