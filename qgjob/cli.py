"""The ``qgjob`` command line. Each command parses, calls one function, prints.

Exit codes: 0 all passed; 1 a job failed, errored or was cancelled; 2 bad usage
or rejected input; 3 service unreachable or timed out.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import msgspec
import typer

from eventstore.errors import QgjobError
from qgjob import settings as settings_mod
from qgjob.client import Client, ClientError, Unreachable
from qgjob.watch import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, exit_code_for, wait

app = typer.Typer(
    help="qgjob: queue, batch and run AppWright test jobs on emulators, devices and BrowserStack.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
token_app = typer.Typer(help="Manage API tokens (admin).", no_args_is_help=True)
app.add_typer(token_app, name="token")

UrlOpt = Annotated[str | None, typer.Option("--url", help="API URL (else $QGJOB_URL, else the credentials file).")]
TokenOpt = Annotated[
    str | None, typer.Option("--token", help="Bearer token (else $QGJOB_TOKEN, else the credentials file).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document and nothing else on stdout.")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Data folder (else $QGJOB_DATA_DIR, else .qgjob).")]
LeaseOpt = Annotated[
    float, typer.Option("--lease-seconds", help="An agent silent this long is lost; its jobs go back.")
]
BackoffOpt = Annotated[
    float, typer.Option("--retry-backoff-seconds", help="First retry waits about this long, doubling after.")
]
NatsUrlOpt = Annotated[str | None, typer.Option("--nats-url", help="Else $QGJOB_NATS_URL, else the credentials file.")]
DatabaseUrlOpt = Annotated[
    str | None, typer.Option("--database-url", help="Else $QGJOB_DATABASE_URL, else the credentials file.")
]
InstallValueOpt = Annotated[
    float,
    typer.Option(
        "--install-value",
        min=0.0,
        help="Seconds of a run's latency one install is worth, where more than its duration (less for "
        "urgent priorities): higher saves installs, lower saves time. 0: an install costs its duration.",
    ),
]
TARGET_HELP = "emulator, device or browserstack"


def _emit_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


SERVER_MODULES = ("nats", "asyncpg", "starlette", "uvicorn", "prometheus_client", "psutil")


def _needs_server(command: str) -> None:
    """Exit 2 with the install hint when the server extra is not installed."""
    import importlib.util

    if any(importlib.util.find_spec(name) is None for name in SERVER_MODULES):
        _fail(f"qgjob {command} needs the server extra: pip install 'qgjob[server]'", EXIT_USAGE)


def _client(url: str | None, token: str | None, data_dir: Path | None = None) -> Client:
    s = settings_mod.load(url=url, token=token, data_dir_=data_dir)
    if not s.token:
        _fail(
            "no token: pass --token, set QGJOB_TOKEN, or run `qgjob up` in this folder to create one",
            EXIT_USAGE,
        )
    return Client(s.url, s.token)


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a client call, mapping errors to exit codes."""
    try:
        return fn(*args, **kwargs)
    except Unreachable as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    except ClientError as exc:
        code = EXIT_UNAVAILABLE if exc.status >= 500 else EXIT_USAGE
        if exc.status == 404:
            code = EXIT_USAGE
        _fail(f"{exc} (HTTP {exc.status})", code)


def _transition(job: dict[str, Any], before: str | None) -> None:
    if before is None:
        return
    extra = ""
    if job["status"] in ("failed", "error") and job.get("error"):
        extra = f" ({job['error']})"
    elif job["status"] == "passed" and job.get("flaky"):
        extra = f" (flaky: passed on attempt {job['attempts']})"
    typer.echo(f"Job {job['job_id']} -> {job['status']}{extra}")


# --- jobs ---------------------------------------------------------------------


