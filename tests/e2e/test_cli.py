"""End-to-end tests of the ``qgjob`` CLI against real ``qgjob up`` stacks.

Every command runs as its own process, exactly as a user or a CI step would
run it; the CLI finds the server through the credentials file ``qgjob up``
writes into the data folder.
"""

from __future__ import annotations

import json
import re
import signal
import uuid
from pathlib import Path

import pytest

from qgjob.stack.servers import free_port
from tests.e2e.conftest import Stack, clean_env, describe, leftover_servers, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SUBMITTED = re.compile(r"^Job submitted! ID: (\S+) \| Status: queued$", re.M)


def app_version(tag: str) -> str:
    """A fresh build id per test, so tests sharing a stack never dedup or batch together."""
    return f"v1.2.3-{tag}-{uuid.uuid4().hex[:6]}"


def submit_args(app: str, test: str, *extra: str, target: str = "emulator") -> tuple[str, ...]:
    """``submit`` arguments for one test of org acme."""
    return ("submit", "--org-id", "acme", "--app-version-id", app, "--test", test, "--target", target, *extra)


def submit(stack: Stack, app: str, test: str, *extra: str, target: str = "emulator") -> str:
    """``qgjob submit`` one test; returns the new job id."""
    r = stack.cli(*submit_args(app, test, *extra, target=target))
    assert r.returncode == 0, describe(r)
    m = SUBMITTED.search(r.stdout)
    assert m, describe(r)
    return m.group(1)


def status_json(stack: Stack, job_id: str, expect: int = 0) -> dict:
    r = stack.cli("status", "--job-id", job_id, "--json")
    assert r.returncode == expect, describe(r)
    doc = json.loads(r.stdout)  # one JSON document and nothing else
    assert isinstance(doc, dict)
    return doc


# --- help (no stack) --------------------------------------------------------------


def test_help_lists_commands_and_submit_options(tmp_path: Path) -> None:
    r = run_cli("--help", cwd=tmp_path, env=clean_env())
    assert r.returncode == 0, describe(r)
    for command in ("submit", "status", "wait", "list", "cancel", "events", "agents", "metrics", "up", "token"):
        assert re.search(rf"\b{command}\b", r.stdout), f"{command!r} missing from --help:\n{r.stdout}"

    r = run_cli("submit", "--help", cwd=tmp_path, env=clean_env())
    assert r.returncode == 0, describe(r)
    options = ("--org-id", "--app-version-id", "--test", "--target", "--priority", "--retries", "--run-id", "--wait")
    for option in options:
        assert option in r.stdout, f"{option} missing from submit --help:\n{r.stdout}"


# --- one shared stack ---------------------------------------------------------------


def test_submit_wait_status_passed(stack: Stack) -> None:
    app = app_version("pass")
    r = stack.cli(*submit_args(app, "tests/login.spec.js", target="emulator"))
    assert r.returncode == 0, describe(r)
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and SUBMITTED.match(lines[0]), describe(r)
    job_id = SUBMITTED.match(lines[0]).group(1)

    # Read-your-writes: a status read right after the submit knows the job.
    early = status_json(stack, job_id)
    assert early["job_id"] == job_id
    assert early["status"] in ("queued", "assigned", "running", "passed")

    r = stack.cli("wait", "--job-id", job_id, "--timeout", "60")
    assert r.returncode == 0, describe(r)
    assert "1 passed" in r.stdout, describe(r)

    job = status_json(stack, job_id)
    assert job["status"] == "passed"
    assert job["attempts"] == 1
    assert job["flaky"] is False
    assert (job["org_id"], job["app_version_id"], job["test"], job["target"]) == (
        "acme",
        app,
        "tests/login.spec.js",
        "emulator",
    )
    assert job["agent_id"] and job["batch_id"] and job["finished_at"]

    r = stack.cli("status", "--job-id", job_id)
    assert r.returncode == 0, describe(r)
    assert f"Job {job_id} | Status: passed | Attempts: 1" in r.stdout


