"""The composite action `.github/actions/qgjob` runs a suite against a real stack.

Its steps run locally in order: setup-python stands in as this interpreter and
the install step is checked (it installs the CLI alone from the action's own
repository) but not run, since this interpreter has the package already. The
run step gets its inputs through `env` exactly as the action maps them, with
`GITHUB_OUTPUT` and `GITHUB_STEP_SUMMARY` pointed at temp files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
ACTION = ROOT / ".github" / "actions" / "qgjob" / "action.yml"
INPUT = re.compile(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}")


def load() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(ACTION.read_text())
    return doc


def run_action(stack: Stack, workspace: Path, tmp_path: Path, specs: str) -> tuple[int, dict[str, str], str]:
    action = load()
    creds = stack.credentials()
    given = {
        "server-url": creds["url"],
        "token": creds["token"],
        "org-id": "acme",
        "app-version-id": f"act-{uuid.uuid4().hex[:6]}",
        "specs": specs,
    }
    inputs = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()} | given
    output, summary = tmp_path / "output", tmp_path / "summary"
    output.write_text("")
    summary.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QGJOB_")}
    env |= {"PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "GITHUB_OUTPUT": str(output),
            "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_ACTIONS": "true", "RUNNER_TEMP": str(tmp_path),
            "GITHUB_ACTION_PATH": str(ROOT / ".github" / "actions" / "qgjob")}  # fmt: skip
    code, log = 0, ""
    for step in action["runs"]["steps"]:
        if "uses" in step:
            assert step["uses"].startswith("actions/setup-python@")
            continue
        script = step["run"]
        if "pip install" in script:
            assert '"$GITHUB_ACTION_PATH/../../.."' in script and "[server]" not in script
            continue
        step_env = {k: INPUT.sub(lambda m: inputs[m.group(1)], str(v)) for k, v in step.get("env", {}).items()}
        assert not any("${{" in line for line in script.splitlines()), "inputs must reach the script through env"
        done = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", script], cwd=workspace, env=env | step_env,
            capture_output=True, text=True, timeout=150,
        )  # fmt: skip
        code, log = done.returncode, done.stdout + done.stderr
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return code, outputs, log + summary.read_text()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "repo"
    shutil.copytree(ROOT / "examples", ws / "examples")
    return ws


def test_the_action_declares_what_another_repository_needs() -> None:
    action = load()
    assert action["runs"]["using"] == "composite"
    assert {"server-url", "token", "org-id", "app-version-id", "target", "specs", "priority"} <= set(action["inputs"])
    assert {"run-id", "passed", "failed"} <= set(action["outputs"])


def test_the_action_passes_a_green_suite_and_reports_its_counts(make_stack, workspace: Path, tmp_path: Path) -> None:
    stack = make_stack(agents=1).start()
    code, outputs, log = run_action(
        stack, workspace, tmp_path, "examples/specs/login.spec.js\nexamples/specs/search.spec.js"
    )
    assert code == 0, log
    assert outputs["run-id"].startswith("run-")
    assert (outputs["passed"], outputs["failed"]) == ("2", "0")
    assert (workspace / "qgjob-junit.xml").exists()


def test_the_action_fails_when_a_spec_fails(make_stack, workspace: Path, tmp_path: Path) -> None:
    stack = make_stack(agents=1).start()
    code, outputs, log = run_action(
        stack, workspace, tmp_path, "examples/specs/login.spec.js examples/specs-failing/*.spec.js"
    )
    assert code == 1, log
    assert (outputs["passed"], outputs["failed"]) == ("1", "1")
    assert "::error file=examples/specs-failing/payments_fail.spec.js" in log
