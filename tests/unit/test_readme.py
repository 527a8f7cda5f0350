"""The README's claims that code can check: subject examples and the CLI usage."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from eventstore.subjects import Subjects, encode_token
from qgjob.cli import app

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_encoding_examples_are_what_the_code_produces() -> None:
    assert f"`v1.2.3` is `{encode_token('v1.2.3')}`" in README
    assert f"`build 42/rc` is\n`{encode_token('build 42/rc')}`" in README


def test_nats_commands_use_subjects_the_store_writes() -> None:
    s = Subjects()
    group = s.jobs("2.4.0", "emulator").rsplit(".", 2)[0]  # qgjob.job.<app>.<target>
    assert f"sub '{group}.>'" in README
    assert "sub 'qgjob.job.*.*.acme.*'" in README
    assert s.jobs(org_id="acme") == "qgjob.job.*.*.acme.*"
    assert s.job("2.4.0", "emulator", "acme", "JOB_ID").endswith(".JOB_ID")
    for prefix in re.findall(r"\| `(qgjob\.\w+)\.", README):
        assert prefix.split(".")[1] in {"job", "batch", "agent", "claim", "idem", "token"}


def test_every_nats_command_names_subjects_the_store_writes() -> None:
    """Each documented subject, with its placeholder filled, matches subjects the
    store builds for those values (NATS wildcard rules), and nothing else."""
    s = Subjects()
    written = {
        "group": s.job("2.4.0", "emulator", "acme", "job_1"),
        "other build": s.job("2.4.1", "emulator", "acme", "job_2"),
        "device": s.job("2.4.0", "device", "globex", "job_3"),
        "batch": s.batch("2.4.0", "emulator", "bat_1"),
        "agent": s.agent("device", "dev-1"),
        "heartbeat": s.heartbeat("dev-1"),
        "cancel notice": s.cancel_notice("dev-1"),
    }
    documented = re.findall(r"^nats (?:sub(?: --all)?|stream view QGJOB --subject) '([^']+)'", README, re.M)
    expected = {
        "qgjob.job.2%2E4%2E0.emulator.>": {"group"},
        "qgjob.job.*.*.acme.*": {"group", "other build"},
        "qgjob.job.*.device.>": {"device"},
        "qgjob.batch.>": {"batch"},
        "qgjob.agent.>": {"agent"},
        "_hb.qgjob.*": {"heartbeat"},
        "_cx.qgjob.*": {"cancel notice"},
        "qgjob.job.*.*.*.job_1": {"group"},
    }
    assert set(documented) >= set(expected) - {"qgjob.job.*.*.*.job_1"}
    for pattern in documented:
        concrete = pattern.replace("JOB_ID", "job_1")
        assert concrete in expected, f"README documents {pattern!r}; add it to this test"
        matched = {name for name, subject in written.items() if _matches(concrete, subject)}
        assert matched == expected[concrete], (pattern, matched)


def _matches(pattern: str, subject: str) -> bool:
    p, t = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(t) > i
        if i >= len(t) or (token != "*" and token != t[i]):
            return False
    return len(p) == len(t)


def test_the_audit_commands_are_documented() -> None:
    for text in ("qgjob tail", "--run-id ID", "qgjob replay --until", "--log-format json", "GET /v1/tail"):
        assert text in README, text


def test_every_cli_command_is_documented() -> None:
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    commands = re.findall(r"│ (\w+)\s{2,}", result.output)
    assert {"submit", "status", "wait", "list", "cancel", "events", "up", "demo", "serve", "agent", "replay"} <= set(
        commands
    )
    for command in commands:
        assert f"qgjob {command}" in README or f"| {command}" in README, f"`qgjob {command}` is not in the README"
