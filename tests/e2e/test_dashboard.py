"""The dashboard at `/` in headless Chromium: jobs submitted with the CLI move to
`passed` on the page without a reload, and a bad token gets a clear message.

Uses Debian's chromium (`.ci/run` installs it) driven by Playwright's Python
client; where no browser can be had the test skips and says why.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import describe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture
def browser(tmp_path: Path):  # type: ignore[no-untyped-def]
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's chromium when apt-get is available)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)  # a fresh profile each launch
        try:
            yield b
        finally:
            b.close()


def screenshot(page, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    page.screenshot(path=str(tmp_path / name), full_page=True)
    if os.environ.get("QGJOB_SCREENSHOT_DIR"):
        Path(os.environ["QGJOB_SCREENSHOT_DIR"]).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(os.environ["QGJOB_SCREENSHOT_DIR"]) / name), full_page=True)


def test_jobs_move_to_passed_live_on_the_page(make_stack, browser, tmp_path: Path) -> None:
    stack = make_stack(agents=1, extra=("--test-seconds", "2.5", "--install-seconds", "0.5")).start()
    creds = stack.credentials()
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(f"{creds['url']}/#token={creds['token']}")
    page.wait_for_selector("#live.on", timeout=15_000)
    page.evaluate("window.__stayed = true")  # gone if the page reloads
    assert "token=" not in page.url  # the token left the address bar

    ids = []
    for test in (
        "examples/specs/login.spec.js",
        "examples/specs/checkout.spec.js",
        "examples/specs-failing/payments_fail.spec.js",
    ):
        r = stack.cli("submit", "--org-id", "acme", "--app-version-id", "dash-1", "--test", test,
                      "--run-id", "dash-run", "--retries", "0", "--json")  # fmt: skip
        assert r.returncode == 0, describe(r)
        ids.append(json.loads(r.stdout)["job_id"])
        if len(ids) == 1:  # the first job shows up while it is under way (it takes 3 s)
            page.wait_for_selector(f'#jobs tr[data-job="{ids[0]}"]', timeout=15_000)
            seen = page.inner_text(f'#jobs tr[data-job="{ids[0]}"] .status')
            assert seen in ("queued", "assigned", "running")  # shown before it ended

    for job_id in ids[:2]:
        page.wait_for_selector(f'#jobs tr[data-job="{job_id}"] .status.passed', timeout=40_000)
    page.wait_for_selector(f'#failures .failure[data-job="{ids[2]}"]', timeout=40_000)
    page.wait_for_function(
        "document.querySelector('.run[data-run=\"dash-run\"] .counts')?.textContent.startsWith('2 passed, 1 failed')",
        timeout=15_000,
    )
    assert page.evaluate("window.__stayed === true")  # no reload happened
    assert "dash-1" in page.inner_text("#agents")  # the agent shows the build it installed
    assert "AssertionError" in page.inner_text("#failures") or "assertion" in page.inner_text("#failures").lower()
    screenshot(page, tmp_path, "dashboard.png")


def test_a_wrong_token_gets_a_clear_message(make_stack, browser, tmp_path: Path) -> None:
    stack = make_stack(agents=0).start()
    page = browser.new_page()
    page.goto(f"{stack.credentials()['url']}/#token=qgj_org_not-a-real-token")
    page.wait_for_selector("#message:not([hidden])", timeout=15_000)
    assert "token is missing or not valid" in page.inner_text("#message")
    assert page.is_visible("#login") and not page.is_visible("#board")
    screenshot(page, tmp_path, "dashboard-bad-token.png")
    page.goto(f"{stack.credentials()['url']}/")  # no token at all
    page.wait_for_selector("#message:not([hidden])", timeout=15_000)
    assert "No token" in page.inner_text("#message")
