"""``.github/workflows/appwright-test.yml`` runs locally, step by step.

Each ``run:`` step is executed in order with bash (``-eo pipefail``, as the
runner does), in a copy of the repository's examples as the checked-out
workspace, with ``GITHUB_OUTPUT``, ``GITHUB_ENV`` and ``GITHUB_STEP_SUMMARY``
pointed at temp files and what a step writes to ``GITHUB_ENV`` carried into
the next ones. Steps are skipped after a failure unless ``if: always()``.

Two things stand in for GitHub: the ``uses:`` actions (checkout is the
workspace copy, setup-python is the test's own interpreter, the artifact
upload checks that its path exists), and ``pip install`` lines, which are
checked to install this repository with the server extra but not run,
because the package is installed already in the interpreter that runs the
tests (reinstalling it would replace the development install, and building
a wheel needs a package index).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import clean_env, kill_leftovers, leftover_servers

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "appwright-test.yml"
PINNED = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")
PIP_INSTALL = re.compile(r"^\s*(?:python3?\s+-m\s+)?pip3?\s+install\b(?P<args>.*)$")
EXPRESSION = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")
CONTEXTS = {"github.sha": "GITHUB_SHA", "github.workspace": "GITHUB_WORKSPACE", "runner.temp": "RUNNER_TEMP"}


@dataclass
class JobRun:
    steps: list[tuple[str, str]] = field(default_factory=list)  # (step, "success" | "failure" | "skipped")
    output: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(outcome == "failure" for _, outcome in self.steps)

    def outcome(self, prefix: str) -> str:
        return next(o for name, o in self.steps if name.startswith(prefix))


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines and ``NAME<<DELIMITER`` blocks, as the runner reads them."""
    out: dict[str, str] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            end = lines.index(delimiter, i + 1)
            out[name] = "\n".join(lines[i + 1 : end])
            i = end + 1
            continue
        if "=" in line:
            name, value = line.split("=", 1)
            out[name] = value
        i += 1
    return out


def expand_expressions(text: str, env: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in CONTEXTS:
            return env[CONTEXTS[name]]
        if name.startswith("env."):
            return env.get(name[4:], "")
        raise AssertionError(f"expression ${{{{ {name} }}}} is not supported by this local runner")

    return EXPRESSION.sub(one, text)


def without_installs(script: str) -> tuple[str, list[str]]:
    """The script with its ``pip install`` lines replaced by no-ops, and those lines."""
    kept, installs = [], []
    for line in script.splitlines():
        m = PIP_INSTALL.match(line)
        if m:
            installs.append(m.group("args").strip())
            kept.append(": pip install skipped by the local runner")
        else:
            kept.append(line)
    return "\n".join(kept) + "\n", installs


def run_job(workspace: Path, temp: Path, extra_env: dict[str, str]) -> JobRun:
    doc = yaml.safe_load(WORKFLOW.read_text())
    (job,) = doc["jobs"].values()
    names = ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_STEP_SUMMARY", "GITHUB_PATH")
    files = {name: temp / name.lower() for name in names}
    for path in files.values():
        path.write_text("")
    runner_temp = temp / "runner"
    runner_temp.mkdir()
    base = clean_env(
        GITHUB_ACTIONS="true",
        CI="true",
        GITHUB_WORKSPACE=str(workspace),
        RUNNER_TEMP=str(runner_temp),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **{k: str(v) for k, v in files.items()},
        **extra_env,
    )
    for scope in (doc.get("env") or {}, job.get("env") or {}):
        base.update({k: expand_expressions(str(v), base) for k, v in scope.items()})
    result = JobRun()
    installs: list[str] = []
    for n, step in enumerate(job["steps"]):
        name = step.get("name") or step.get("uses") or f"step {n}"
        condition = str(step.get("if", "success()")).strip()
        if condition.startswith("${{"):
            condition = condition[3:-2].strip()
        wanted = {"always()": True, "failure()": result.failed, "success()": not result.failed}.get(condition)
        assert wanted is not None, f"{name}: `if: {condition}` is not supported by this local runner"
        if not wanted:
            result.steps.append((name, "skipped"))
            continue
        env = {**base, **read_env_file(files["GITHUB_ENV"])}
        env.update({k: expand_expressions(str(v), env) for k, v in (step.get("env") or {}).items()})
        if "uses" in step:
            action = step["uses"]
            assert PINNED.match(action), f"{action}: actions must be pinned to a full commit SHA"
            if action.startswith("actions/upload-artifact@"):
                path = workspace / step["with"]["path"]
                ok = path.exists()
                result.output += f"[upload-artifact] {path}: {'found' if ok else 'missing'}\n"
                result.steps.append((name, "success" if ok else "failure"))
            else:
                assert action.split("@")[0] in ("actions/checkout", "actions/setup-python"), action
                result.steps.append((name, "success"))
            continue
        script, found = without_installs(expand_expressions(step["run"], env))
        installs += found
        script_path = temp / f"step-{n}.sh"
        script_path.write_text(script)
        cwd = workspace / step.get("working-directory", ".")
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script_path)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=240,
        )
        result.output += f"--- {name} (exit {proc.returncode})\n{proc.stdout}"
        result.steps.append((name, "success" if proc.returncode == 0 else "failure"))
    assert any(re.search(r"(^|\s)['\"]?\.\[[^]]*server[^]]*\]['\"]?(\s|$)", a) for a in installs), (
        f"no step installs this repository with the server extra: {installs}"
    )
    result.env = {**base, **read_env_file(files["GITHUB_ENV"])}
    return result


