"""``qgjob run`` end to end: real ``qgjob up`` stack, real CLI processes.

The simulated agents decide outcomes from spec names (``fail`` always fails,
``flaky`` fails once) and from this module's simulate file (slow specs that
stay running long enough to attach to, time out on or cancel).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from qgjob.stack.servers import free_port
from tests.e2e.conftest import QGJOB, Stack, clean_env, describe, run_cli, started

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SLOW = 4.0
SIMULATE = {
    "tests": {
        f"{folder}/{name}": {"duration": SLOW, "outcomes": ["pass"]}
        for folder in ("failfast", "timeout", "attach")
        for name in ("b_slow.spec.js", "c_slow.spec.js")
    }
    | {f"cut/{name}": {"duration": 1.5, "outcomes": ["pass"]} for name in ("a.spec.js", "b.spec.js", "c.spec.js")}
}
SPEC = 'const { test, expect } = require("appwright");\n\ntest("NAME", async ({ device }) => {});\n'


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack with one agent per target, and the slow specs of this module."""
    workdir = tmp_path_factory.mktemp("run-stack")
    sim = workdir / "simulate.json"
    sim.write_text(json.dumps(SIMULATE))
    extra = ("--simulate-file", str(sim), "--retry-backoff-seconds", "0.2")
    with started(Stack(workdir, workdir / "data", agents=1, extra=extra)) as s:
        yield s


def app_version(tag: str) -> str:
    return f"v2.0.0-{tag}-{uuid.uuid4().hex[:6]}"


def specs(root: Path, folder: str, *names: str) -> None:
    for name in names:
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SPEC.replace("NAME", Path(name).stem))


def run_args(app: str, *extra: str, target: str = "emulator") -> tuple[str, ...]:
    return ("run", "--org-id", "acme", "--app-version-id", app, "--target", target, *extra)


def junit_cases(path: Path) -> tuple[ET.Element, dict[str, ET.Element]]:
    root = ET.parse(path).getroot()
    return root, {c.get("file"): c for c in root.iter("testcase")}


def jobs_of(stack: Stack, app: str) -> list[dict[str, Any]]:
    r = stack.cli("list", "--app-version-id", app, "--json")
    assert r.returncode == 0, describe(r)
    return json.loads(r.stdout)["jobs"]


# --- no stack ------------------------------------------------------------------------


def test_no_match_is_usage_error_naming_the_pattern(tmp_path: Path) -> None:
    specs(tmp_path, "suite", "login.spec.js")
    r = run_cli(*run_args("v1", "suite", "nothing/**/*.spec.js"), cwd=tmp_path, env=clean_env())
    assert r.returncode == 2, describe(r)
    assert "no spec file matches 'nothing/**/*.spec.js'" in r.stderr, describe(r)
    assert r.stdout == ""


def test_unreachable_server_exits_3(tmp_path: Path) -> None:
    specs(tmp_path, "suite", "login.spec.js")
    url = f"http://127.0.0.1:{free_port()}"
    r = run_cli(*run_args("v1", "suite", "--url", url, "--token", "t"), cwd=tmp_path, env=clean_env(), timeout=60)
    assert r.returncode == 3, describe(r)
    assert "cannot reach the qgjob server" in r.stderr, describe(r)


# --- one stack -------------------------------------------------------------------------


