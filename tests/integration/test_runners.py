"""Runners against real processes: exit codes, output, arguments, timeouts, cancellation.

Every command gets a marker in its environment; after each test no live
process may still carry it, so nothing a test started outlives it.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agents.appwright import AppwrightRunner
from agents.command import CommandRunner
from agents.runners import InstallFailed, Outcome, SimulateRunner
from eventstore.errors import QgjobError

FIXTURES = Path(__file__).parent.parent / "fixtures"
FAKE_NPX = f"{shlex.quote(sys.executable)} {shlex.quote(str(FIXTURES / 'fake_npx.py'))}"
MARK = "QGJOB_RUNNER_TEST_MARK"


def python(code: str, *args: str) -> str:
    """A command template running ``code`` with this interpreter."""
    return shlex.join([sys.executable, "-c", code, *args])


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie nobody reaped is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def marked(mark: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(MARK) == mark:
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    """An environment to pass to runners; fails the test if a process carrying it is left running."""
    mark = uuid.uuid4().hex
    yield {MARK: mark}
    left = marked(mark)
    for proc in left:
        proc.kill()
    assert not left, f"processes outlived the test: {[p.cmdline() for p in left]}"


async def wait_for_file(path: Path, timeout_s: float = 1.5) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text()).strip():
            return text
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} was not written")


# The command runner


async def test_exit_code_zero_passes_and_keeps_the_output(env: dict[str, str]) -> None:
    runner = CommandRunner(python("print('hello from', __import__('sys').argv[1])", "{test}"), env=env)

    outcome = await runner.run("tests/login.spec.ts", "emulator", "v1", 1)

    assert outcome.passed
    assert outcome.error is None
    assert outcome.log == b"hello from tests/login.spec.ts\n"
    assert 0 <= outcome.duration_ms < 2000


async def test_a_non_zero_exit_fails_naming_the_code_and_the_last_output_line(env: dict[str, str]) -> None:
    code = "import sys; print('step 1 ok'); print('AssertionError: boom', file=sys.stderr); print(); sys.exit(3)"
    runner = CommandRunner(python(code), env=env)

    outcome = await runner.run("t.spec.ts", "emulator", "v1", 1)

    assert not outcome.passed
    assert outcome.error == "exit code 3: AssertionError: boom"


async def test_death_by_signal_is_named(env: dict[str, str]) -> None:
    runner = CommandRunner(python("import os; print('about to die', flush=True); os.kill(os.getpid(), 9)"), env=env)

    outcome = await runner.run("t.spec.ts", "emulator", "v1", 1)

    assert not outcome.passed
    assert outcome.error == "killed by SIGKILL: about to die"


async def test_a_missing_executable_is_a_failed_attempt(env: dict[str, str], tmp_path: Path) -> None:
    runner = CommandRunner(f"{tmp_path}/no-such-tool {{test}}", env=env)

    outcome = await runner.run("t.spec.ts", "emulator", "v1", 1)

    assert not outcome.passed
    assert outcome.error is not None
    assert outcome.error.startswith("exit code 127: could not start")


async def test_stdout_and_stderr_land_together_in_the_log_and_its_tail(env: dict[str, str]) -> None:
    code = (
        "import sys\n"
        "sys.stdout.write('x' * 10000 + '\\n'); sys.stdout.flush()\n"
        "sys.stderr.write('warning: slow device\\n'); sys.stderr.flush()\n"
        "print('é' * 3000 + ' done')\n"
    )
    runner = CommandRunner(python(code), env=env)

    outcome = await runner.run("t.spec.ts", "emulator", "v1", 1)

    assert outcome.passed
    text = outcome.log.decode()
    assert text.startswith("x" * 10000 + "\nwarning: slow device\n")
    assert text.endswith("é" * 3000 + " done\n")
    tail = outcome.log_tail
    assert len(tail.encode()) <= 4096
    assert tail.endswith(" done\n")
    assert "\ufffd" not in tail  # never starts in the middle of a two-byte character
    assert set(tail[:-6]) == {"é"}


def test_log_tail_of_a_short_log_is_all_of_it() -> None:
    assert Outcome(False, 1, "e", log=b"only line\n").log_tail == "only line\n"
    assert Outcome(True, 1).log_tail == ""
    assert "log" not in repr(Outcome(True, 1, log=b"x" * 100))


async def test_values_with_spaces_and_semicolons_stay_one_argument(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "argv.json"
    record = tmp_path / "record.py"
    record.write_text(
        "import json, os, sys\n"
        "keys = ['QGJOB_TEST', 'QGJOB_TARGET', 'QGJOB_APP_VERSION_ID', 'QGJOB_ATTEMPT']\n"
        "env = {k: os.environ[k] for k in keys}\n"
        "open(sys.argv[1], 'w').write(json.dumps({'argv': sys.argv[2:], 'env': env}))\n"
    )
    template = shlex.join([sys.executable, str(record), str(out), "{test}", "--build={app_version_id}", "{target}"])
    runner = CommandRunner(f"{template} {{{{literal}}}}", env=env, cwd=tmp_path)
    test = "tests/my spec; touch pwned.txt.spec.ts"
    build = "$(touch pwned2) `touch pwned3` v1.2 && echo {test}"

    outcome = await runner.run(test, "device", build, 2)

    assert outcome.passed, outcome.error
    seen = json.loads(out.read_text())
    assert seen["argv"] == [test, f"--build={build}", "device", "{literal}"]
    assert seen["env"] == {
        "QGJOB_TEST": test,
        "QGJOB_TARGET": "device",
        "QGJOB_APP_VERSION_ID": build,
        "QGJOB_ATTEMPT": "2",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["argv.json", "record.py"]  # no shell ran anything


@pytest.mark.parametrize(
    ("command", "install", "message"),
    [
        ("run {tets}", None, "unknown placeholder {tets}"),
        ("run {test}", "install {test}", "unknown placeholder {test}"),
        ("run {0}", None, "unknown placeholder {0}"),
        ("run {test.upper}", None, "unknown placeholder {test.upper}"),
        ("run {test", None, "double a literal brace"),
        ("run 'unclosed", None, "No closing quotation"),
        ("   ", None, "template is empty"),
    ],
)
def test_bad_templates_are_rejected_at_once(command: str, install: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace(".", r"\.")):
        CommandRunner(command, install)


async def test_a_timeout_kills_the_whole_process_group(env: dict[str, str], tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    runner = CommandRunner(f"sh -c 'sleep 30 & echo $! > {pidfile}; echo waiting; wait'", timeout_s=30, env=env)

    started = time.monotonic()
    outcome = await runner.run("t.spec.ts", "emulator", "v1", 1, timeout_s=0.3)  # the job's timeout wins

    assert time.monotonic() - started < 1.5
    assert not outcome.passed
    assert outcome.error == "timed out after 0.3 s"
    assert outcome.log == b"waiting\n"
    assert 300 <= outcome.duration_ms < 1500
    assert not running(int(pidfile.read_text()))


async def test_the_runner_default_timeout_applies_without_a_job_timeout(env: dict[str, str]) -> None:
    runner = CommandRunner("sleep 30", timeout_s=0.2, env=env)

    outcome = await runner.run("t.spec.ts", "emulator", "v1", 1)

    assert outcome.error == "timed out after 0.2 s"


async def test_a_group_that_ignores_sigterm_gets_sigkill_after_the_grace(env: dict[str, str], tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    runner = CommandRunner(
        f"sh -c 'trap \"\" TERM; sleep 30 & echo $! > {pidfile}; wait; wait'", kill_grace_s=0.3, env=env
    )

    started = time.monotonic()
    outcome = await runner.run("t.spec.ts", "emulator", "v1", 1, timeout_s=0.2)

    assert outcome.error == "timed out after 0.2 s"
    assert 0.5 <= time.monotonic() - started < 1.5  # timeout + grace
    assert not running(int(pidfile.read_text()))


async def test_processes_left_behind_after_a_normal_exit_are_stopped(env: dict[str, str], tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    runner = CommandRunner(f"sh -c 'sleep 30 > /dev/null 2>&1 & echo $! > {pidfile}; echo ok'", env=env)

    outcome = await runner.run("t.spec.ts", "emulator", "v1", 1)

    assert outcome.passed
    assert outcome.log == b"ok\n"
    assert not running(int(pidfile.read_text()))


@pytest.mark.parametrize("call", ["run", "install"])
async def test_cancelling_the_task_kills_the_group_and_reraises(call: str, env: dict[str, str], tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    script = f"sh -c 'sleep 30 & echo $$ $! > {pidfile}; wait'"
    runner = CommandRunner(script, install_command=script, env=env)
    task = asyncio.create_task(
        runner.run("t.spec.ts", "emulator", "v1", 1) if call == "run" else runner.install("v1", "emulator")
    )
    pids = [int(pid) for pid in (await wait_for_file(pidfile)).split()]
    assert all(running(pid) for pid in pids)

    task.cancel()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert time.monotonic() - started < 1.0  # SIGTERM was enough: no wait for the grace
    assert not any(running(pid) for pid in pids)


async def test_install_runs_the_install_command_once_per_call(env: dict[str, str], tmp_path: Path) -> None:
    installs = tmp_path / "installs.txt"
    runner = CommandRunner(
        "true",
        install_command=f"sh -c 'echo \"$1 $2\" >> {installs}' install {{app_version_id}} {{target}}",
        env=env,
    )

    await runner.install("build 42/rc", "device")
    await runner.run("a.spec.ts", "device", "build 42/rc", 1)
    await runner.run("b.spec.ts", "device", "build 42/rc", 1)

    assert installs.read_text() == "build 42/rc device\n"


async def test_a_failing_install_raises_install_failed_with_the_output_tail(env: dict[str, str]) -> None:
    runner = CommandRunner(
        "true",
        install_command="sh -c 'echo Performing Streamed Install; echo adb: device offline >&2; exit 2'",
        env=env,
    )

    with pytest.raises(InstallFailed) as caught:
        await runner.install("v1", "device")

    assert isinstance(caught.value, QgjobError)
    message = str(caught.value)
    assert message.startswith("installing v1 on device failed: exit code 2: adb: device offline\n")
    assert "Performing Streamed Install" in message


async def test_without_an_install_command_install_does_nothing(env: dict[str, str]) -> None:
    await CommandRunner("true", env=env).install("v1", "emulator")


# The simulate runner's timeout


async def test_simulate_runner_times_out_when_its_test_runs_too_long() -> None:
    runner = SimulateRunner(duration_s=5)

    started = time.monotonic()
    outcome = await runner.run("slow.spec.ts", "emulator", "v1", 1, timeout_s=0.1)

    assert 0.1 <= time.monotonic() - started < 1
    assert (outcome.passed, outcome.duration_ms, outcome.error) == (False, 100, "timed out after 0.1 s")
    assert outcome.log_tail.endswith("timed out after 0.1 s\n")
    assert (await SimulateRunner(duration_s=0.01).run("ok.spec.ts", "emulator", "v1", 1, timeout_s=1)).passed
    assert not (await SimulateRunner(duration_s=0.01).run("fail.spec.ts", "emulator", "v1", 1)).passed


# The AppWright runner against a fake npx


def appwright(
    env: dict[str, str],
    tmp_path: Path,
    report: str | None,
    exit_code: int,
    *,
    fake_env: dict[str, str] | None = None,
    **kwargs: Any,
) -> AppwrightRunner:
    """An AppwrightRunner whose npx is the fake: it records what it got and writes ``report``'s fixture."""
    fake = {**env, **(fake_env or {}), "FAKE_NPX_RECORD": str(tmp_path / "seen.json"), "FAKE_NPX_EXIT": str(exit_code)}
    if report is not None:
        fake["FAKE_NPX_REPORT"] = report if report == "garbage" else str(FIXTURES / f"appwright-report-{report}.json")
    return AppwrightRunner(npx=FAKE_NPX, env=fake, cwd=tmp_path, **kwargs)


