"""The ``command`` runner: run a command template per test, in its own process group.

Templates are split like a shell would (``shlex``) but never run by one: each
argument is formatted on its own with ``str.format`` syntax, so a test path
with spaces or ``;`` stays one argument and cannot inject a command. Only the
known placeholders are allowed (``{test}``, ``{target}``, ``{app_version_id}``
and, for install, ``{app_version_id}`` and ``{target}``); a literal brace is
doubled, as in Python (``sh -c 'echo ${{HOME}}'``).

Each process also gets the values in its environment, ``QGJOB_TEST``,
``QGJOB_TARGET``, ``QGJOB_APP_VERSION_ID`` and ``QGJOB_ATTEMPT`` (install:
the target and app version), so a test config can pick the build to test.

Every process starts in a new session, so the whole group it spawns can be
signalled: on a timeout or a cancellation the group gets SIGTERM, then
SIGKILL after a grace; after a normal exit any process the command left
running in its group is stopped the same way. Output (stdout and stderr
together) is kept in the :class:`~agents.runners.Outcome`'s ``log``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import signal
import string
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import psutil

from agents.runners import InstallFailed, Outcome, tail_text, timed_out_message

log = logging.getLogger(__name__)

RUN_PLACEHOLDERS = frozenset({"test", "target", "app_version_id"})
INSTALL_PLACEHOLDERS = frozenset({"target", "app_version_id"})
DEFAULT_KILL_GRACE_S = 3.0
DEFAULT_MAX_LOG_BYTES = 16 * 1024 * 1024
_POLL_S = 0.05
KILLED_WAIT_S = 2.0  # how long stop_group waits for a SIGKILLed group to be gone
_LAST_LINE_CHARS = 300

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour and cursor escape sequences."""
    return _ANSI.sub("", text)


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (escapes stripped, shortened to one readable line)."""
    for line in reversed(re.split(r"[\r\n]+", strip_ansi(text))):
        line = line.strip()
        if line:
            return line if len(line) <= _LAST_LINE_CHARS else line[: _LAST_LINE_CHARS - 1] + "…"
    return ""


def parse_template(template: str, allowed: Iterable[str], *, what: str = "command") -> list[str]:
    """Split ``template`` into arguments and check its placeholders; raises ``ValueError``."""
    allowed = frozenset(allowed)
    try:
        args = shlex.split(template)
    except ValueError as exc:
        raise ValueError(f"{what} template {template!r}: {exc}") from exc
    if not args:
        raise ValueError(f"{what} template is empty")
    known = ", ".join("{" + name + "}" for name in sorted(allowed))
    for arg in args:
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(arg) if name is not None]
        except ValueError as exc:
            raise ValueError(f"{what} template argument {arg!r}: {exc} (double a literal brace)") from exc
        for name in fields:
            if name not in allowed:
                raise ValueError(
                    f"{what} template argument {arg!r}: unknown placeholder {{{name}}}; "
                    f"use {known} (double a literal brace: {{{{ }}}})"
                )
    return args


def render(args: list[str], values: Mapping[str, str]) -> list[str]:
    """Fill each argument's placeholders; a value always stays inside its own argument."""
    return [arg.format_map(values) for arg in args]


