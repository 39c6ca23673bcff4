"""A real browser for the end-to-end tests: Debian's Chromium, driven by Playwright.

Each test gets a fresh, headless Chromium with a profile folder of its own. When a test fails, a
screenshot of the page it was on goes to test-artifacts/<test name>-failed.png.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import CALL_FAILED

CHROMIUM = Path("/usr/bin/chromium")
# The flags that let Chromium run headless as root in a container.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@contextmanager
def chromium():
    """A fresh headless Chromium (1280x800) with a profile folder of its own: its browser context."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="campushub-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(request, artifacts):
    """A page of a fresh headless Chromium."""
    with chromium() as context:
        page = context.pages[0] if context.pages else context.new_page()
        yield page
        if request.node.stash.get(CALL_FAILED, False):
            page.screenshot(path=artifacts / f"{request.node.name}-failed.png")