def seen(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "seen.json").read_text())
    return data


async def test_appwright_runs_the_spec_in_the_mapped_project_and_reads_a_failed_report(
    env: dict[str, str], tmp_path: Path
) -> None:
    runner = appwright(env, tmp_path, "failed", 1)

    outcome = await runner.run("tests/onboarding.spec.ts", "emulator", "v1.2.3", 1)

    got = seen(tmp_path)
    assert got["argv"] == [
        "appwright", "test", "tests/onboarding.spec.ts", "--project", "android", "--reporter=list,json"
    ]  # fmt: skip
    report_path = got["env"]["PLAYWRIGHT_JSON_OUTPUT_NAME"]
    assert Path(report_path).is_absolute()
    assert got["env"]["PLAYWRIGHT_JSON_OUTPUT_FILE"] == report_path
    assert got["env"]["QGJOB_APP_VERSION_ID"] == "v1.2.3"
    assert not Path(report_path).exists()  # the per-attempt report folder is cleaned up
    assert not outcome.passed
    assert outcome.error is not None
    assert outcome.error.startswith(
        "onboarding.spec.ts › Onboarding › accepts a valid email: Error: expect(locator).toBeVisible() failed\n"
    )
    assert outcome.duration_ms == 102319
    assert "Running 4 tests using 1 worker" in outcome.log_tail


