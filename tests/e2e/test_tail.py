"""The audit trail end to end: ``qgjob tail`` and ``qgjob events --run-id`` as
real processes against a real ``qgjob up``, and the README's ``nats sub`` /
``nats stream view`` subjects subscribed with plain nats-py.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from eventstore.events import EVENT_TYPES
from tests.e2e.conftest import QGJOB, Stack, describe, started

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SUBMITTED = re.compile(r"Job submitted! ID: (\S+)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack with org tokens for acme and globex, one simulated agent per target."""
    workdir = tmp_path_factory.mktemp("e2e-tail")
    with started(Stack(workdir, workdir / "data", agents=1, extra=("--org-id", "acme", "--org-id", "globex"))) as s:
        yield s


def org_env(stack: Stack, org: str) -> dict[str, str]:
    return stack.env(QGJOB_TOKEN=stack.credentials()["org_tokens"][org])


def submit(stack: Stack, org: str, app: str, test: str, *extra: str, target: str = "emulator") -> str:
    args = ("submit", "--org-id", org, "--app-version-id", app, "--test", test, "--target", target, *extra)
    r = stack.cli(*args, env=org_env(stack, org))
    assert r.returncode == 0, describe(r)
    m = SUBMITTED.search(r.stdout)
    assert m, describe(r)
    return m.group(1)


def wait_passed(stack: Stack, *job_ids: str) -> None:
    args = ["wait", "--timeout", "90"]
    for job_id in job_ids:
        args += ["--job-id", job_id]
    r = stack.cli(*args)
    assert r.returncode == 0, describe(r)