def describe_exit(returncode: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass(frozen=True, slots=True)
class Finished:
    """What one process run left: how it ended and everything it printed."""

    argv: list[str]
    returncode: int | None  # None when it was stopped by the timeout
    duration_ms: int
    log: bytes = field(repr=False)
    timeout_s: float | None = None

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def outcome(self) -> Outcome:
        """Passed on exit code 0; otherwise the error names the exit and the last output line."""
        if self.returncode is None:
            return Outcome(False, self.duration_ms, timed_out_message(self.timeout_s or 0), log=self.log)
        if self.returncode == 0:
            return Outcome(True, self.duration_ms, None, log=self.log)
        return Outcome(False, self.duration_ms, self.failure(), log=self.log)

    def failure(self) -> str:
        """One line: how the process ended, plus its last non-empty output line."""
        if self.returncode is None:
            return timed_out_message(self.timeout_s or 0)
        ending = describe_exit(self.returncode)
        line = last_line(tail_text(self.log))
        return f"{ending}: {line}" if line else ending


def read_output(output: BinaryIO, max_bytes: int) -> bytes:
    """What a process wrote to ``output``; only the newest ``max_bytes`` when it wrote more."""
    size = output.seek(0, os.SEEK_END)
    if size <= max_bytes:
        output.seek(0)
        return output.read()
    output.seek(size - max_bytes)
    return f"[qgjob: first {size - max_bytes} bytes of output dropped]\n".encode() + output.read(max_bytes)


def live_members(pgid: int) -> list[int]:
    """Pids of the processes of group ``pgid`` that still run (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def stop_group(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM the process group led by ``proc``; SIGKILL what is left after ``grace_s``.

    Safe to interrupt: a second cancellation while waiting out the grace still
    sends SIGKILL before it propagates.
    """
    pgid = proc.pid
    if proc.returncode is not None and not live_members(pgid):
        return  # all gone already (and a reaped, empty group's id may be reused: do not signal it)
    _signal_group(pgid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    try:
        while (proc.returncode is None or live_members(pgid)) and loop.time() < deadline:
            await asyncio.sleep(_POLL_S)
    finally:
        killed = proc.returncode is None or bool(live_members(pgid))
        if killed:
            log.warning("process group %d outlived SIGTERM by %.1f s: sending SIGKILL", pgid, grace_s)
            _signal_group(pgid, signal.SIGKILL)
    await proc.wait()
    # A process dies of SIGKILL when it next runs, so on a busy machine the
    # leader's children can outlive its exit by a moment: return once they are gone.
    deadline = loop.time() + KILLED_WAIT_S
    while killed and live_members(pgid) and loop.time() < deadline:
        await asyncio.sleep(_POLL_S)


class CommandRunner:
    """Runs ``command`` once per test attempt; ``install_command`` once per batch.

    ``timeout_s`` is the default per attempt (a job's own timeout overrides it);
    ``env`` is added to the agent's environment; ``cwd`` is where commands run.
    """

    name = "command"
    run_placeholders: frozenset[str] = RUN_PLACEHOLDERS
    install_placeholders: frozenset[str] = INSTALL_PLACEHOLDERS

    def __init__(
        self,
        command: str,
        install_command: str | None = None,
        timeout_s: float | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        *,
        install_timeout_s: float | None = None,
        kill_grace_s: float = DEFAULT_KILL_GRACE_S,
        max_log_bytes: int = DEFAULT_MAX_LOG_BYTES,
    ) -> None:
        for label, value in (("timeout_s", timeout_s), ("install_timeout_s", install_timeout_s)):
            if value is not None and value <= 0:
                raise ValueError(f"{label} must be above 0, got {value}")
        self.command = command
        self.install_command = install_command
        self.args = parse_template(command, self.run_placeholders)
        self.install_args = (
            parse_template(install_command, self.install_placeholders, what="install command")
            if install_command is not None
            else None
        )
        self.timeout_s = timeout_s
        self.install_timeout_s = install_timeout_s
        self.env = dict(env or {})
        self.cwd = cwd
        self.kill_grace_s = kill_grace_s
        self.max_log_bytes = max_log_bytes

    def run_values(self, test: str, target: str, app_version_id: str) -> dict[str, str]:
        return {"test": test, "target": target, "app_version_id": app_version_id}

    def install_values(self, app_version_id: str, target: str) -> dict[str, str]:
        return {"target": target, "app_version_id": app_version_id}

    def argv(self, test: str, target: str, app_version_id: str, attempt: int) -> list[str]:
        """The arguments that run this attempt."""
        return render(self.args, self.run_values(test, target, app_version_id))

    def run_env(self, test: str, target: str, app_version_id: str, attempt: int) -> dict[str, str]:
        return {
            "QGJOB_TEST": test,
            "QGJOB_TARGET": target,
            "QGJOB_APP_VERSION_ID": app_version_id,
            "QGJOB_ATTEMPT": str(attempt),
        }

    async def install(self, app_version_id: str, target: str) -> None:
        """Run the install command; :class:`InstallFailed` with its output's tail when it fails."""
        if self.install_args is None:
            return
        argv = render(self.install_args, self.install_values(app_version_id, target))
        env = {"QGJOB_TARGET": target, "QGJOB_APP_VERSION_ID": app_version_id}
        done = await self.execute(argv, timeout_s=self.install_timeout_s, env=env)
        if done.returncode != 0:
            raise InstallFailed(
                f"installing {app_version_id} on {target} failed: {done.failure()}\n"
                + strip_ansi(tail_text(done.log)).rstrip()
            )

    async def run(
        self, test: str, target: str, app_version_id: str, attempt: int, timeout_s: float | None = None
    ) -> Outcome:
        done = await self.execute(
            self.argv(test, target, app_version_id, attempt),
            timeout_s=timeout_s if timeout_s is not None else self.timeout_s,
            env=self.run_env(test, target, app_version_id, attempt),
        )
        return done.outcome

    async def execute(
        self, argv: list[str], *, timeout_s: float | None = None, env: Mapping[str, str] | None = None
    ) -> Finished:
        """Run ``argv`` in a new session, capture its output, stop its group on timeout or cancel.

        Output goes to an anonymous temporary file rather than a pipe, so a
        process that escapes the group cannot keep the call waiting for
        the output to end.
        """
        started = time.monotonic()
        full_env = {**os.environ, **self.env, **(env or {})}
        with tempfile.TemporaryFile(prefix="qgjob-output-") as output:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=asyncio.subprocess.STDOUT,
                    env=full_env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
            except OSError as exc:  # not found, not executable, bad cwd
                message = f"could not start {argv[0]!r}: {exc.strerror or exc}\n"
                return Finished(argv, 127, int((time.monotonic() - started) * 1000), message.encode(), timeout_s)
            returncode: int | None
            try:
                try:
                    async with asyncio.timeout(timeout_s):
                        returncode = await proc.wait()
                except TimeoutError:
                    returncode = None
                    log.info("%s timed out after %s s: stopping its process group", argv[0], timeout_s)
                    await stop_group(proc, self.kill_grace_s)
                else:
                    if leftovers := live_members(proc.pid):
                        log.info("%d process(es) outlived command %d: stopping them", len(leftovers), proc.pid)
                        await stop_group(proc, self.kill_grace_s)
            except BaseException:  # cancelled: leave nothing behind, then let the cancellation through
                await stop_group(proc, self.kill_grace_s)
                raise
            data = read_output(output, self.max_log_bytes)
        return Finished(argv, returncode, int((time.monotonic() - started) * 1000), data, timeout_s)
