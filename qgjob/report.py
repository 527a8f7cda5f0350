"""What ``qgjob run`` shows: live progress while it waits, a table at the end.

On a terminal a rich progress bar counts queued, running, passed, failed and
flaky jobs; otherwise each status change is one line,
``Job <id> -> <status> | <spec>``, which reads well in a CI log.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

Job = Mapping[str, Any]
COLUMNS = ("TEST", "TARGET", "STATUS", "ATTEMPTS", "DURATION", "FLAKY")


def counts(jobs: Sequence[Job]) -> dict[str, int]:
    """Progress counts: queued (incl. assigned and waiting out a retry backoff),
    running, passed, flaky (passed after failing), failed, error, cancelled."""
    out = dict.fromkeys(("queued", "running", "passed", "flaky", "failed", "error", "cancelled"), 0)
    for job in jobs:
        status = job.get("status")
        if status in ("queued", "assigned", "retrying"):
            out["queued"] += 1
        elif status in out:
            out[status] += 1
        if status == "passed" and job.get("flaky"):
            out["flaky"] += 1
    return out


def counts_line(c: Mapping[str, int]) -> str:
    parts = [f"{c['passed']} passed"]
    if c["flaky"]:
        parts[0] += f" ({c['flaky']} flaky)"
    parts += [f"{c['failed']} failed"]
    if c["error"]:
        parts.append(f"{c['error']} errored")
    if c["cancelled"]:
        parts.append(f"{c['cancelled']} cancelled")
    if c["queued"] or c["running"]:
        parts.append(f"{c['queued'] + c['running']} unfinished")
    return ", ".join(parts)


def _duration(job: Job) -> str:
    ms = job.get("duration_ms")
    return "-" if ms is None else f"{ms / 1000:.1f}s"


def rows(jobs: Sequence[Job]) -> list[tuple[str, ...]]:
    return [
        (
            j["test"],
            j["target"],
            j["status"],
            str(j.get("attempts") or 0),
            _duration(j),
            "yes" if j.get("flaky") else "",
        )
        for j in jobs
    ]


def plain_table(jobs: Sequence[Job]) -> str:
    body = rows(jobs)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(COLUMNS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body]
    return "\n".join(lines)


STYLE = {"passed": "green", "failed": "red", "error": "red", "cancelled": "yellow"}


def rich_table(jobs: Sequence[Job], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for name in COLUMNS:
        justify = "right" if name in ("ATTEMPTS", "DURATION") else "left"
        table.add_column(name.lower(), justify=justify, overflow="fold" if name == "TEST" else "ellipsis")
    for job, row in zip(jobs, rows(jobs), strict=True):
        style = STYLE.get(job["status"], "")
        cells = [escape(c) for c in row]
        table.add_row(cells[0], cells[1], f"[{style}]{cells[2]}[/]" if style else cells[2], *cells[3:])
    return table


class Display:
    """Nothing at all (``--json``)."""

    def start(self, title: str, jobs: Sequence[Job]) -> None:
        pass

    def change(self, job: Job, before: str | None, jobs: Sequence[Job]) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def stop(self) -> None:
        pass

    def finish(self, jobs: Sequence[Job], summary: str) -> None:
        pass


def transition_line(job: Job) -> str:
    extra = ""
    if job["status"] in ("failed", "error") and job.get("error"):
        extra = f" ({job['error']})"
    elif job["status"] == "retrying" and job.get("error"):
        extra = f" (attempt {job.get('attempts')} failed: {job['error']})"
    elif job["status"] == "passed" and job.get("flaky"):
        extra = f" (flaky: passed on attempt {job.get('attempts')})"
    return f"Job {job['job_id']} -> {job['status']} | {job['test']}{extra}"


class Lines(Display):
    """One line per status change, for logs."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def _print(self, text: str, stream: TextIO | None = None) -> None:
        stream = stream or self.out
        stream.write(text + "\n")
        stream.flush()

    def start(self, title: str, jobs: Sequence[Job]) -> None:
        self._print(title)

    def change(self, job: Job, before: str | None, jobs: Sequence[Job]) -> None:
        self._print(transition_line(job))

    def note(self, text: str) -> None:
        self._print(text, self.err)

    def finish(self, jobs: Sequence[Job], summary: str) -> None:
        self._print("")
        self._print(plain_table(jobs))
        self._print(summary)


class Live(Display):
    """A rich progress bar on a terminal; failures are printed above it as they happen."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task: Any = None

    @staticmethod
    def _fields(jobs: Sequence[Job]) -> tuple[int, str]:
        c = counts(jobs)
        done = c["passed"] + c["failed"] + c["error"] + c["cancelled"]
        text = (
            f"[dim]queued[/] {c['queued']}  [blue]running[/] {c['running']}  [green]passed[/] {c['passed']}  "
            f"[red]failed[/] {c['failed'] + c['error']}  [yellow]flaky[/] {c['flaky']}"
        )
        if c["cancelled"]:
            text += f"  cancelled {c['cancelled']}"
        return done, text

    def start(self, title: str, jobs: Sequence[Job]) -> None:
        self.console.print(title, markup=False, highlight=False)
        done, text = self._fields(jobs)
        self.progress.start()
        self.task = self.progress.add_task("run", total=len(jobs), completed=done, counts=text)

    def change(self, job: Job, before: str | None, jobs: Sequence[Job]) -> None:
        done, text = self._fields(jobs)
        self.progress.update(self.task, completed=done, counts=text)
        if job["status"] in ("failed", "error", "cancelled") or (job["status"] == "passed" and job.get("flaky")):
            style = STYLE.get(job["status"], "yellow") if not job.get("flaky") else "yellow"
            self.progress.console.print(f"[{style}]{escape(transition_line(job))}[/]", highlight=False)

    def note(self, text: str) -> None:
        self.progress.console.print(f"[dim]{escape(text)}[/]", highlight=False)

    def stop(self) -> None:
        self.progress.stop()

    def finish(self, jobs: Sequence[Job], summary: str) -> None:
        self.console.print(rich_table(jobs))
        self.console.print(summary, markup=False, highlight=False)