async def test_appwright_passed_and_flaky_reports_pass(env: dict[str, str], tmp_path: Path) -> None:
    passed = await appwright(env, tmp_path, "passed", 0).run("tests/login.spec.ts", "device", "v1", 1)

    assert seen(tmp_path)["argv"][:5] == ["appwright", "test", "tests/login.spec.ts", "--project", "android-device"]
    assert (passed.passed, passed.error, passed.duration_ms) == (True, None, 25110)

    flaky = await appwright(env, tmp_path, "flaky", 0).run("tests/checkout.spec.ts", "browserstack", "v1", 1)

    assert seen(tmp_path)["argv"][3:5] == ["--project", "browserstack"]
    assert (flaky.passed, flaky.error, flaky.duration_ms) == (True, None, 40533)


async def test_appwright_project_mapping_and_extra_arguments_are_configurable(
    env: dict[str, str], tmp_path: Path
) -> None:
    runner = appwright(
        env, tmp_path, "passed", 0, projects={"emulator": "pixel-8"}, extra_args="--config appwright.ci.ts --retries 0"
    )

    await runner.run("a.spec.ts", "emulator", "v1", 1)
    assert seen(tmp_path)["argv"] == [
        "appwright", "test", "a.spec.ts", "--project", "pixel-8", "--reporter=list,json",
        "--config", "appwright.ci.ts", "--retries", "0",
    ]  # fmt: skip

    await runner.run("a.spec.ts", "device", "v1", 1)
    assert seen(tmp_path)["argv"][4] == "android-device"  # the defaults still apply to other targets