def test_glob_over_a_folder_all_pass_writes_junit(stack: Stack) -> None:
    root = stack.workdir
    specs(root, "allpass", "login.spec.js", "checkout.spec.js", "nested/deeper/search.spec.js", "profile.test.ts")
    (root / "allpass" / "helpers.js").write_text("// not a spec\n")
    app = app_version("allpass")
    junit = root / "reports" / "allpass.xml"
    r = stack.cli(*run_args(app, "allpass/**/*.spec.js", "allpass", "--junit", str(junit), "--timeout", "90"))
    assert r.returncode == 0, describe(r)
    expected = [
        "allpass/checkout.spec.js",
        "allpass/login.spec.js",
        "allpass/nested/deeper/search.spec.js",
        "allpass/profile.test.ts",  # the folder argument adds *.test.ts; the glob and the folder overlap
    ]
    # one line per transition, then the table with one row per spec
    assert re.search(r"^Run (run-[0-9a-f]{20}): 4 spec\(s\) submitted for emulator", r.stdout, re.M), describe(r)
    assert re.search(r"^Job job_\S+ -> passed \| allpass/login\.spec\.js$", r.stdout, re.M), describe(r)
    assert re.search(r"^TEST\s+TARGET\s+STATUS\s+ATTEMPTS\s+DURATION\s+FLAKY$", r.stdout, re.M), describe(r)
    for spec in expected:
        assert re.search(rf"^{re.escape(spec)}\s+emulator\s+passed\s+1\s+\d+\.\ds$", r.stdout, re.M), describe(r)
    assert "helpers.js" not in r.stdout
    assert re.search(r"4 passed, 0 failed in", r.stdout), describe(r)

    root_el, cases = junit_cases(junit)
    assert root_el.tag == "testsuites" and root_el.get("tests") == "4" and root_el.get("failures") == "0"
    suites = root_el.findall("testsuite")
    assert [s.get("name") for s in suites] == ["emulator"]
    assert suites[0].get("tests") == "4" and suites[0].get("errors") == "0" and suites[0].get("skipped") == "0"
    assert sorted(cases) == expected
    assert all(c.find("failure") is None and c.find("error") is None for c in cases.values())
    assert cases["allpass/login.spec.js"].get("classname") == "allpass/login.spec.js"
    assert float(cases["allpass/login.spec.js"].get("time")) > 0

    # --json: one document, nothing else on stdout
    r = stack.cli(*run_args(app, "allpass/login.spec.js", "--json"))
    assert r.returncode == 0, describe(r)
    doc = json.loads(r.stdout)
    assert doc["status"] == "passed" and doc["passed"] == 1 and doc["failed"] == 0 and doc["total"] == 1
    assert doc["jobs"][0]["test"] == "allpass/login.spec.js" and doc["jobs"][0]["status"] == "passed"


def test_failing_and_flaky_specs_report_to_junit_and_github(stack: Stack, tmp_path: Path) -> None:
    root = stack.workdir
    specs(root, "mixed", "a_ok.spec.js", "b_payments_fail.spec.js", "c_onboarding_flaky.spec.js")
    app = app_version("mixed")
    junit = tmp_path / "junit.xml"
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    env = stack.env(GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary))
    r = stack.cli(*run_args(app, "mixed", "--retries", "1", "--junit", str(junit), "--timeout", "90"), env=env)
    assert r.returncode == 1, describe(r)
    fail_line = re.search(r"^Job (job_\S+) -> failed \| mixed/b_payments_fail\.spec\.js \((.+)\)$", r.stdout, re.M)
    assert fail_line and "assertion failed" in fail_line.group(2), describe(r)
    assert re.search(r"^mixed/b_payments_fail\.spec\.js\s+emulator\s+failed\s+2\s", r.stdout, re.M), describe(r)
    assert re.search(r"^mixed/c_onboarding_flaky\.spec\.js\s+emulator\s+passed\s+2\s+\S+\s+yes$", r.stdout, re.M)
    assert "2 passed (1 flaky), 1 failed in" in r.stdout, describe(r)

    # GitHub annotations: an error for the failed spec, a warning for the flaky one
    error = [line for line in r.stdout.splitlines() if line.startswith("::error ")]
    assert len(error) == 1, describe(r)
    assert error[0].startswith("::error file=mixed/b_payments_fail.spec.js,title=mixed/b_payments_fail.spec.js failed")
    assert "assertion failed" in error[0] and "%0A(failed after 2 attempt(s))" in error[0]
    assert any(line.startswith("::warning file=mixed/c_onboarding_flaky.spec.js,") for line in r.stdout.splitlines())

    text = summary.read_text()
    assert text.startswith("earlier step\n### qgjob run `run-"), text  # appended, not overwritten
    assert "| 3 | 2 | 1 | 0 | 0 | 1 | 0 |" in text, text
    assert "| `mixed/b_payments_fail.spec.js` | emulator | failed | 2 | " in text, text

    root_el, cases = junit_cases(junit)
    assert (root_el.get("tests"), root_el.get("failures"), root_el.get("errors")) == ("3", "1", "0")
    failure = cases["mixed/b_payments_fail.spec.js"].find("failure")
    assert failure is not None and "assertion failed" in failure.get("message")
    assert "--- log tail (attempt 2) ---" in failure.text and "1 failed" in failure.text  # the agent's log tail
    flaky = cases["mixed/c_onboarding_flaky.spec.js"]
    assert flaky.find("failure") is None and flaky.find("flakyFailure") is not None
    props = {p.get("name"): p.get("value") for p in flaky.find("properties")}
    assert props["flaky"] == "true" and props["attempts"] == "2"
    assert "passed on attempt 2" in flaky.find("system-out").text
    assert cases["mixed/a_ok.spec.js"].find("flakyFailure") is None


