"""Two scheduler processes: one leads through a NATS KV lease; SIGKILL it and
the standby takes over within 10 s, from its own state rebuilt from the
stream, and every job still runs exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from eventstore import EventStore
from qgjob.api.auth import create_token
from qgjob.settings import Settings
from qgjob.stack.servers import free_port
from scheduler.leader import Leadership

QGJOB = str(Path(sys.executable).parent / "qgjob")


class Services:
    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QGJOB_")}
        s = self.settings
        env.update(
            QGJOB_NATS_URL=s.nats_url,
            QGJOB_DATABASE_URL=s.database_url,
            QGJOB_STREAM=s.stream,
            QGJOB_PREFIX=s.prefix,
            QGJOB_SCHEMA=s.schema,
            QGJOB_DATA_DIR=str(self.logs / "none"),
        )
        return env

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen([QGJOB, *args], env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


async def leader_of(store: EventStore) -> str | None:
    return await Leadership(store, holder="observer").current()


async def wait_for(predicate, timeout: float, what: str) -> Any:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_standby_scheduler_takes_over_after_sigkill(
    settings: Settings, store: EventStore, tmp_path: Path
) -> None:
    admin, _ = await create_token(store, org_id=None, admin=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    svc = Services(settings, tmp_path)
    svc.start("projector", "serve", "projector")
    svc.start("api", "serve", "api", "--port", str(port), "--log-level", "warning")
    first = svc.start("scheduler-a", "serve", "scheduler", "--log-level", "info")
    try:
        holder = await wait_for(lambda: leader_of(store), 20, "a leader")
        assert holder.split("-")[-2] == str(first.pid), holder
        second = svc.start("scheduler-b", "serve", "scheduler", "--log-level", "info")
        svc.start(
            "agent",
            "agent",
            "--target",
            "emulator",
            "--name",
            "emu-1",
            "--test-seconds",
            "0.1",
            "--install-seconds",
            "0.05",
            "--lease-seconds",
            "5",
        )
        async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {admin}"}, timeout=30) as http:

            async def healthy() -> bool:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(healthy, 20, "the API")

            async def submit(app: str, n: int) -> str:
                body = {"org_id": "acme", "app_version_id": app, "jobs": [{"test": f"t/{i}.spec.js"} for i in range(n)]}
                r = await http.post("/v1/jobs", json=body)
                assert r.status_code == 201, r.text
                run_id: str = r.json()["run_id"]
                return run_id

            before = await submit("ha-1", 10)

            async def some_passed() -> bool:
                run = (await http.get(f"/v1/runs/{before}")).json()
                return bool(run["counts"]["passed"])

            await wait_for(some_passed, 30, "work under the first leader")
            first.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            first.wait(10)
            after = await submit("ha-2", 10)

            async def new_leader() -> str | None:
                now = await leader_of(store)
                return now if now and now != holder else None

            successor = await wait_for(new_leader, 15, "the standby to take over")
            took_over_in = time.monotonic() - killed
            assert successor.split("-")[-2] == str(second.pid), successor
            assert took_over_in < 10, took_over_in

            async def all_passed() -> bool:
                runs = [(await http.get(f"/v1/runs/{r}")).json() for r in (before, after)]
                return all(run["counts"]["passed"] == 10 for run in runs)

            await wait_for(all_passed, 60, "every job to pass")
            jobs = []
            for run_id in (before, after):
                jobs += (await http.get(f"/v1/runs/{run_id}")).json()["jobs"]
            for job in jobs:
                events = (await http.get(f"/v1/jobs/{job['job_id']}/events")).json()["events"]
                kinds = [e["type"] for e in events]
                assert kinds.count("JobPassed") == 1, kinds
                holding = False
                for kind in kinds:  # never assigned twice at once
                    if kind == "JobAssigned":
                        assert not holding, kinds
                        holding = True
                    elif kind in ("JobRequeued", "JobRetryScheduled", "JobPassed"):
                        holding = False
    except BaseException:
        for name in svc.procs:
            print(f"--- {name}\n{svc.log(name)[-3000:]}")
        raise
    finally:
        svc.stop_all()