async def test_appwright_without_a_report_falls_back_to_the_exit_code(env: dict[str, str], tmp_path: Path) -> None:
    failed = await appwright(env, tmp_path, None, 1).run("a.spec.ts", "emulator", "v1", 1)

    assert not failed.passed
    assert failed.error == (
        "exit code 1: Error while running playwright test: exited with 1 (no AppWright report: it wrote none)"
    )

    passed = await appwright(env, tmp_path, None, 0).run("a.spec.ts", "emulator", "v1", 1)
    assert passed.passed


async def test_appwright_with_an_unreadable_report_falls_back_to_the_exit_code(
    env: dict[str, str], tmp_path: Path
) -> None:
    outcome = await appwright(env, tmp_path, "garbage", 1).run("a.spec.ts", "emulator", "v1", 1)

    assert not outcome.passed
    assert outcome.error is not None
    assert outcome.error.startswith("exit code 1: Error while running playwright test: exited with 1 (no AppWright")
    assert "not a Playwright JSON report" in outcome.error


async def test_appwright_fails_when_tests_pass_but_it_exits_non_zero(env: dict[str, str], tmp_path: Path) -> None:
    outcome = await appwright(env, tmp_path, "flaky", 1).run("a.spec.ts", "emulator", "v1", 1)

    assert not outcome.passed
    assert outcome.error == (
        "every test passed but appwright ended with exit code 1: Error while running playwright test: exited with 1"
    )


async def test_appwright_timeout_kills_it(env: dict[str, str], tmp_path: Path) -> None:
    runner = appwright(env, tmp_path, "passed", 0, fake_env={"FAKE_NPX_SLEEP": "30"}, timeout_s=0.5)

    outcome = await runner.run("a.spec.ts", "emulator", "v1", 1)

    assert not outcome.passed
    assert outcome.error == "timed out after 0.5 s"


def test_appwright_requires_the_json_reporter() -> None:
    with pytest.raises(ValueError, match="must include json"):
        AppwrightRunner(reporter="list")