def workspace_copy(tmp_path: Path) -> Path:
    """What actions/checkout would give the job: the repository's files the steps use."""
    ws = tmp_path / "workspace"
    shutil.copytree(ROOT / "examples", ws / "examples")
    shutil.copytree(ROOT / ".github", ws / ".github")
    shutil.copy2(ROOT / "pyproject.toml", ws / "pyproject.toml")
    return ws


def check_stopped(job: JobRun) -> None:
    data = Path(job.env["QGJOB_DATA_DIR"])
    assert job.outcome("Stop") == "success", job.output
    leftovers = leftover_servers(data)
    killed = kill_leftovers(data)
    assert not leftovers, f"the workflow left servers running: {killed}"


def test_workflow_file_is_what_ci_needs() -> None:
    doc = yaml.safe_load(WORKFLOW.read_text())
    triggers = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    assert doc["permissions"] == {"contents": "read"}
    (job,) = doc["jobs"].values()
    uses = [s["uses"] for s in job["steps"] if "uses" in s]
    assert all(PINNED.match(u) for u in uses), uses
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload.get("if") == "always()"
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["persist-credentials"] is False
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert "qgjob up" in runs and "/readyz" in runs and "qgjob run" in runs and "--junit" in runs
    assert not EXPRESSION.search(runs), "run: scripts must not interpolate expressions"


def test_workflow_passes_when_every_spec_passes(tmp_path: Path) -> None:
    ws = workspace_copy(tmp_path)
    job = run_job(ws, tmp_path, {"GITHUB_SHA": f"pass-{uuid.uuid4().hex[:8]}"})
    try:
        assert not job.failed, job.output
        assert [o for _, o in job.steps] == ["success"] * len(job.steps), job.steps
        root = ET.parse(ws / "reports" / "junit.xml").getroot()
        specs = sorted(p.relative_to(ws).as_posix() for p in (ws / "examples" / "specs").rglob("*.spec.js"))
        assert int(root.get("tests")) == len(specs) and root.get("failures") == "0", job.output
        assert sorted(c.get("file") for c in root.iter("testcase")) == specs
        summary = Path(job.env["GITHUB_STEP_SUMMARY"]).read_text()
        assert re.search(r"^### qgjob run `run-[0-9a-f]+`: passed$", summary, re.M), summary
        assert "::error " not in job.output
    finally:
        check_stopped(job)


def test_workflow_fails_when_a_spec_fails(tmp_path: Path) -> None:
    ws = workspace_copy(tmp_path)
    shutil.copy2(ws / "examples" / "specs-failing" / "payments_fail.spec.js", ws / "examples" / "specs")
    job = run_job(ws, tmp_path, {"GITHUB_SHA": f"fail-{uuid.uuid4().hex[:8]}"})
    try:
        assert job.failed, job.output
        assert job.outcome("Run the AppWright suite") == "failure", job.steps
        assert job.outcome("Upload") == "success", job.output  # if: always()
        root = ET.parse(ws / "reports" / "junit.xml").getroot()
        assert root.get("failures") == "1", job.output
        assert re.search(r"^::error file=examples/specs/payments_fail\.spec\.js,title=", job.output, re.M), job.output
        summary = Path(job.env["GITHUB_STEP_SUMMARY"]).read_text()
        assert "`examples/specs/payments_fail.spec.js` | emulator | failed |" in summary, summary
    finally:
        check_stopped(job)
