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


def test_every_cli_command_is_documented() -> None:
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    commands = re.findall(r"│ (\w+)\s{2,}", result.output)
    assert {"submit", "status", "wait", "list", "cancel", "events", "up", "demo", "serve", "agent", "replay"} <= set(
        commands
    )
    for command in commands:
        assert f"qgjob {command}" in README or f"| {command}" in README, f"`qgjob {command}` is not in the README"
