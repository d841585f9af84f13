"""The chat in headless Chromium: two users, presence, typing, escaping, history, reconnect."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tidewire.apps.chat import MessageStore, build_app
from tidewire.apps.chat.web import add_routes

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
XSS = "<img src=x onerror=alert(1)>"


class ChatServer:
    """The chat app served in-process on a fixed port, so it can stop and come back."""

    def __init__(self, db: Path) -> None:
        """A server for history file ``db``; call start()."""
        self.db = db
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server: Any = None
        self.app: Any = None
        self.store: MessageStore | None = None

    @property
    def url(self) -> str:
        """The page URL."""
        return f"http://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        """Serve the chat."""
        self.store = MessageStore(self.db)
        self.app = build_app(self.store)
        add_routes(self.app)
        self.server = await self.app.serve("127.0.0.1", self.port)

    async def stop(self) -> None:
        """Shut the server down (clients get 1001 and start reconnecting)."""
        await self.server.shutdown(spread=0.0)
        await self.app.close()
        assert self.store is not None
        self.store.close()


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[ChatServer]:
    """A running chat server with its history in a temporary file."""
    server = ChatServer(tmp_path / "chat.sqlite3")
    await server.start()
    try:
        yield server
    finally:
        if server.server is not None and server.server.sockets:
            await server.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian Chromium driven by Playwright."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        await browser.close()


async def open_chat(browser: Browser, url: str, name: str, room: str = "general") -> Page:
    """A new browser context that entered the chat as ``name``; fails the test on any dialog."""
    context = await browser.new_context(viewport={"width": 900, "height": 600})
    page = await context.new_page()
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))
    await page.goto(url)
    await enter(page, name, room)
    return page


async def enter(page: Page, name: str, room: str = "general") -> None:
    """Fill the login form and wait for the chat view."""
    await page.fill("#username", name)
    await page.fill("#room", room)
    await page.click("#enter")
    await expect(page.locator("#chat")).to_be_visible()


async def test_two_users_chat_in_the_browser(chat: ChatServer, browser: Browser) -> None:
    """Presence, typing, both directions, escaping, history on reload, reconnect after restart."""
    ann = await open_chat(browser, chat.url, "ann")
    bob = await open_chat(browser, chat.url, "bob")

    # Each sees the other in the room's user list.
    await expect(ann.locator("#users li", has_text="bob")).to_have_count(1)
    await expect(bob.locator("#users li", has_text="ann")).to_have_count(1)

    # Bob types: Ann sees the indicator; it clears when he sends.
    await bob.type("#text", "hello ann", delay=20)
    await expect(ann.locator("#typing")).to_have_text("bob is typing…")
    await bob.press("#text", "Enter")
    last_ann = ann.locator("#messages li.message").last
    await expect(last_ann.locator(".author")).to_have_text("bob")
    await expect(last_ann.locator(".text")).to_have_text("hello ann")
    await expect(ann.locator("#typing")).to_have_text("")

    # Ann answers with markup: Bob sees it as text and nothing runs.
    await ann.fill("#text", XSS)
    await ann.press("#text", "Enter")
    last_bob = bob.locator("#messages li.message").last
    await expect(last_bob.locator(".text")).to_have_text(XSS)
    assert await bob.locator("#messages img").count() == 0
    assert await ann.locator("#messages img").count() == 0

    # The test artifact; docs/chat.png (in README) is a copy of one, kept in git.
    ARTIFACTS.mkdir(exist_ok=True)
    await ann.screenshot(path=str(ARTIFACTS / "chat.png"))
    assert (ARTIFACTS / "chat.png").stat().st_size > 1000

    # Reloading shows the history.
    await bob.reload()
    await enter(bob, "bob")
    texts = bob.locator("#messages li.message .text")
    await expect(texts).to_have_text(["hello ann", XSS])

    # The server stops: both show the reconnecting state; it comes back: they recover.
    await chat.stop()
    await expect(ann.locator("#status")).to_be_visible()
    await expect(ann.locator("#status")).to_have_text("Reconnecting…")
    await asyncio.sleep(0.5)
    await chat.start()
    await expect(ann.locator("#status")).to_be_hidden(timeout=20_000)
    await expect(bob.locator("#status")).to_be_hidden(timeout=20_000)
    await expect(ann.locator("#users li", has_text="bob")).to_have_count(1, timeout=10_000)
    await ann.fill("#text", "still here?")
    await ann.press("#text", "Enter")
    await expect(bob.locator("#messages li.message .text").last).to_have_text("still here?")


async def test_phone_width_and_taken_name(chat: ChatServer, browser: Browser) -> None:
    """At phone width the composer and user list stay usable; a taken name shows an error."""
    ann = await open_chat(browser, chat.url, "ann")
    context = await browser.new_context(viewport={"width": 375, "height": 667})
    phone = await context.new_page()
    await phone.goto(chat.url)
    await phone.fill("#username", "ann")
    await phone.click("#enter")
    await expect(phone.locator("#login-error")).to_contain_text("taken")
    await enter(phone, "cyd")
    await expect(phone.locator("#text")).to_be_visible()
    await expect(phone.locator("#users li", has_text="ann")).to_have_count(1)
    box = await phone.locator("#send").bounding_box()
    assert box is not None and box["x"] + box["width"] <= 375
    await expect(ann.locator("#users li", has_text="cyd")).to_have_count(1)