def test_failing_job_exhausts_retries(stack: Stack) -> None:
    app = app_version("fail")
    r = stack.cli(
        "submit", "--org-id", "acme", "--app-version-id", app, "--test", "tests/payments_fail.spec.js",
        "--retries", "2", "--wait", "--timeout", "60",
    )  # fmt: skip
    assert r.returncode == 1, describe(r)
    m = SUBMITTED.search(r.stdout)
    assert m, describe(r)
    job_id = m.group(1)
    assert re.search(rf"^Job {job_id} -> failed \(.*assertion failed", r.stdout, re.M), describe(r)

    job = status_json(stack, job_id, expect=1)
    assert job["status"] == "failed"
    assert job["attempts"] == 3  # max_retries + 1
    assert "assertion failed" in (job["error"] or "")

    r = stack.cli("wait", "--job-id", job_id, "--timeout", "10")
    assert r.returncode == 1, describe(r)


def test_duplicate_attaches_to_the_running_job(stack: Stack) -> None:
    app = app_version("dup")
    args = ("--org-id", "acme", "--app-version-id", app, "--test", "tests/slow_checkout.spec.js", "--target", "device")
    first = submit(stack, app, "tests/slow_checkout.spec.js", target="device")

    r = stack.cli("submit", *args, "--wait", "--timeout", "60")
    assert r.returncode == 0, describe(r)
    first_line = r.stdout.splitlines()[0]
    assert re.fullmatch(rf"Duplicate of {first} \| Status: (queued|assigned|running)", first_line), describe(r)
    assert "Job submitted!" not in r.stdout
    assert status_json(stack, first)["status"] == "passed"

    # Once the original is finished, the same submission is a new job again.
    r = stack.cli("submit", *args, "--json")
    assert r.returncode == 0, describe(r)
    again = json.loads(r.stdout)
    assert again["job_id"] != first and again["status"] == "queued" and not again.get("duplicate_of")

    # ... which can be cancelled; waiting on a cancelled job exits 1.
    r = stack.cli("cancel", "--job-id", again["job_id"])
    assert r.returncode == 0, describe(r)
    r = stack.cli("wait", "--job-id", again["job_id"], "--timeout", "30")
    assert r.returncode == 1, describe(r)
    assert status_json(stack, again["job_id"], expect=1)["status"] == "cancelled"


def test_duplicate_wait_exits_with_the_originals_result(stack: Stack) -> None:
    app = app_version("dupfail")
    first = submit(stack, app, "tests/slow_refund.spec.js", "--retries", "0", target="browserstack")
    r = stack.cli(
        "submit", "--org-id", "acme", "--app-version-id", app, "--test", "tests/slow_refund.spec.js",
        "--target", "browserstack", "--retries", "0", "--wait", "--timeout", "60",
    )  # fmt: skip
    assert r.returncode == 1, describe(r)
    assert re.match(rf"Duplicate of {first} \| Status: (queued|assigned|running)\n", r.stdout), describe(r)
    assert f"Job {first} -> failed (refund button missing)" in r.stdout, describe(r)
    job = status_json(stack, first, expect=1)
    assert job["status"] == "failed" and job["attempts"] == 1


def test_events_show_the_lifecycle_in_order(stack: Stack) -> None:
    app = app_version("events")
    r = stack.cli(*submit_args(app, "tests/login.spec.js", "--wait", "--timeout", "60"))
    assert r.returncode == 0, describe(r)
    job_id = SUBMITTED.search(r.stdout).group(1)

    r = stack.cli("events", "--job-id", job_id)
    assert r.returncode == 0, describe(r)
    lines = r.stdout.strip().splitlines()
    order = ["JobSubmitted", "JobAssigned", "JobStarted", "JobPassed"]
    first_at = {}
    for name in order:
        hits = [n for n, line in enumerate(lines) if re.search(rf"\b{name}\b", line)]
        assert hits, f"no {name} line in:\n{r.stdout}"
        first_at[name] = hits[0]
    assert [first_at[n] for n in order] == sorted(first_at[n] for n in order), r.stdout

    r = stack.cli("events", "--job-id", job_id, "--json")
    assert r.returncode == 0, describe(r)
    doc = json.loads(r.stdout)
    types = [e["type"] for e in doc["events"]]
    assert [t for t in types if t in order] == order, types
    seqs = [e["seq"] for e in doc["events"]]
    assert seqs == sorted(seqs)