class Tail:
    """A ``qgjob tail`` process; its stdout lines are collected as they come."""

    def __init__(self, stack: Stack, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [str(QGJOB), "tail", *args],
            cwd=stack.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.errors), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, pipe: Any, into: list[str]) -> None:
        with pipe:
            for line in pipe:
                with self._cond:
                    into.append(line.rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def until(self, check: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not check(self):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not any(t.is_alive() for t in self._readers)):
                    pytest.fail(f"tail: condition not met; stdout: {self.lines}\nstderr: {self.errors}")
                self._cond.wait(min(left, 0.2))

    def ready(self) -> Tail:
        self.until(lambda t: any(e.startswith("Following ") for e in t.errors), 30)
        return self

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(30)
        for t in self._readers:
            t.join(5)
        return code


def test_tail_shows_one_group_of_one_org_live_and_nothing_else(stack: Stack) -> None:
    app = f"2.5.{uuid.uuid4().hex[:6]}"
    tail = Tail(stack, "--app-version-id", app, "--target", "emulator", "--json", env=org_env(stack, "acme")).ready()
    human = Tail(stack, "--app-version-id", app, env=org_env(stack, "acme")).ready()
    try:
        wanted = submit(stack, "acme", app, "tests/tail.spec.js")
        others = [
            submit(stack, "acme", app + "-other", "tests/tail.spec.js"),  # another build
            submit(stack, "acme", app, "tests/tail.spec.js", target="device"),  # another target
            submit(stack, "globex", app, "tests/tail.spec.js"),  # another org, same group
        ]
        wait_passed(stack, wanted, *others)
        tail.until(lambda t: any('"JobPassed"' in line for line in t.lines))
        human.until(lambda t: sum("JobPassed" in line for line in t.lines) >= 2)  # emulator and device
    finally:
        assert tail.stop() == 0, tail.errors
        assert human.stop() == 0, human.errors
    events = [json.loads(line) for line in tail.lines]  # --json: one object per line
    assert {e["job_id"] for e in events} == {wanted}, tail.lines
    assert [e["type"] for e in events] == ["JobSubmitted", "JobAssigned", "JobStarted", "JobPassed"]
    assert all(e["org_id"] == "acme" and e["app_version_id"] == app and e["target"] == "emulator" for e in events)
    started = events[2]
    assert started["attempt"] == 1 and started["agent_id"] and started["batch_id"]
    # without --target: both of acme's jobs of this build, never globex's, never the other build's
    text = "\n".join(human.lines)
    assert wanted in text and others[1] in text, text
    assert others[0] not in text and others[2] not in text, text
    line = next(line for line in human.lines if wanted in line and "JobStarted" in line)
    assert "attempt=1" in line and "agent=" in line and "batch=" in line, line


def test_tail_of_a_run_stops_after_count_and_events_lists_the_run(stack: Stack) -> None:
    app = f"2.6.{uuid.uuid4().hex[:6]}"
    run_id = f"ci-{uuid.uuid4().hex[:8]}"
    tail = Tail(stack, "--run-id", run_id, "--type", "JobPassed", "--count", "2", env=stack.env()).ready()
    args = ("--org-id", "acme", "--app-version-id", app, "--test", "tests/a.spec.js", "--test", "tests/b.spec.js")
    r = stack.cli("submit", *args, "--run-id", run_id, "--wait", "--timeout", "90")
    assert r.returncode == 0, describe(r)
    ids = SUBMITTED.findall(r.stdout)
    submit(stack, "acme", app, "tests/not_in_the_run.spec.js")
    assert tail.proc.wait(60) == 0, tail.errors  # --count 2: it ends by itself
    tail.stop()
    assert len(tail.lines) == 2 and all("JobPassed" in line for line in tail.lines), tail.lines
    assert {re.search(r"job=(\S+)", line).group(1) for line in tail.lines} == set(ids)  # type: ignore[union-attr]

    r = stack.cli("events", "--run-id", run_id)
    assert r.returncode == 0, describe(r)
    for job_id in ids:
        assert re.search(rf"JobSubmitted\s+job={job_id}", r.stdout), r.stdout
        assert re.search(rf"JobPassed\s+job={job_id}\s+attempt=1", r.stdout), r.stdout
    assert "BatchAssigned" in r.stdout, r.stdout
    seqs = [int(m) for m in re.findall(r"  #(\d+)  ", r.stdout)]
    assert seqs == sorted(seqs) and len(seqs) == len(r.stdout.strip().splitlines())

    doc = json.loads(stack.cli("events", "--run-id", run_id, "--json").stdout)
    assert {e["job_id"] for e in doc["events"] if e["type"].startswith("Job")} == set(ids)
    r = stack.cli("events", "--run-id", run_id, env=org_env(stack, "globex"))
    assert r.returncode == 2 and "no run" in r.stderr, describe(r)  # another org's run is not found
    r = stack.cli("events", "--run-id", run_id, "--job-id", ids[0])
    assert r.returncode == 2, describe(r)


def test_tail_refusals_exit_2(stack: Stack) -> None:
    r = stack.cli("tail", "--type", "AgentLost", env=org_env(stack, "acme"))
    assert r.returncode == 2 and "admin" in r.stderr, describe(r)
    r = stack.cli("tail", "--type", "NoSuchEvent")
    assert r.returncode == 2 and "JobPassed" in r.stderr, describe(r)


# --- the README's nats commands, with plain nats-py -------------------------------------


def documented_subjects() -> dict[str, list[str]]:
    """The subjects of the README's ``nats`` commands, by kind of command."""
    return {
        "sub": re.findall(r"^nats sub '([^']+)'", README, re.M),
        "sub --all": re.findall(r"^nats sub --all '([^']+)'", README, re.M),
        "stream view": re.findall(r"^nats stream view QGJOB --subject '([^']+)'", README, re.M),
    }


def test_the_readme_subjects_deliver_plain_json_events(stack: Stack) -> None:
    documented = documented_subjects()
    assert len(documented["sub"]) >= 6 and documented["sub --all"] and len(documented["stream view"]) >= 3, documented
    assert "qgjob.job.2%2E4%2E0.emulator.>" in documented["sub"]  # the README's group example is build 2.4.0
    nats_url = stack.credentials()["nats_url"]
    asyncio.run(_check_readme_subjects(stack, nats_url, documented))


async def _check_readme_subjects(stack: Stack, nats_url: str, documented: dict[str, list[str]]) -> None:
    nc = await nats.connect(nats_url)
    got: dict[str, list[tuple[str, Any]]] = {s: [] for s in documented["sub"]}

    def collector(subject: str) -> Any:
        async def on_msg(msg: Any) -> None:
            got[subject].append((msg.subject, json.loads(msg.data)))

        return on_msg

    try:
        for subject in documented["sub"]:
            await nc.subscribe(subject, cb=collector(subject))
        await nc.flush()

        loop = asyncio.get_running_loop()
        app = "2.4.0"
        group_job = await loop.run_in_executor(
            None, submit, stack, "acme", app, f"tests/readme-{uuid.uuid4().hex[:6]}.js"
        )
        other_build = await loop.run_in_executor(None, submit, stack, "acme", "2.4.1", "tests/readme.js")
        device_job = await loop.run_in_executor(
            None, lambda: submit(stack, "globex", app, "tests/readme-device.js", target="device")
        )
        agent = subprocess.Popen(
            [str(QGJOB), "agent", "--target", "browserstack", "--name", "readme-agent"],
            cwd=stack.workdir,
            env=stack.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await loop.run_in_executor(None, wait_passed, stack, group_job, other_build, device_job)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                events = [e for _, e in got["qgjob.agent.>"]]
                if any(e.get("agent_id") == "readme-agent" for e in events) and got["_hb.qgjob.*"]:
                    break
                await asyncio.sleep(0.1)
        finally:
            agent.send_signal(signal.SIGTERM)
            await loop.run_in_executor(None, agent.wait, 30)

        def jobs_on(subject: str) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for _, event in got[subject]:
                assert event["type"] in EVENT_TYPES, event  # plain JSON, self-describing
                out.setdefault(event["job_id"], []).append(event["type"])
            return out

        group = jobs_on("qgjob.job.2%2E4%2E0.emulator.>")
        assert set(group) == {group_job}, group  # not 2.4.1, not the device job
        assert group[group_job][0] == "JobSubmitted" and group[group_job][-1] == "JobPassed", group
        assert set(jobs_on("qgjob.job.*.*.acme.*")) == {group_job, other_build}  # not globex's
        assert set(jobs_on("qgjob.job.*.device.>")) == {device_job}
        batches = [e for _, e in got["qgjob.batch.>"]]
        assigned = {j["job_id"] for e in batches if e["type"] == "BatchAssigned" for j in e["jobs"]}
        assert {group_job, other_build, device_job} <= assigned, batches
        assert {e["type"] for e in batches} >= {"BatchAssigned", "BatchFinished"}
        agents = [e for _, e in got["qgjob.agent.>"]]
        assert any(e["type"] == "AgentRegistered" and e["agent_id"] == "readme-agent" for e in agents), agents
        assert all(set(hb) >= {"agent_id", "target"} for _, hb in got["_hb.qgjob.*"]), got["_hb.qgjob.*"]

        # The stream commands: what JetStream stored, read with an ordered consumer.
        js = nc.jetstream()
        for subject in documented["sub --all"] + documented["stream view"]:
            concrete = subject.replace("JOB_ID", group_job)
            sub = await js.subscribe(
                concrete,
                stream="QGJOB",
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )
            stored = []
            while True:
                try:
                    msg = await sub.next_msg(timeout=2)
                except nats.errors.TimeoutError:
                    break
                stored.append(json.loads(msg.data))
            await sub.unsubscribe()
            assert stored, f"nothing stored on {concrete}"
            assert all(e["type"] in EVENT_TYPES for e in stored)
            if "JOB_ID" in subject:
                types = [e["type"] for e in stored]
                assert {e["job_id"] for e in stored} == {group_job}
                assert types[0] == "JobSubmitted" and types[-1] == "JobPassed", types
            if subject.startswith("qgjob.job.2%2E4%2E0.emulator."):
                assert {e["job_id"] for e in stored} == {group_job}  # the only 2.4.0 emulator job of this stack
    finally:
        await nc.close()
