"""End-to-end fixtures: real ``qgjob up`` processes and real ``qgjob`` CLI calls.

Nothing is mocked: each stack is a ``qgjob up`` subprocess that starts its own
nats-server and PostgreSQL in a temporary data folder, and every CLI call is a
separate ``qgjob`` process that finds the server through
``<data-dir>/credentials.json`` (``QGJOB_URL``/``QGJOB_TOKEN`` are never set
unless a test sets them on purpose).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

QGJOB = Path(sys.executable).parent / "qgjob"
UP_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CLI_TIMEOUT = 90.0

# A few tests need a job that stays unfinished for a while (dedup); every
# other test runs in --test-seconds.
SIMULATE = {
    "tests": {
        "tests/slow_checkout.spec.js": {"duration": 2.0, "outcomes": ["pass"]},
        "tests/slow_refund.spec.js": {"duration": 2.0, "outcomes": ["fail"], "error": "refund button missing"},
    }
}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any QGJOB_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QGJOB_")}
    env.update(extra)
    return env


def leftover_servers(data_dir: Path) -> list[psutil.Process]:
    """Live postgres / nats-server processes whose command line names ``data_dir``."""
    marker = str(data_dir.resolve())
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmd = proc.info["cmdline"] or []
            name = proc.info["name"] or ""
        except psutil.Error:
            continue
        is_server = (
            "postgres" in name
            or "nats-server" in name
            or any(Path(a).name in ("postgres", "nats-server") for a in cmd[:1])
        )
        if is_server and any(marker in a for a in cmd):
            found.append(proc)
    return found


def kill_leftovers(data_dir: Path) -> list[str]:
    """SIGKILL whatever :func:`leftover_servers` finds; returns descriptions of them."""
    killed = []
    for proc in leftover_servers(data_dir):
        try:
            killed.append(f"pid {proc.pid}: {' '.join(proc.cmdline())}")
            proc.kill()
        except psutil.Error:
            pass
    return killed


class Stack:
    """One ``qgjob up`` subprocess on ``data_dir``, run from ``workdir``.

    With ``default_dir=True`` the stack is started without ``--data-dir`` and the
    CLI without ``QGJOB_DATA_DIR``: both rely on ``.qgjob`` in ``workdir``.
    """

    def __init__(
        self,
        workdir: Path,
        data_dir: Path | None = None,
        *,
        agents: int = 1,
        extra: tuple[str, ...] = (),
        default_dir: bool = False,
    ) -> None:
        self.workdir = workdir
        self.default_dir = default_dir
        self.data_dir = (workdir / ".qgjob") if default_dir else (data_dir or workdir / "data")
        self.agents = agents
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._ended = False  # stopped or killed on purpose

    # --- the up process -------------------------------------------------------

    def up_args(self) -> list[str]:
        args = [str(QGJOB), "up"]
        if not self.default_dir:
            args += ["--data-dir", str(self.data_dir)]
        args += [
            "--port", "0",
            "--agents", str(self.agents),
            "--test-seconds", "0.05",
            "--install-seconds", "0.05",
            *self.extra,
        ]  # fmt: skip
        return args

    def start(self, timeout: float = UP_TIMEOUT) -> Stack:
        self.lines = []
        self._ended = False
        self.proc = subprocess.Popen(
            self.up_args(),
            cwd=self.workdir,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        self.wait_for_line("qgjob is up:", timeout)
        # The ready line comes first; the rest of the banner (credentials path) follows at once.
        self.wait_for_line("Press Ctrl-C to stop.", 10)
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        """The first output line starting with ``prefix``; fails (with the output) at the deadline."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                if self.proc.poll() is not None and not (self._reader and self._reader.is_alive()):
                    pytest.fail(
                        f"`qgjob up` exited with {self.proc.returncode} before printing {prefix!r}:\n{self.output}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"`qgjob up` printed no {prefix!r} line within {timeout}s; output:\n{self.output}")
                self._cond.wait(min(left, 0.2))

    def stop(self, sig: int = signal.SIGINT, timeout: float = STOP_TIMEOUT) -> int:
        """Signal the stack and wait for it; SIGKILL as a last resort. Returns its exit code."""
        assert self.proc is not None
        self._ended = True
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL ``qgjob up`` (a crash); its Postgres is left running on purpose."""
        assert self.proc is not None
        self._ended = True
        self.proc.kill()
        self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def credentials(self) -> dict[str, Any]:
        return json.loads((self.data_dir / "credentials.json").read_text())

    # --- the CLI --------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        if self.default_dir:
            return clean_env(**extra)
        return clean_env(QGJOB_DATA_DIR=str(self.data_dir), **extra)

    def check_alive(self) -> None:
        """Fail with the stack's output if ``qgjob up`` died on its own."""
        if self.proc is not None and not self._ended and self.proc.poll() is not None:
            if self._reader is not None:
                self._reader.join(5)
            pytest.fail(f"`qgjob up` died with exit code {self.proc.returncode}; its output:\n{self.output}")

    def cli(
        self, *args: str, timeout: float = CLI_TIMEOUT, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        self.check_alive()
        return run_cli(*args, cwd=self.workdir, env=self.env() if env is None else env, timeout=timeout)

    def cli_json(self, *args: str, expect: int = 0) -> Any:
        r = self.cli(*args, "--json")
        assert r.returncode == expect, describe(r)
        return json.loads(r.stdout)

    def teardown(self) -> tuple[int | None, list[str]]:
        """Stop the stack if it runs; kill any server of its data folder left behind.

        Returns the exit code (None if it was not running) and what had to be killed."""
        code = None
        if self.proc is not None and self.proc.returncode is None:
            code = self.stop()
        # The stack stops its servers before exiting; give a dying postgres a moment anyway.
        deadline = time.monotonic() + 5
        while leftover_servers(self.data_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        return code, kill_leftovers(self.data_dir)


def run_cli(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QGJOB), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def describe(r: subprocess.CompletedProcess[str]) -> str:
    return f"`{' '.join(map(str, r.args[1:]))}` exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Any]:
    """Build stacks for one test; every one is stopped and checked for leftovers afterwards."""
    stacks: list[Stack] = []

    def make(workdir: Path | None = None, **kwargs: Any) -> Stack:
        s = Stack(workdir or tmp_path, **kwargs)
        stacks.append(s)
        return s

    yield make
    problems = []
    for s in stacks:
        _, killed = s.teardown()
        if killed:
            problems.append(f"servers left running for {s.data_dir}: {killed}")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack shared by the tests of a module (they use distinct app versions)."""
    workdir = tmp_path_factory.mktemp("e2e-stack")
    sim = workdir / "simulate.json"
    sim.write_text(json.dumps(SIMULATE))
    with started(Stack(workdir, workdir / "data", agents=1, extra=("--simulate-file", str(sim)))) as s:
        yield s


@contextmanager
def started(s: Stack) -> Iterator[Stack]:
    """Run ``qgjob up`` for the block; then stop it and check it stopped cleanly."""
    try:
        s.start()
        yield s
    finally:
        code, killed = s.teardown()
    assert not killed, f"`qgjob up` left servers running after it stopped: {killed}\n{s.output}"
    assert code in (None, 0), f"`qgjob up` exited {code} on SIGINT:\n{s.output}"
