"""A `qgjob agent --runner command` process running real commands: outcomes,
timeouts, the log tail on the job and the whole log through `qgjob logs`."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.e2e.conftest import QGJOB, Stack, describe

SCRIPT = """
import sys, time
test = sys.argv[1]
print("installed build", sys.argv[2], "running", test, flush=True)
for i in range(300 if "verbose" in test else 3):
    print("step", i, "of", test)
if "sleep" in test:
    time.sleep(30)
if "fail" in test:
    print("AssertionError: expected Welcome to be visible", file=sys.stderr)
    sys.exit(3)
print("1 passed")
"""


def submit(stack: Stack, app: str, test: str) -> str:
    r = stack.cli("submit", "--org-id", "acme", "--app-version-id", app, "--test", test, "--retries", "0", "--json")
    assert r.returncode == 0, describe(r)
    import json

    job_id: str = json.loads(r.stdout)["job_id"]
    return job_id


def test_command_runner_agent_end_to_end(make_stack, tmp_path: Path) -> None:
    stack = make_stack(agents=0).start()
    script = tmp_path / "fake_test.py"
    script.write_text(SCRIPT)
    log = (tmp_path / "agent.log").open("w")
    agent = subprocess.Popen(
        [
            str(QGJOB),
            "agent",
            "--target",
            "emulator",
            "--name",
            "cmd-1",
            "--runner",
            "command",
            "--command",
            f"{sys.executable} {script} {{test}} {{app_version_id}}",
            "--install-command",
            f"{sys.executable} -c pass",
            "--timeout",
            "1.5",
        ],
        cwd=stack.workdir,
        env=stack.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        app = f"cmd-{uuid.uuid4().hex[:6]}"
        ok = submit(stack, app, "tests/login.spec.js")
        bad = submit(stack, app, "tests/payments_fail.spec.js")
        slow = submit(stack, app, "tests/sleep_forever.spec.js")
        chatty = submit(stack, app, "tests/verbose_report.spec.js")
        started = time.monotonic()
        r = stack.cli("wait", "--job-id", ok, "--job-id", bad, "--job-id", slow, "--job-id", chatty, "--timeout", "60")
        assert r.returncode == 1, describe(r)  # one failed
        assert time.monotonic() - started < 30  # the sleeper was killed at its 1.5 s timeout
        good = stack.cli_json("status", "--job-id", ok)
        assert good["status"] == "passed" and good["log_tail"].endswith("1 passed\n")
        failed = stack.cli_json("status", "--job-id", bad, expect=1)
        assert failed["status"] == "failed"
        assert "exit code 3" in failed["error"] and "AssertionError" in failed["error"]
        timed_out = stack.cli_json("status", "--job-id", slow, expect=1)
        assert timed_out["status"] == "failed" and "timed out after 1.5 s" in timed_out["error"]
        whole = stack.cli("logs", "--job-id", bad)
        assert whole.returncode == 0, describe(whole)
        assert f"installed build {app} running tests/payments_fail.spec.js" in whole.stdout
        assert "step 2 of tests/payments_fail.spec.js" in whole.stdout
        assert "=== " in whole.stdout and "attempt 1 ===" in whole.stdout
        # A log longer than the tail the event carries is kept whole in the object store.
        long_one = stack.cli_json("status", "--job-id", chatty)
        assert "installed build" not in long_one["log_tail"] and long_one["log_tail"].endswith("1 passed\n")
        whole = stack.cli("logs", "--job-id", chatty)
        assert whole.returncode == 0, describe(whole)
        assert "installed build" in whole.stdout and "step 0 of" in whole.stdout and "step 299 of" in whole.stdout
        missing = stack.cli("logs", "--job-id", bad, "--attempt", "2")
        assert missing.returncode == 2 and "attempt" in missing.stderr, describe(missing)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(20)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(5)
