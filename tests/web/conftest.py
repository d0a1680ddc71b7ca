"""Browser tests of the web pages: Playwright for Python driving Debian's chromium (launched by
`executable_path`, never a downloaded browser) against one real `ordersaga up` stack that every file
here shares (tests/conftest.py keeps the directory on one xdist worker)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from tests.e2e.conftest import UpProcess, start_up
from tests.support.prerequisites import chromium_path

# Sagas on a loaded machine (two cores shared by other stacks) take seconds, not milliseconds.
SAGA_TIMEOUT_MS = 120_000
UI_TIMEOUT_MS = 30_000
# Every wait of a page, not only the sagas': a click's answer can take seconds under load.
expect.set_options(timeout=UI_TIMEOUT_MS)
REPOSITORY = Path(__file__).resolve().parents[2]


# A compensation refused for longer than this is marked compensation_failed (the worker's
# WORKER_COMPENSATION_BUDGET_SECONDS, 600 s by default): the console's retry test waits it out.
COMPENSATION_BUDGET_SECONDS = "15"


@pytest.fixture(scope="session")
def chromium() -> str:
    return chromium_path()


@pytest.fixture(scope="session")
def stack(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    budget = {"WORKER_COMPENSATION_BUDGET_SECONDS": COMPENSATION_BUDGET_SECONDS}
    running = start_up(tmp_path_factory.mktemp("web-up"), budget)
    yield running
    if running.proc is not None and running.proc.poll() is None:
        running.interrupt()


@pytest.fixture(scope="session")
def base_url(stack: UpProcess) -> str:
    return f"http://127.0.0.1:{stack.ports['gateway']}"


# Per module, unlike the stack: while Playwright's sync API is open its event loop runs in this
# thread, and the async tests of another file here (pytest-asyncio) could not start theirs.
@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        yield launch(playwright, chromium)


def launch(playwright: Playwright, chromium: str) -> Browser:
    # --no-sandbox: CI and this machine run as root, where chromium refuses its sandbox.
    return playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])


class Pages:
    """Browser contexts of one test (a customer, an admin...), each shot at the end of the test."""

    def __init__(self, browser: Browser, base_url: str, out: Path) -> None:
        self.browser = browser
        self.base_url = base_url
        self.out = out
        self.opened: list[tuple[str, BrowserContext, Page]] = []
        self.errors: list[str] = []

    def open(self, name: str, *, mobile: bool = False) -> Page:
        viewport = {"width": 390, "height": 844} if mobile else {"width": 1280, "height": 1000}
        context = self.browser.new_context(base_url=self.base_url, viewport=viewport)
        context.set_default_timeout(UI_TIMEOUT_MS)
        page = context.new_page()
        # A script error or a refused Content-Security-Policy shows in the console: none is expected.
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"{name}: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"{name}: {e}"))
        page.goto("/")
        self.opened.append((name, context, page))
        return page

    def shoot(self, page: Page, name: str) -> Path:
        path = self.out / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        for name, context, page in self.opened:
            try:
                self.shoot(page, name)
            finally:
                context.close()


@pytest.fixture
def pages(browser: Browser, base_url: str, tmp_path: Path) -> Iterator[Pages]:
    opened = Pages(browser, base_url, tmp_path)
    yield opened
    opened.close()
    print(f"screenshots in {tmp_path}")
    # Errors the API answered on purpose (a 409, a 503 while the worker is away) are logged by
    # chromium as failed resource loads; script errors and CSP refusals are not expected.
    unexpected = [e for e in opened.errors if "Failed to load resource" not in e]
    assert not unexpected, unexpected


def update_readme_images() -> bool:
    """`ORDERSAGA_UPDATE_SCREENSHOTS=1` writes the README's screenshots into docs/images/."""
    return os.environ.get("ORDERSAGA_UPDATE_SCREENSHOTS") == "1"


def user_id_of(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])


def api_token(base_url: str, username: str, password: str) -> str:
    answer = httpx.post(f"{base_url}/api/v1/auth/token", data={"username": username, "password": password})
    answer.raise_for_status()
    return str(answer.json()["access_token"])