def test_fail_fast_cancels_the_rest(stack: Stack, tmp_path: Path) -> None:
    specs(stack.workdir, "failfast", "a_fail.spec.js", "b_slow.spec.js", "c_slow.spec.js")
    app = app_version("failfast")
    junit = tmp_path / "junit.xml"
    r = stack.cli(
        *run_args(app, "failfast", "--retries", "0", "--fail-fast", "1", "--junit", str(junit), "--json"),
        timeout=60,
    )
    assert r.returncode == 1, describe(r)
    doc = json.loads(r.stdout)
    status = {j["test"]: j["status"] for j in doc["jobs"]}
    assert status["failfast/a_fail.spec.js"] == "failed", doc
    assert status["failfast/b_slow.spec.js"] == "cancelled" and status["failfast/c_slow.spec.js"] == "cancelled", doc
    assert doc["fail_fast"] is True and doc["counts"]["cancelled"] == 2
    _, cases = junit_cases(junit)
    skipped = cases["failfast/b_slow.spec.js"].find("skipped")
    assert skipped is not None and skipped.get("message") == "cancelled"


def test_timeout_exits_3_and_reports_unfinished(stack: Stack, tmp_path: Path) -> None:
    specs(stack.workdir, "timeout", "b_slow.spec.js", "c_slow.spec.js")
    app = app_version("timeout")
    junit = tmp_path / "junit.xml"
    began = time.monotonic()
    r = stack.cli(*run_args(app, "timeout", "--timeout", "1", "--junit", str(junit), "--target", "device"))
    took = time.monotonic() - began
    assert r.returncode == 3, describe(r)
    assert took < SLOW + 10, took
    assert "Timed out after 1 s; the run goes on" in r.stdout, describe(r)
    run_id = re.search(r"qgjob cancel --run-id (run-[0-9a-f]+)", r.stdout).group(1)
    root_el, cases = junit_cases(junit)
    assert root_el.get("errors") == "2"
    assert cases["timeout/b_slow.spec.js"].find("error").get("type") == "unfinished"
    r = stack.cli("cancel", "--run-id", run_id)  # free the agent for the other tests
    assert r.returncode == 0, describe(r)


