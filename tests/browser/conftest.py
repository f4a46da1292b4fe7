"""Chromium for the viewer's pages: Debian's `/usr/bin/chromium` driven by Playwright.

Without the browser (or Playwright) the tests skip, printing why; in CI (`CI` set) that is a
failure instead. Screenshots go to `$QT_TEST_ARTIFACTS` (default `test-artifacts/`), one per
page a test looks at, named after the test.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import ROOT

CHROMIUM = Path(os.environ.get("QT_CHROMIUM", "/usr/bin/chromium"))


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the browser tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module scope, not session: Playwright's sync API keeps an asyncio loop running in this
    # thread while it is started, which the asyncio tests that come later could not share.
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    base = Path(os.environ.get("QT_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    folder = base / re.sub(r"[^\w.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser: Any, artifacts: Path) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    # A hang guard, not a speed check: a dashboard load waits on every service's readiness
    # (3 s bound each, concurrently), and on a shared CI machine 15 s was once not enough.
    tab.set_default_timeout(45_000)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    tab.screenshot(path=str(artifacts / "last.png"), full_page=True)
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
