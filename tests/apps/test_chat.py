"""The chat app's server side over the wire: names, history, typing, limits, CSP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tidewire.apps.chat import ChatLimits, MessageStore, build_app
from tidewire.apps.chat.web import CONTENT_SECURITY_POLICY, add_routes
from tidewire.errors import RealtimeError
from tidewire.realtime import App
from tidewire.testing import TestClient, TestServer, running

KEY_A = "a" * 16
KEY_B = "b" * 16


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[TestServer]:
    """The chat app on a free port with history in a temporary SQLite file."""
    app = build_app(MessageStore(tmp_path / "chat.sqlite3"), ChatLimits(max_text=50))
    add_routes(app)
    async with running(app) as server:
        yield server


Login = Callable[[str, str], Awaitable[TestClient]]


@pytest.fixture
async def login(server: TestServer) -> AsyncIterator[Login]:
    """A factory of connected, authenticated chat clients, closed after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(name: str, key: str) -> TestClient:
            client = await stack.enter_async_context(TestClient.connect(server.url))
            reply = await client.authenticate(f"{name}:{key}")
            assert reply["user"] == name
            return client

        yield make


async def test_messages_reach_the_room(server: TestServer, login: Login) -> None:
    """A chat message goes to everyone in the room with user, text, ts and id."""
    ann, bob = await login("ann", KEY_A), await login("bob", KEY_B)
    await ann.join("general")
    await bob.join("general")
    await ann.send({"type": "chat", "room": "general", "text": "hello <b>bob</b>"})
    for client in (ann, bob):
        message = await client.receive("chat")
        assert message["user"] == "ann" and message["text"] == "hello <b>bob</b>"
        assert message["room"] == "general" and message["ts"] > 0 and message["id"] >= 1


async def test_history_on_join_survives_a_restart(tmp_path: Path) -> None:
    """Joining shows the last messages, also after the server restarted on the same file."""
    db = tmp_path / "chat.sqlite3"
    for run in range(2):
        app = build_app(MessageStore(db), ChatLimits(history=3))
        async with running(app) as server, TestClient.connect(server.url) as ann:
            await ann.authenticate(f"ann:{KEY_A}")
            await ann.join("r")
            history = await ann.receive("history")
            if run == 0:
                assert history["messages"] == []
                for i in range(5):
                    await ann.send({"type": "chat", "room": "r", "text": f"m{i}"})
                    await ann.receive("chat")
            else:
                assert [m["text"] for m in history["messages"]] == ["m2", "m3", "m4"]


async def test_typing_goes_to_the_others_only(server: TestServer, login: Login) -> None:
    """A typing notice reaches the other members, not the typist."""
    ann, bob = await login("ann", KEY_A), await login("bob", KEY_B)
    await ann.join("general")
    await bob.join("general")
    await ann.send({"type": "typing", "room": "general", "typing": True})
    notice = await bob.receive("typing")
    assert notice == {"type": "typing", "room": "general", "user": "ann", "typing": True}
    with pytest.raises(TimeoutError):
        await ann.receive("typing", timeout=0.2)


async def test_taken_name_refused_second_tab_ok(server: TestServer, login: Login) -> None:
    """Another browser cannot take an online name; the same browser's second tab can."""
    await login("ann", KEY_A)
    await login("ann", KEY_A)
    async with TestClient.connect(server.url) as thief:
        with pytest.raises(RealtimeError) as info:
            await thief.authenticate(f"ann:{KEY_B}")
        assert "taken" in str(info.value)
        code, _reason = await thief.closed()
        assert code == 1008


async def test_name_free_after_last_connection(server: TestServer, login: Login) -> None:
    """Once every connection of a name is gone, someone else may use it."""
    async with TestClient.connect(server.url) as first:
        await first.authenticate(f"zed:{KEY_A}")
    for _ in range(50):
        async with TestClient.connect(server.url) as second:
            try:
                await second.authenticate(f"zed:{KEY_B}")
                return
            except RealtimeError:
                await asyncio.sleep(0.02)
    raise AssertionError("the name stayed taken after its connection closed")


@pytest.mark.parametrize(
    ("token", "fragment"),
    [("x" * 33 + f":{KEY_A}", "username"), (f"a b:{KEY_A}", "username"), ("ann:short", "key")],
)
async def test_bad_usernames_are_refused(server: TestServer, token: str, fragment: str) -> None:
    """Over-long or odd usernames and malformed keys get a clear error."""
    async with TestClient.connect(server.url) as client:
        with pytest.raises(RealtimeError) as info:
            await client.authenticate(token)
        assert fragment in str(info.value)


async def test_limits_give_clear_errors(server: TestServer, login: Login) -> None:
    """Too long a message or room name, or chatting outside the room, is an error."""
    ann = await login("ann", KEY_A)
    await ann.send({"type": "chat", "room": "general", "text": "hi"})
    assert (await ann.receive("error"))["code"] == "not_member"
    await ann.join("general")
    await ann.send({"type": "chat", "room": "general", "text": "x" * 51})
    error = await ann.receive("error")
    assert error["code"] == "invalid" and "50" in error["message"]
    with pytest.raises(RealtimeError) as info:
        await ann.join("r" * 65)
    assert info.value.code == "invalid"


async def test_chat_rate_limit_per_user(server: TestServer, login: Login) -> None:
    """A user sending faster than the chat rate gets rate_limited errors."""
    ann = await login("ann", KEY_A)
    await ann.join("general")
    for i in range(15):
        await ann.send({"type": "chat", "room": "general", "text": f"{i}"})
    error = await ann.receive("error")
    assert error["code"] == "rate_limited" and error["retry_after"] > 0


async def test_page_has_a_content_security_policy(server: TestServer, login: Login) -> None:
    """``/`` serves the UI with a CSP that forbids inline script."""
    import urllib.request

    url = server.url.replace("ws://", "http://").replace("/ws", "/")
    response = await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert b"/static/chat.js" in response.read()


def test_build_app_returns_an_app() -> None:
    """build_app() gives an App with the chat handlers registered."""
    app = build_app()
    assert isinstance(app, App)
    assert {"chat", "typing"} <= set(app.handlers)