def test_rerun_while_active_attaches_and_a_finished_run_does_not_block(stack: Stack) -> None:
    specs(stack.workdir, "attach", "b_slow.spec.js", "c_slow.spec.js")
    app = app_version("attach")
    args = [str(QGJOB), *run_args(app, "attach/*.spec.js", "--target", "browserstack", "--json")]
    first = subprocess.Popen(
        args, cwd=stack.workdir, env=stack.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while len(jobs_of(stack, app)) < 2:
            assert time.monotonic() < deadline, "the first run never submitted its jobs"
            time.sleep(0.2)
        r = stack.cli(*run_args(app, "attach/*.spec.js", "--target", "browserstack", "--json"))
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, f"first run:\n{out}\n{err}"
    assert r.returncode == 0, describe(r)
    one, two = json.loads(out), json.loads(r.stdout)
    assert one["attached"] is False and one["created"] == 2
    assert two["attached"] is True and two["created"] == 0
    assert two["run_id"] == one["run_id"]
    assert sorted(j["job_id"] for j in two["jobs"]) == sorted(j["job_id"] for j in one["jobs"])
    assert {j["status"] for j in two["jobs"]} == {"passed"}
    assert len(jobs_of(stack, app)) == 2  # nothing was submitted twice

    # The run is finished: the same command starts a new run (the next generation of the id).
    r = stack.cli(*run_args(app, "attach/*.spec.js", "--target", "browserstack", "--json", "--timeout", "1"))
    three = json.loads(r.stdout)
    assert three["attached"] is False and three["created"] == 2, three
    assert three["run_id"] == f"{one['run_id']}-2"
    assert len(jobs_of(stack, app)) == 4
    assert stack.cli("cancel", "--run-id", three["run_id"]).returncode == 0


# --- the stream breaks: a proxy in front of the real API ------------------------------


class Proxy:
    """Forwards every request to the real API; ``/v1/stream`` answers 404
    (``mode="404"``), or its first connection is cut after the first message
    that carries an id (``"cut"``)."""

    def __init__(self, upstream: str, mode: str) -> None:
        self.upstream = upstream
        self.mode = mode
        self.stream_requests: list[dict[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.forward(self)

            def do_POST(self) -> None:
                proxy.forward(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def forward(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("content-length") or 0))
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        is_stream = h.path.startswith("/v1/stream")
        if is_stream:
            self.stream_requests.append({k.lower(): v for k, v in h.headers.items()})
            if self.mode == "404":
                h.send_response(404)
                h.send_header("content-type", "application/json")
                h.end_headers()
                h.wfile.write(b'{"error": "not_found", "message": "no such route"}')
                return
        cut = is_stream and self.mode == "cut" and len(self.stream_requests) == 1
        with (
            httpx.Client(timeout=httpx.Timeout(10, read=None)) as client,
            client.stream(h.command, self.upstream + h.path, headers=headers, content=body or None) as up,
        ):
            h.send_response(up.status_code)
            for k, v in up.headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                    h.send_header(k, v)
            h.send_header("connection", "close")
            h.end_headers()
            if not cut:
                for chunk in up.iter_bytes():
                    h.wfile.write(chunk)
                    h.wfile.flush()
                return
            seen_id = False
            for line in up.iter_lines():
                h.wfile.write(line.encode() + b"\n")
                h.wfile.flush()
                seen_id = seen_id or line.startswith("id:")
                if seen_id and line == "":
                    break  # drop the connection after the first message that carries an id
            h.close_connection = True

    def __enter__(self) -> Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_stream_404_falls_back_to_polling(stack: Stack) -> None:
    specs(stack.workdir, "poll404", "login.spec.js", "search.spec.js")
    app = app_version("poll404")
    creds = stack.credentials()
    with Proxy(creds["url"], "404") as proxy:
        r = stack.cli(*run_args(app, "poll404", "--json", "--timeout", "90", "--url", proxy.url))
    assert r.returncode == 0, describe(r)
    doc = json.loads(r.stdout)
    assert [j["status"] for j in doc["jobs"]] == ["passed", "passed"]
    assert doc["stream"]["used"] is False and doc["stream"]["polls"] >= 1
    assert any("HTTP 404" in f for f in doc["stream"]["failures"]), doc["stream"]
    assert proxy.stream_requests, "the stream was never tried"


def test_cut_stream_resumes_with_last_event_id(stack: Stack) -> None:
    specs(stack.workdir, "cut", "a.spec.js", "b.spec.js", "c.spec.js")  # 1.5 s each: the stream is back before the end
    app = app_version("cut")
    creds = stack.credentials()
    with Proxy(creds["url"], "cut") as proxy:
        r = stack.cli(*run_args(app, "cut", "--json", "--timeout", "90", "--url", proxy.url))
    assert r.returncode == 0, describe(r)
    doc = json.loads(r.stdout)
    assert [j["status"] for j in doc["jobs"]] == ["passed"] * 3
    assert doc["stream"]["used"] is True and doc["stream"]["failures"], doc["stream"]
    assert "last-event-id" not in proxy.stream_requests[0]
    resumed = [h["last-event-id"] for h in proxy.stream_requests[1:] if "last-event-id" in h]
    assert resumed and all(v.isdigit() for v in resumed), proxy.stream_requests


def test_on_a_terminal_a_live_progress_bar_replaces_the_lines(stack: Stack) -> None:
    """Under a pseudo-terminal `qgjob run` draws rich's bar with the counts, not one line per change."""
    import os
    import pty

    root = stack.workdir
    specs(root, "tty", "a.spec.js", "b_fail.spec.js", "c.spec.js")
    app = app_version("tty")
    main, follower = pty.openpty()
    env = stack.env(COLUMNS="160", LINES="40", TERM="xterm-256color")
    proc = subprocess.Popen(
        [str(QGJOB), *run_args(app, "tty/*.spec.js", "--retries", "0", "--timeout", "90")],
        cwd=root, env=env, stdin=follower, stdout=follower, stderr=follower,
    )  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not data:
            break
        chunks.append(data)
    code = proc.wait(60)
    os.close(main)
    screen = b"".join(chunks).decode(errors="replace")
    assert code == 1, screen  # one spec failed
    assert "\x1b[" in screen  # drawn with terminal control sequences
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert re.search(r"queued 0\s+running 0\s+passed 2\s+failed 1\s+flaky 0", text), text  # the bar's counts
    assert "3/3" in text  # the bar's done / total
    assert "-> failed | tty/b_fail.spec.js" in text  # a failure is printed above the bar as it happens
    assert "-> passed | tty/a.spec.js" not in text  # passes only move the bar
    assert "┃ test" in text  # the closing table, drawn by rich