@app.command()
def submit(
    org_id: Annotated[str, typer.Option("--org-id", help="Your organisation.")],
    app_version_id: Annotated[str, typer.Option("--app-version-id", help="The build under test.")],
    test: Annotated[list[str], typer.Option("--test", help="Spec path; repeat for several.")],
    target: Annotated[str, typer.Option("--target", help=TARGET_HELP)] = "emulator",
    priority: Annotated[int, typer.Option("--priority", help="Lower runs first.")] = 5,
    retries: Annotated[int, typer.Option("--retries", help="Retries of a failed test.")] = 3,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Group these jobs under a run id.")] = None,
    wait_: Annotated[bool, typer.Option("--wait", help="Wait until the jobs finish.")] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="With --wait: give up after S seconds (exit 3).")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="Retried requests with this key get the same answer.")
    ] = None,
    json_: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Submit test jobs for one build and target."""
    client = _client(url, token)
    common = {
        "org_id": org_id,
        "app_version_id": app_version_id,
        "target": target,
        "priority": priority,
        "max_retries": retries,
    }
    if run_id:
        common["run_id"] = run_id
    if len(test) == 1:
        body: dict[str, Any] = {**common, "test": test[0]}
    else:
        body = {**common, "jobs": [{"test": t} for t in test]}
    status, answer = _call(client.submit, body, idempotency_key=idempotency_key)
    items = answer["jobs"] if "jobs" in answer else [answer]
    ids: list[str] = []
    for item in items:
        if status == 409 or item.get("duplicate_of"):
            ids.append(item.get("duplicate_of") or item["job_id"])
            if not json_:
                typer.echo(f"Duplicate of {item.get('duplicate_of') or item['job_id']} | Status: {item['status']}")
        else:
            ids.append(item["job_id"])
            if not json_:
                typer.echo(f"Job submitted! ID: {item['job_id']} | Status: {item['status']}")
    if not wait_:
        if json_:
            _emit_json(answer)
        raise typer.Exit(EXIT_OK)
    result = _call(wait, client, job_ids=ids, timeout=timeout, on_change=None if json_ else _transition)
    if json_:
        _emit_json({"submitted": answer, "jobs": list(result.jobs.values()), "timed_out": result.timed_out})
    elif result.timed_out:
        typer.echo(f"Timed out after {timeout}s", err=True)
    raise typer.Exit(result.exit_code)


@app.command()
def status(
    job_id: Annotated[str, typer.Option("--job-id", help="The job.")],
    json_: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show one job's status."""
    job = _call(_client(url, token).job, job_id)
    if json_:
        _emit_json(job)
    else:
        line = f"Job {job['job_id']} | Status: {job['status']} | Attempts: {job['attempts']}"
        if job.get("flaky"):
            line += " | flaky"
        line += f" | {job['test']} on {job['target']} ({job['app_version_id']})"
        typer.echo(line)
        if job.get("error") and job["status"] in ("failed", "error", "retrying"):
            typer.echo(f"  error: {job['error']}")
    raise typer.Exit(exit_code_for([job["status"]]))


@app.command("wait")
def wait_cmd(
    job_id: Annotated[list[str] | None, typer.Option("--job-id", help="A job to wait on; repeat for several.")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Wait on every job of a run.")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Give up after S seconds (exit 3).")] = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed job (exit 1).")] = False,
    json_: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Wait until jobs finish; exit 0 if all passed, 1 if any failed, 3 on timeout."""
    if bool(job_id) == bool(run_id):
        _fail("pass --job-id (one or more) or --run-id, not both", EXIT_USAGE)
    client = _client(url, token)
    result = _call(
        wait,
        client,
        job_ids=job_id,
        run_id=run_id,
        timeout=timeout,
        fail_fast=fail_fast,
        on_change=None if json_ else _transition,
    )
    if json_:
        _emit_json({"jobs": list(result.jobs.values()), "timed_out": result.timed_out})
    else:
        counts: dict[str, int] = {}
        for job in result.jobs.values():
            counts[job["status"]] = counts.get(job["status"], 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        typer.echo(f"{'Timed out' if result.timed_out else 'Done'}: {summary}")
    raise typer.Exit(result.exit_code)


@app.command("run")
def run_cmd(
    paths: Annotated[list[str], typer.Argument(help="Spec files, folders or globs ('tests/**/*.spec.js').")],
    org_id: Annotated[str, typer.Option("--org-id", help="Your organisation.")],
    app_version_id: Annotated[str, typer.Option("--app-version-id", help="The build under test.")],
    target: Annotated[str, typer.Option("--target", help=TARGET_HELP)],
    priority: Annotated[int, typer.Option("--priority", help="Lower runs first.")] = 5,
    retries: Annotated[int, typer.Option("--retries", help="Retries of a failed test.")] = 3,
    junit: Annotated[Path | None, typer.Option("--junit", help="Write a JUnit XML report here.")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Give up after S seconds (exit 3).")] = None,
    fail_fast: Annotated[
        int | None, typer.Option("--fail-fast", metavar="N", help="Cancel the rest of the run after N failed jobs.")
    ] = None,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Follow /v1/stream (else poll the run).")] = True,
    json_: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Run a suite as one run: submit every spec, follow to the end, report; a re-run attaches."""
    import os
    import time

    from qgjob import report
    from qgjob import run as run_mod

    began = time.monotonic()
    if target not in settings_mod.TARGETS:
        _fail(f"--target: {target!r} is not allowed; allowed: {', '.join(settings_mod.TARGETS)}", EXIT_USAGE)
    if fail_fast is not None and fail_fast < 1:
        _fail("--fail-fast: allowed: 1 or more", EXIT_USAGE)
    if timeout is not None and timeout <= 0:
        _fail("--timeout: allowed: a number of seconds above 0", EXIT_USAGE)
    try:
        specs = run_mod.expand(paths)
    except run_mod.NoSpecs as exc:
        _fail(str(exc), EXIT_USAGE)
    suite = run_mod.Suite(
        org_id, app_version_id, target, tuple(specs), priority, retries, labels=run_mod.ci_labels(os.environ)
    )
    options = run_mod.Options(junit=junit, timeout=timeout, fail_fast=fail_fast, json=json_, stream=stream)
    live = not json_ and sys.stdout.isatty()
    display = report.Display() if json_ else report.Live() if live else report.Lines()
    outcome = _call(run_mod.execute, _client(url, token), suite, options, env=os.environ, display=display, began=began)
    if json_:
        _emit_json(outcome.document)
    raise typer.Exit(outcome.exit_code)


