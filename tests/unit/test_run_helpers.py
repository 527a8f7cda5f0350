"""``qgjob run`` helpers: path and glob expansion, run ids, GitHub output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qgjob import github
from qgjob.run import NoSpecs, Suite, base_run_id, ci_identity, expand


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("//\n")


def test_globs_folders_and_files_expand_sorted_and_deduplicated(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "tests/b.spec.js", "tests/a.spec.ts", "tests/deep/er/c.spec.js", "tests/helper.js", "tests/d.test.tsx",
        "tests/node_modules/pkg/x.spec.js", "tests/.cache/y.spec.js", "other/z.spec.js", "plain.js",
    )  # fmt: skip
    assert expand(["tests/**/*.spec.js"], tmp_path) == ["tests/b.spec.js", "tests/deep/er/c.spec.js"]
    assert expand(["tests/node_modules/**/*.spec.js"], tmp_path) == ["tests/node_modules/pkg/x.spec.js"]
    assert expand(["tests", "tests/**/*.spec.js", "./tests/b.spec.js", "plain.js"], tmp_path) == [
        "plain.js",  # a file named explicitly is taken as is
        "tests/a.spec.ts",
        "tests/b.spec.js",
        "tests/d.test.tsx",
        "tests/deep/er/c.spec.js",
    ]  # a folder skips node_modules and hidden folders
    assert expand(["*"], tmp_path) == [
        "other/z.spec.js", "plain.js", "tests/a.spec.ts", "tests/b.spec.js", "tests/d.test.tsx",
        "tests/deep/er/c.spec.js",
    ]  # fmt: skip
    outside = tmp_path / "other" / "z.spec.js"
    assert expand([str(outside)], tmp_path / "tests") == [outside.as_posix()]


@pytest.mark.parametrize("pattern", ["nothing/**/*.spec.js", "missing.spec.js", "tests/helper"])
def test_a_pattern_matching_nothing_is_named(tmp_path: Path, pattern: str) -> None:
    touch(tmp_path, "tests/a.spec.js", "tests/helper/readme.md")
    with pytest.raises(NoSpecs, match=re.escape(f"no spec file matches {pattern!r}")):
        expand(["tests", pattern], tmp_path)


def test_run_id_is_derived_from_the_suite_and_ci_identity() -> None:
    suite = Suite("acme", "1.0", "emulator", ("a.spec.js", "b.spec.js"))
    rid = base_run_id(suite)
    assert rid.startswith("run-") and len(rid) == 24
    assert base_run_id(Suite("acme", "1.0", "emulator", ("a.spec.js", "b.spec.js"), priority=1)) == rid
    for other in (
        Suite("acme", "1.0", "device", suite.specs),
        Suite("acme", "1.1", "emulator", suite.specs),
        Suite("other", "1.0", "emulator", suite.specs),
        Suite("acme", "1.0", "emulator", ("a.spec.js",)),
    ):
        assert base_run_id(other) != rid
    env = {"GITHUB_RUN_ID": "77", "GITHUB_REPOSITORY": "o/r", "GITHUB_JOB": "e2e", "GITHUB_RUN_ATTEMPT": "2"}
    assert ci_identity(env) == ("o/r", "77", "e2e")  # a re-run attempt of the same workflow run attaches
    assert ci_identity({}) == ()
    assert base_run_id(suite, ci_identity(env)) != rid


def test_workflow_commands_escape_data_and_properties() -> None:
    line = github.command("error", "50% done\r\nnext", file="a,b:c.spec.js", title="x%y")
    assert line == "::error file=a%2Cb%3Ac.spec.js,title=x%25y::50%25 done%0D%0Anext"
    jobs = [
        {"test": "t/a.spec.js", "target": "emulator", "status": "failed", "attempts": 2, "error": "boom\nline"},
        {"test": "t/b.spec.js", "target": "emulator", "status": "passed", "attempts": 2, "flaky": True, "error": "e"},
        {"test": "t/c.spec.js", "target": "emulator", "status": "passed", "attempts": 1},
        {"test": "t/d.spec.js", "target": "emulator", "status": "running", "attempts": 1},
    ]
    lines = github.annotations(jobs, unfinished_note="did not finish before --timeout")
    assert (
        lines[0]
        == "::error file=t/a.spec.js,title=t/a.spec.js failed on emulator::boom%0Aline%0A(failed after 2 attempt(s))"
    )
    assert lines[1].startswith("::warning file=t/b.spec.js,title=t/b.spec.js is flaky on emulator::passed on attempt 2")
    unfinished = "did not finish::did not finish before --timeout (status: running)"
    assert lines[2] == f"::error file=t/d.spec.js,title=t/d.spec.js {unfinished}"
    assert len(lines) == 3


def test_step_summary_counts_and_failures_table() -> None:
    jobs = [
        {"test": "t/a|x.spec.js", "target": "device", "status": "failed", "attempts": 4, "error": "no <button>\nat 3"},
        {"test": "t/b.spec.js", "target": "device", "status": "passed", "attempts": 2, "flaky": True},
        {"test": "t/c.spec.js", "target": "device", "status": "passed", "attempts": 1},
    ]
    md = github.summary(jobs, run_id="run-1", headline="failed", seconds=12.34)
    assert md.startswith("### qgjob run `run-1`: failed\n")
    assert "| 3 | 2 | 1 | 0 | 0 | 1 | 0 | 12.3 s |" in md
    assert "| `t/a\\|x.spec.js` | device | failed | 4 | no &lt;button&gt; at 3 |" in md
    assert "- `t/b.spec.js` on device: attempt 2" in md
