"""Browser-test fixtures: one headless Debian Chromium per session, a fresh context per page.

Playwright drives the system Chromium (``/usr/bin/chromium``); its own browser
downloads are never used.  Without that binary the browser tests fail: scripts/test
installs it (Debian's ``chromium``), so a missing browser is a setup error, not a skip.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

try:
    from playwright.async_api import Browser, BrowserContext, Page, async_playwright
except ImportError:  # pragma: no cover - the e2e extra is not installed
    async_playwright = None  # type: ignore[assignment]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium, launched once for the whole session."""
    if async_playwright is None:
        pytest.fail("playwright is not installed: pip install -e '.[dev]'")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium")
    async with async_playwright() as pw:
        instance = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield instance
        finally:
            await instance.close()


PageFactory = Callable[[str], Awaitable["Page"]]


@pytest_asyncio.fixture(loop_scope="session")
async def open_page(browser: Browser) -> AsyncIterator[PageFactory]:
    """``await open_page(url)``: a page in its own browser context (own storage, own sockets).

    Console errors and uncaught page exceptions are printed, so a failing test
    shows what the browser saw.  Every context is closed after the test.
    """
    contexts: list[BrowserContext] = []

    async def factory(url: str) -> Page:
        context = await browser.new_context()
        contexts.append(context)
        page = await context.new_page()
        name = f"page{len(contexts)}"
        page.on("console", lambda msg: print(f"[{name} console.{msg.type}] {msg.text}"))
        page.on("pageerror", lambda exc: print(f"[{name} pageerror] {exc}"))
        await page.goto(url)
        await page.wait_for_function("() => window.tw !== undefined", timeout=5000)
        return page

    try:
        yield factory
    finally:
        for context in contexts:
            await context.close()
