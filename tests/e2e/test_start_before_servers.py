"""Services started before NATS and Postgres (a compose file starting
everything at once, a cluster still electing its JetStream leader) wait for
them rather than exiting, and a SIGTERM ends that wait at once. A CLI command
that needs NATS fails in about a second when nothing answers, naming it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from eventstore import EventStore
from qgjob.api.auth import create_token
from qgjob.settings import Settings
from qgjob.stack.servers import NatsServer, PostgresServer, free_port
from qgjob.watch import EXIT_UNAVAILABLE
from tests.e2e.test_scheduler_ha import QGJOB, Services, wait_for

pytestmark = pytest.mark.timeout(180)

AGENT = ("agent", "--target", "emulator", "--name", "emu-1", "--test-seconds", "0.1", "--install-seconds", "0.05")


def _settings(nats_url: str, database_url: str) -> Settings:
    tag = uuid.uuid4().hex[:10]
    return Settings(
        nats_url=nats_url, database_url=database_url, stream=f"T{tag.upper()}", prefix=f"t{tag}", schema=f"t_{tag}"
    )


async def _logged(svc: Services, name: str, text: str, timeout: float = 20) -> None:
    async def seen() -> bool:
        return text in svc.log(name)

    await wait_for(seen, timeout, f"{text!r} in the log of {name}")


async def test_services_started_before_their_servers_wait_and_then_run_jobs(tmp_path: Path) -> None:
    nats = NatsServer(tmp_path / "nats")  # ports chosen now, servers started later
    pg = PostgresServer(tmp_path / "pg", durable=False)
    svc = Services(_settings(nats.url, pg.dsn()), tmp_path)
    port = free_port()
    svc.start("api", "serve", "api", "--port", str(port), "--log-level", "info")
    svc.start("scheduler", "serve", "scheduler")
    svc.start("projector", "serve", "projector")
    svc.start("agent", *AGENT)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

            async def ready_status() -> int | None:
                try:
                    return (await http.get("/readyz")).status_code
                except httpx.TransportError:
                    return None

            # the API serves at once, and is not ready
            assert await wait_for(ready_status, 20, "the API to answer") == 503
            body = (await http.get("/readyz")).json()
            assert body["checks"]["nats"].startswith("unavailable"), body
            for name in ("scheduler", "projector", "agent", "api"):
                await _logged(svc, name, "is not ready, trying again")
            await asyncio.sleep(1)
            assert all(p.poll() is None for p in svc.procs.values()), {n: svc.log(n) for n in svc.procs}
            assert "Traceback" not in svc.log("scheduler")  # one line a try, not nats-py's traceback

            nats.start()
            pg.start()

            async def ready() -> bool:
                return await ready_status() == 200

            await wait_for(ready, 60, "the API to be ready")
            store = await EventStore.connect(nats.url, stream=svc.settings.stream, prefix=svc.settings.prefix)
            try:
                admin, _ = await create_token(store, org_id=None, admin=True)
            finally:
                await store.close()
            http.headers["authorization"] = f"Bearer {admin}"
            answer = await http.post(
                "/v1/jobs",
                json={"org_id": "acme", "app_version_id": "v1", "test": "tests/a.spec.js", "target": "emulator"},
            )
            assert answer.status_code in (200, 201), answer.text
            job_id = answer.json()["job_id"]

            async def passed() -> bool:
                return (await http.get(f"/v1/jobs/{job_id}")).json()["status"] == "passed"

            await wait_for(passed, 60, f"{job_id} to pass")
    finally:
        svc.stop_all()
        nats.stop()
        pg.stop()
    assert {name: p.returncode for name, p in svc.procs.items()} == dict.fromkeys(svc.procs, 0)


async def test_a_service_waiting_for_its_servers_stops_at_once_on_sigterm(tmp_path: Path) -> None:
    nothing = f"nats://127.0.0.1:{free_port()}"
    svc = Services(_settings(nothing, f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"), tmp_path)
    for name, args in (("scheduler", ("serve", "scheduler")), ("projector", ("serve", "projector")), ("agent", AGENT)):
        svc.start(name, *args)
    try:
        for name in svc.procs:
            await _logged(svc, name, "is not ready, trying again")
        started = time.monotonic()
        for proc in svc.procs.values():
            proc.send_signal(signal.SIGTERM)
        codes = {name: proc.wait(10) for name, proc in svc.procs.items()}
        assert time.monotonic() - started < 5
        assert codes == dict.fromkeys(svc.procs, 0), {n: svc.log(n) for n in svc.procs}
    finally:
        svc.stop_all()


def test_a_cli_command_needing_nats_fails_fast_when_nothing_answers(tmp_path: Path) -> None:
    nothing = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = subprocess.run(
        [QGJOB, "token", "admin", "--nats-url", nothing, "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert time.monotonic() - started < 10
    assert proc.returncode == EXIT_UNAVAILABLE, proc.stderr
    assert f"cannot reach NATS at {nothing}" in proc.stderr