def test_several_tests_in_one_run(stack: Stack) -> None:
    app = app_version("run")
    run_id = f"ci-{uuid.uuid4().hex[:8]}"
    r = stack.cli(
        "submit", "--org-id", "acme", "--app-version-id", app, "--test", "tests/a.spec.js", "--test", "tests/b.spec.js",
        "--run-id", run_id, "--json",
    )  # fmt: skip
    assert r.returncode == 0, describe(r)
    doc = json.loads(r.stdout)
    assert doc["run_id"] == run_id
    assert len(doc["jobs"]) == 2
    assert sorted(j["test"] for j in doc["jobs"]) == ["tests/a.spec.js", "tests/b.spec.js"]
    assert all(j["status"] == "queued" for j in doc["jobs"])
    ids = {j["job_id"] for j in doc["jobs"]}

    r = stack.cli("wait", "--run-id", run_id, "--timeout", "60")
    assert r.returncode == 0, describe(r)
    assert "2 passed" in r.stdout, describe(r)

    page = stack.cli_json("list", "--run-id", run_id)
    assert {j["job_id"] for j in page["jobs"]} == ids
    assert all(j["status"] == "passed" and j["run_id"] == run_id for j in page["jobs"])

    r = stack.cli("list", "--run-id", run_id)
    assert r.returncode == 0, describe(r)
    assert all(i in r.stdout for i in ids), r.stdout


def test_rejected_input_exits_2(stack: Stack) -> None:
    r = stack.cli(*submit_args(app_version("bad"), "t.spec.js", target="phone"))
    assert r.returncode == 2, describe(r)
    assert "target" in r.stderr, describe(r)
    assert "Job submitted" not in r.stdout

    r = stack.cli("wait", "--timeout", "1")  # neither --job-id nor --run-id
    assert r.returncode == 2, describe(r)

    r = stack.cli("status", "--job-id", "job_doesnotexist")
    assert r.returncode == 2, describe(r)