@app.command("list")
def list_cmd(
    status_: Annotated[str | None, typer.Option("--status", help="Only jobs with this status.")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id")] = None,
    app_version_id: Annotated[str | None, typer.Option("--app-version-id")] = None,
    target: Annotated[str | None, typer.Option("--target", help=TARGET_HELP)] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many (1-1000).")] = 100,
    cursor: Annotated[str | None, typer.Option("--cursor", help="Continue after this job id.")] = None,
    json_: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """List jobs, oldest first."""
    page = _call(
        _client(url, token).jobs,
        status=status_,
        run_id=run_id,
        app_version_id=app_version_id,
        target=target,
        limit=limit,
        cursor=cursor,
    )
    if json_:
        _emit_json(page)
        return
    rows = [
        (j["job_id"], j["status"], str(j["attempts"]), j["target"], j["app_version_id"], str(j["priority"]), j["test"])
        for j in page["jobs"]
    ]
    typer.echo(_table(("JOB", "STATUS", "ATTEMPTS", "TARGET", "APP VERSION", "PRIO", "TEST"), rows))
    if page.get("next_cursor"):
        typer.echo(f"more: --cursor {page['next_cursor']}")


@app.command()
def cancel(
    job_id: Annotated[list[str] | None, typer.Option("--job-id", help="A job to cancel; repeat for several.")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Cancel every unfinished job of a run.")] = None,
    json_: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Cancel jobs: queued ones at once, running ones are stopped."""
    if bool(job_id) == bool(run_id):
        _fail("pass --job-id (one or more) or --run-id, not both", EXIT_USAGE)
    client = _client(url, token)
    if run_id:
        answer = _call(client.cancel_run, run_id)
        if json_:
            _emit_json(answer)
        else:
            typer.echo(f"Run {run_id}: {answer['cancelled']} job(s) cancelled")
        return
    answers = []
    for jid in job_id or []:
        answer = _call(client.cancel, jid)
        answers.append(answer)
        if not json_:
            typer.echo(f"Job {jid} -> cancelled")
    if json_:
        _emit_json(answers if len(answers) > 1 else answers[0])


@app.command()
def events(
    job_id: Annotated[str | None, typer.Option("--job-id", help="The job whose history to show.")] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="The run whose history to show: its jobs and their batches.")
    ] = None,
    json_: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """A job's or a run's history, read from the event stream: one line per event."""
    from qgjob.audit import ONE_JOB, ONE_RUN, event_line

    if bool(job_id) == bool(run_id):
        _fail("pass --job-id or --run-id, not both", EXIT_USAGE)
    client = _client(url, token)
    answer = _call(client.events, job_id) if job_id else _call(client.run_events, run_id)
    if json_:
        _emit_json(answer)
        return
    for e in answer["events"]:
        typer.echo(event_line(e, omit=ONE_JOB if job_id else ONE_RUN))


@app.command()
def tail(
    org_id: Annotated[str | None, typer.Option("--org-id", help="Only this org (org tokens: their own).")] = None,
    app_version_id: Annotated[str | None, typer.Option("--app-version-id", help="Only this build.")] = None,
    target: Annotated[str | None, typer.Option("--target", help=TARGET_HELP)] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Only the jobs of this run.")] = None,
    type_: Annotated[
        list[str] | None, typer.Option("--type", help="Only this event type, e.g. JobFailed; repeat for several.")
    ] = None,
    since: Annotated[
        int | None, typer.Option("--since", help="Start after this stream sequence (0: from the first event).")
    ] = None,
    count: Annotated[int | None, typer.Option("--count", help="Stop after this many events.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per event and line on stdout.")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Follow events live as they are stored, filtered by the server; Ctrl-C stops."""
    from qgjob.audit import event_line

    if since is not None and since < 0:
        _fail("--since: allowed: a stream sequence, 0 or more", EXIT_USAGE)
    if count is not None and count < 1:
        _fail("--count: allowed: 1 or more", EXIT_USAGE)
    client = _client(url, token)
    feed = client.tail(
        org_id=org_id, app_version_id=app_version_id, target=target, run_id=run_id, type=type_ or [], since=since
    )
    seen = 0
    last: int | None = since
    try:
        while (item := _call(next, feed, None)) is not None:
            kind, event = item
            if kind == "ready":
                typer.echo(
                    f"Following {', '.join(event['subjects'])} from sequence {event['seq']} (Ctrl-C to stop)", err=True
                )
                continue
            last = event["seq"]
            if json_:
                _emit_json(event)
            else:
                typer.echo(event_line(event))
            sys.stdout.flush()
            seen += 1
            if count is not None and seen >= count:
                raise typer.Exit(EXIT_OK)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_OK) from None
    resume = f"; resume with --since {last}" if last is not None else ""
    _fail(f"the server closed the stream{resume}", EXIT_UNAVAILABLE)


@app.command()
def logs(
    job_id: Annotated[str, typer.Option("--job-id", help="The job whose output to show.")],
    attempt: Annotated[int | None, typer.Option("--attempt", help="Only this attempt (default: all).")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """The whole output of a job's test runs (the job status keeps only the tail)."""
    data = _call(_client(url, token).logs, job_id, attempt)
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


@app.command()
def agents(json_: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Agents and what they hold."""
    answer = _call(_client(url, token).agents)
    if json_:
        _emit_json(answer)
        return
    rows = [
        (a["agent_id"], a["target"], a["state"], a.get("installed_app") or "-", a.get("current_batch") or "-")
        for a in answer["agents"]
    ]
    typer.echo(_table(("AGENT", "TARGET", "STATE", "INSTALLED", "BATCH"), rows))


@app.command()
def metrics(json_: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Counts by status, queue depth per group, installs."""
    answer = _call(_client(url, token).metrics)
    if json_:
        _emit_json(answer)
        return
    typer.echo("jobs: " + ", ".join(f"{s}={n}" for s, n in answer["jobs_by_status"].items()))
    typer.echo(f"retries: {answer['retries']}; flaky jobs: {answer['flaky']}")
    typer.echo(
        f"installs: {answer['installs']} over {answer['batches']} batches; "
        f"{answer['installs_avoided']} test runs needed no install of their own"
    )
    typer.echo(f"projection lag: {answer['projection_lag']} events, {answer['projection_lag_s']:.1f} s")
    for target, states in sorted(answer["agents_by_state"].items()):
        typer.echo(f"agents {target}: " + ", ".join(f"{state}={n}" for state, n in sorted(states.items())))
    for q in answer["queues"]:
        typer.echo(
            f"queue {q['app_version_id']}/{q['target']}: {q['depth']} waiting, best priority {q['best_priority']}, "
            f"oldest {q['oldest_age_s']:.0f} s"
        )


@token_app.command("create")
def token_create(
    org_id: Annotated[str, typer.Option("--org-id", help="The org the new token belongs to.")],
    json_: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create a token for one org (needs an admin token)."""
    answer = _call(_client(url, token).create_token, org_id)
    if json_:
        _emit_json(answer)
    else:
        typer.echo(f"Token for org {org_id}: {answer['token']}")
        typer.echo("It is shown once; store it as QGJOB_TOKEN in your CI secrets.")


@token_app.command("admin")
def token_admin(
    json_: JsonOpt = False,
    nats_url: NatsUrlOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create an admin token straight in the event store, to start a deployment (needs NATS, not the API)."""
    _needs_server("token admin")
    import asyncio

    from eventstore import EventStore
    from qgjob.api.auth import create_token

    s = settings_mod.load(nats_url=nats_url, data_dir_=data_dir)

    async def make() -> str:
        store = await EventStore.connect(
            s.nats_url, stream=s.stream, prefix=s.prefix, name="qgjob-token", replicas=s.stream_replicas
        )
        try:
            await store.ensure_stream()
            token, _ = await create_token(store, org_id=None, admin=True)
            return token
        finally:
            await store.close()

    try:
        admin = asyncio.run(make())
    except QgjobError as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    if json_:
        _emit_json({"token": admin, "admin": True})
    else:
        typer.echo(f"Admin token: {admin}")
        typer.echo("It is shown once; create org tokens with it: qgjob token create --org-id ORG")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


# --- servers ------------------------------------------------------------------


def _configure_logging(level: str, fmt: str) -> None:
    from qgjob.logs import configure

    if level.lower() not in ("debug", "info", "warning", "error"):
        _fail(f"--log-level: {level!r} is not allowed; allowed: debug, info, warning, error", EXIT_USAGE)
    try:
        configure(level, fmt)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)


LogLevelOpt = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")]
MetricsPortOpt = Annotated[
    int,
    typer.Option(
        "--metrics-port",
        help="Serve this process's Prometheus metrics at http://HOST:PORT/metrics (0: off; the API has /metrics).",
    ),
]
MetricsHostOpt = Annotated[str, typer.Option("--metrics-host", help="Address for --metrics-port.")]
LogFormatOpt = Annotated[str, typer.Option("--log-format", help="text or json.")]


@app.command()
def up(
    data_dir: DataDirOpt = None,
    port: Annotated[int, typer.Option("--port", help="API port on 127.0.0.1 (0: any free port).")] = 8765,
    agents_: Annotated[int, typer.Option("--agents", help="Simulated agents per target (0 for none).")] = 1,
    test_seconds: Annotated[float, typer.Option("--test-seconds", help="How long a simulated test takes.")] = 0.5,
    install_seconds: Annotated[
        float, typer.Option("--install-seconds", help="How long a simulated install takes.")
    ] = 2.0,
    simulate_file: Annotated[
        Path | None, typer.Option("--simulate-file", help="JSON durations and outcomes per test.")
    ] = None,
    org_id: Annotated[
        list[str] | None, typer.Option("--org-id", help="Also create a token for this org; repeat for several.")
    ] = None,
    retry_backoff_seconds: BackoffOpt = 1.0,
    lease_seconds: LeaseOpt = 15.0,
    install_value: InstallValueOpt = 0.0,
    log_level: LogLevelOpt = "warning",
    log_format: LogFormatOpt = "text",
) -> None:
    """Start the whole stack on this machine (NATS, Postgres, API, scheduler, projector, agents)."""
    _needs_server("up")
    from qgjob.stack.run import up as run_up

    _configure_logging(log_level, log_format)
    if agents_ < 0:
        _fail("--agents: allowed: 0 or more", EXIT_USAGE)
    try:
        code = run_up(
            settings_mod.data_dir(data_dir),
            port=port,
            agents=agents_,
            test_seconds=test_seconds,
            install_seconds=install_seconds,
            simulate_file=simulate_file,
            orgs=tuple(org_id or ()),
            lease_s=lease_seconds,
            retry_backoff_s=retry_backoff_seconds,
            install_value_s=install_value,
        )
    except QgjobError as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    raise typer.Exit(code)


@app.command()
def demo(
    data_dir: DataDirOpt = None,
    log_level: LogLevelOpt = "error",
) -> None:
    """Start a fresh stack, run a sample suite through it, print the report, stop."""
    _needs_server("demo")
    from qgjob.demo import run_demo

    _configure_logging(log_level, "text")
    raise typer.Exit(run_demo(data_dir))


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help="api, scheduler or projector")],
    host: Annotated[str, typer.Option("--host", help="api: address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="api: port.")] = 8765,
    workers: Annotated[int, typer.Option("--workers", help="api: worker processes sharing the port.")] = 1,
    org_queue_quota: Annotated[
        int | None,
        typer.Option(
            "--org-queue-quota",
            min=1,
            help="api: unfinished jobs one org may hold; a submission past it gets 429 "
            "(default: $QGJOB_ORG_QUEUE_QUOTA, else 100000).",
        ),
    ] = None,
    retry_backoff_seconds: BackoffOpt = 1.0,
    lease_seconds: LeaseOpt = 15.0,
    install_value: InstallValueOpt = 0.0,
    nats_url: NatsUrlOpt = None,
    database_url: DatabaseUrlOpt = None,
    data_dir: DataDirOpt = None,
    log_level: LogLevelOpt = "info",
    log_format: LogFormatOpt = "text",
    metrics_port: MetricsPortOpt = 0,
    metrics_host: MetricsHostOpt = "127.0.0.1",
) -> None:
    """Run one service in this process (production deployments)."""
    _needs_server("serve")
    from qgjob.services import ApiService, ProjectorService, SchedulerRunner, run_until_signalled, serve_metrics
    from qgjob.services import run as run_services
    from scheduler import policy

    _configure_logging(log_level, log_format)
    s = settings_mod.load(nats_url=nats_url, database_url=database_url, data_dir_=data_dir)
    if org_queue_quota is not None:
        s = s.with_(org_queue_quota=org_queue_quota)
    services: dict[str, Any] = {
        "api": lambda: ApiService(s, host=host, port=port, log_level=log_level),
        "scheduler": lambda: SchedulerRunner(
            s,
            policy.Config(retry_backoff_s=retry_backoff_seconds, install_value_s=install_value),
            lease_s=lease_seconds,
        ),
        "projector": lambda: ProjectorService(s),
    }
    if service not in services:
        _fail(f"service: {service!r} is not one of api, scheduler, projector", EXIT_USAGE)
    if service == "api" and workers > 1:
        import os

        import uvicorn

        from qgjob.logs import dict_config

        for key, value in (
            ("QGJOB_NATS_URL", s.nats_url),
            ("QGJOB_DATABASE_URL", s.database_url),
            ("QGJOB_ORG_QUEUE_QUOTA", str(s.org_queue_quota)),
        ):
            os.environ[key] = value
        uvicorn.run(
            "qgjob.api.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            log_config=dict_config(log_level, log_format),  # each worker logs like this process
            access_log=False,
            timeout_graceful_shutdown=3,  # open /v1/stream responses must not hold up a stop
        )
        return
    try:
        serve_metrics(metrics_port, metrics_host)
        run_services(run_until_signalled([services[service]()]))
    except QgjobError as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    except OSError as exc:
        _fail(f"cannot start {service}: {exc}", EXIT_UNAVAILABLE)


@app.command()
def agent(
    target: Annotated[str, typer.Option("--target", help=TARGET_HELP)],
    slots: Annotated[int, typer.Option("--slots", help="Batches this agent runs at once.")] = 1,
    runner: Annotated[str, typer.Option("--runner", help="simulate, command or appwright.")] = "simulate",
    command: Annotated[
        str | None, typer.Option("--command", help="command: template with {test}, {target}, {app_version_id}.")
    ] = None,
    install_command: Annotated[
        str | None, typer.Option("--install-command", help="Template run once per batch to install the build.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds one test may run (a job's own timeout wins).")
    ] = None,
    project: Annotated[
        list[str] | None, typer.Option("--project", help="appwright: TARGET=PROJECT, e.g. emulator=android.")
    ] = None,
    npx: Annotated[str, typer.Option("--npx", help="appwright: the npx command to use.")] = "npx",
    workdir: Annotated[Path | None, typer.Option("--workdir", help="Run tests in this folder.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Agent id (default: <target>-<host>-<pid>).")] = None,
    test_seconds: Annotated[float, typer.Option("--test-seconds", help="simulate: seconds per test.")] = 0.5,
    install_seconds: Annotated[float, typer.Option("--install-seconds", help="simulate: seconds per install.")] = 2.0,
    simulate_file: Annotated[
        Path | None, typer.Option("--simulate-file", help="simulate: JSON durations and outcomes.")
    ] = None,
    nats_url: NatsUrlOpt = None,
    data_dir: DataDirOpt = None,
    lease_seconds: LeaseOpt = 15.0,
    log_level: LogLevelOpt = "info",
    log_format: LogFormatOpt = "text",
    metrics_port: MetricsPortOpt = 0,
    metrics_host: MetricsHostOpt = "127.0.0.1",
) -> None:
    """Run an agent that takes batches for one target; SIGTERM drains it."""
    _needs_server("agent")
    import os
    import socket

    from agents.factory import RunnerOptions, make_runner, parse_projects
    from qgjob.services import AgentRunner, run_until_signalled, serve_metrics
    from qgjob.services import run as run_services

    _configure_logging(log_level, log_format)
    if target not in settings_mod.TARGETS:
        _fail(f"--target: {target!r} is not allowed; allowed: {', '.join(settings_mod.TARGETS)}", EXIT_USAGE)
    if slots < 1:
        _fail("--slots: allowed: 1 or more", EXIT_USAGE)
    s = settings_mod.load(nats_url=nats_url, data_dir_=data_dir)
    try:
        sim = make_runner(
            RunnerOptions(
                kind=runner,
                command=command,
                install_command=install_command,
                timeout_s=timeout,
                projects=parse_projects(project or []),
                npx=npx,
                cwd=workdir,
                test_seconds=test_seconds,
                install_seconds=install_seconds,
                simulate_file=simulate_file,
            )
        )
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    agent_id = name or f"{target}-{socket.gethostname()}-{os.getpid()}"
    try:
        agent_runner = AgentRunner(s, agent_id=agent_id, target=target, runner=sim, slots=slots, lease_s=lease_seconds)
        serve_metrics(metrics_port, metrics_host)
        run_services(run_until_signalled([agent_runner]))
    except QgjobError as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    except OSError as exc:
        _fail(f"cannot start the agent: {exc}", EXIT_UNAVAILABLE)


@app.command()
def replay(
    verify: Annotated[
        bool, typer.Option("--verify", help="Rebuild into a scratch schema and compare with live.")
    ] = False,
    schema: Annotated[
        str | None, typer.Option("--schema", help="Rebuild into this schema (default: qgjob_replay).")
    ] = None,
    keep: Annotated[bool, typer.Option("--keep", help="With --verify: keep the scratch schema.")] = False,
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            metavar="TIME|SEQ",
            help="Rebuild the projections as they stood at this moment: a stream sequence, or an ISO 8601 time "
            "(2025-01-31T14:03:00Z; without a zone: local time; 14:03 alone: today). Not with --verify.",
        ),
    ] = None,
    json_: JsonOpt = False,
    nats_url: NatsUrlOpt = None,
    database_url: DatabaseUrlOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Rebuild the projections from the event stream, now or as of --until (exit 1 if --verify finds differences)."""
    _needs_server("replay")
    import asyncio

    from qgjob.replay import run_replay

    s = settings_mod.load(nats_url=nats_url, database_url=database_url, data_dir_=data_dir)
    try:
        code, report = asyncio.run(run_replay(s, verify=verify, schema=schema, keep=keep, until=until))
    except QgjobError as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    if json_:
        _emit_json(report)
    else:
        for line in report["lines"]:
            typer.echo(line)
    raise typer.Exit(code)


@app.command()
def simulate(
    workload: Annotated[Path, typer.Argument(help="A workload JSON file (jobs, agents, install seconds).")],
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", help="qgjob, fifo or per-job-install; repeat for several (default: all)."),
    ] = None,
    install_value: InstallValueOpt = 0.0,
    json_: JsonOpt = False,
) -> None:
    """Run a workload through the scheduler in virtual time: installs, makespan, run latency, fairness."""
    from qgjob import simulation
    from scheduler.policy import Config

    try:
        reports = simulation.run(
            workload, tuple(policy) if policy else simulation.POLICIES, Config(install_value_s=install_value)
        )
    except simulation.WorkloadError as exc:
        _fail(str(exc), EXIT_USAGE)
    if json_:
        _emit_json(simulation.as_json(reports))
    else:
        typer.echo(simulation.table(reports))


def main() -> None:
    logging.captureWarnings(True)
    try:
        app(standalone_mode=True)
    except settings_mod.SettingError as exc:
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
