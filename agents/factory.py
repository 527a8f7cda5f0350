"""Building a runner from an agent's options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agents.appwright import AppwrightRunner
from agents.command import CommandRunner
from agents.runners import Runner, SimulateRunner

RUNNERS = ("simulate", "command", "appwright")


@dataclass(frozen=True)
class RunnerOptions:
    kind: str = "simulate"
    command: str | None = None
    install_command: str | None = None
    timeout_s: float | None = None
    projects: dict[str, str] = field(default_factory=dict)
    npx: str = "npx"
    cwd: Path | None = None
    test_seconds: float = 0.5
    install_seconds: float = 2.0
    simulate_file: Path | None = None


def make_runner(o: RunnerOptions) -> Runner:
    """The runner these options describe; ``ValueError`` names the option at fault."""
    if o.kind not in RUNNERS:
        raise ValueError(f"--runner: {o.kind!r} is not a runner; allowed: {', '.join(RUNNERS)}")
    if o.timeout_s is not None and o.timeout_s <= 0:
        raise ValueError("--timeout: allowed: a number of seconds above 0")
    if o.kind == "simulate":
        if o.command or o.install_command:
            raise ValueError("--command/--install-command: only for --runner command or appwright")
        if o.simulate_file is not None:
            return SimulateRunner.from_file(o.simulate_file, duration_s=o.test_seconds, install_s=o.install_seconds)
        return SimulateRunner(duration_s=o.test_seconds, install_s=o.install_seconds)
    if o.kind == "command":
        if not o.command:
            raise ValueError("--command: required with --runner command, e.g. 'npx appwright test {test}'")
        return CommandRunner(o.command, o.install_command, timeout_s=o.timeout_s, cwd=o.cwd)
    return AppwrightRunner(
        npx=o.npx, projects=o.projects or None, install_command=o.install_command, timeout_s=o.timeout_s, cwd=o.cwd
    )


def parse_projects(values: list[str]) -> dict[str, str]:
    """``target=project`` pairs from ``--project`` options."""
    out = {}
    for value in values:
        target, sep, project = value.partition("=")
        if not sep or not target or not project:
            raise ValueError(f"--project: {value!r} is not TARGET=PROJECT, e.g. emulator=android")
        out[target] = project
    return out