def test_unreachable_server_exits_3(tmp_path: Path) -> None:
    env = clean_env(QGJOB_URL=f"http://127.0.0.1:{free_port()}", QGJOB_TOKEN="x")
    r = run_cli("status", "--job-id", "job_x", cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 3, describe(r)
    assert "cannot reach" in r.stderr, describe(r)
    r = run_cli(*submit_args("v1", "t.spec.js"), cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 3, describe(r)

    # No server configured at all (no env, no credentials file): a usage error that says what to do.
    r = run_cli("status", "--job-id", "job_x", cwd=tmp_path, env=clean_env(), timeout=60)
    assert r.returncode == 2, describe(r)
    assert "qgjob up" in r.stderr, describe(r)


# --- stacks of their own ------------------------------------------------------------


def test_wait_timeout_exits_3(make_stack) -> None:
    stack = make_stack(agents=0).start()
    app = app_version("noagents")
    job_id = submit(stack, app, "tests/login.spec.js")
    r = stack.cli("wait", "--job-id", job_id, "--timeout", "0.5")
    assert r.returncode == 3, describe(r)
    assert "Timed out" in r.stdout, describe(r)
    assert status_json(stack, job_id)["status"] == "queued"

    r = stack.cli(*submit_args(app, "tests/other.spec.js", "--wait", "--timeout", "0.5"))
    assert r.returncode == 3, describe(r)


def test_restart_on_the_same_folder_keeps_jobs(make_stack, tmp_path: Path) -> None:
    # No --data-dir and no QGJOB_DATA_DIR: `qgjob up` and the CLI meet in ./.qgjob.
    stack = make_stack(default_dir=True).start()
    creds = stack.credentials()
    app = app_version("restart")
    r = stack.cli(*submit_args(app, "tests/login.spec.js", "--wait", "--timeout", "60"))
    assert r.returncode == 0, describe(r)
    job_id = SUBMITTED.search(r.stdout).group(1)

    code = stack.stop(signal.SIGINT)
    assert code == 0, stack.output
    assert any(line.startswith("qgjob stopped") for line in stack.lines), stack.output
    assert not leftover_servers(stack.data_dir), "servers left running after a clean stop"

    stack.start()
    assert "Traceback" not in stack.output, stack.output
    assert stack.credentials()["token"] == creds["token"], "the admin token changed across a restart"
    job = status_json(stack, job_id)
    assert job["status"] == "passed" and job["app_version_id"] == app
    r = stack.cli("events", "--job-id", job_id)
    assert r.returncode == 0 and "JobPassed" in r.stdout, describe(r)

    new = submit(stack, app, "tests/after_restart.spec.js")
    r = stack.cli("wait", "--job-id", new, "--timeout", "60")
    assert r.returncode == 0, describe(r)
    assert status_json(stack, new)["status"] == "passed"

    assert stack.stop() == 0, stack.output
    assert not leftover_servers(stack.data_dir)


def test_crash_then_restart_and_one_stack_per_folder(make_stack, tmp_path: Path) -> None:
    first = make_stack(data_dir=tmp_path / "data").start()
    app = app_version("crash")
    r = first.cli(*submit_args(app, "tests/login.spec.js", "--wait", "--timeout", "60"))
    assert r.returncode == 0, describe(r)
    job_id = SUBMITTED.search(r.stdout).group(1)

    # A second stack on the same folder refuses, and leaves the running one alone.
    r = run_cli(*first.up_args()[1:], cwd=tmp_path, env=clean_env(), timeout=60)
    assert r.returncode != 0, describe(r)
    assert "another qgjob stack" in r.stderr and str(first.proc.pid) in r.stderr, describe(r)
    assert "qgjob is up" not in r.stdout, describe(r)
    assert first.running
    assert status_json(first, job_id)["status"] == "passed"

    postgres_line = first.wait_for_line("  Postgres:", 1)
    first.kill()
    assert any("postgres" in p.name() for p in leftover_servers(first.data_dir)), (
        "the killed stack's Postgres was expected to outlive it"
    )

    second = make_stack(data_dir=tmp_path / "data").start()
    assert second.wait_for_line("  Postgres:", 1) == postgres_line, "the orphaned Postgres was not reused"
    staging = second.data_dir / "nats" / "jetstream" / "jetstream" / "$G" / "streams" / "QGJOB" / "batches"
    assert staging.is_symlink(), "the restarted stack does not stage atomic batches in memory"
    assert "Traceback" not in second.output, second.output
    job = status_json(second, job_id)
    assert job["status"] == "passed"

    new = submit(second, app, "tests/after_crash.spec.js")
    r = second.cli("wait", "--job-id", new, "--timeout", "60")
    assert r.returncode == 0, describe(r)

    assert second.stop() == 0, second.output
    assert not leftover_servers(second.data_dir), "servers left running after a clean stop"


def test_up_creates_org_tokens_that_only_act_for_their_org(make_stack) -> None:
    stack = make_stack(agents=0, extra=("--org-id", "acme")).start()
    creds = json.loads((stack.data_dir / "credentials.json").read_text())
    acme = creds["org_tokens"]["acme"]
    assert f"token (acme): {acme}" in stack.output
    assert acme != creds["admin_token"]
    env = {"QGJOB_TOKEN": acme}
    ok = stack.cli(*submit_args(app_version("orgtok"), "tests/login.spec.js"), env={**stack.env(), **env})
    assert ok.returncode == 0, describe(ok)
    other = stack.cli(
        "submit", "--org-id", "globex", "--app-version-id", "v1", "--test", "t.spec.js", env={**stack.env(), **env}
    )
    assert other.returncode == 2, describe(other)
    assert "org_id" in other.stderr and "acme" in other.stderr, describe(other)
    denied = stack.cli("token", "create", "--org-id", "globex", env={**stack.env(), **env})
    assert denied.returncode == 2, describe(denied)
    assert "admin" in denied.stderr, describe(denied)


def test_demo_runs_the_sample_suite_and_reports(tmp_path: Path) -> None:
    r = run_cli("demo", cwd=tmp_path, env=clean_env(), timeout=240)
    assert r.returncode == 0, describe(r)
    assert "Summary: 12 passed, 1 failed, 1 flaky; 13 jobs, 17 attempts run" in r.stdout, describe(r)
    installs = int(r.stdout.split("Installs: ", 1)[1].split(" ", 1)[0])
    assert 0 < installs < 17, describe(r)
    assert "Everything behaved as designed" in r.stdout
    for line in ("payments_fail.spec.js", "onboarding_flaky.spec.js", "smoke.spec.js"):
        assert line in r.stdout
    assert not list(tmp_path.iterdir()), "the demo leaves nothing behind in the working folder"
