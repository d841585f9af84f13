"""The test kit: the tidewire_server / tidewire_client fixtures and TestClient."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tidewire.errors import RealtimeError, RPCError
from tidewire.realtime import App, Context, HMACVerifier, sign_token
from tidewire.testing import TestClient, TestServer, running

SECRET = "kit-secret-0123456789"

Make = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def app() -> App:
    """A small app with a chat handler, an RPC and optional HMAC auth."""
    app = App(auth=HMACVerifier(SECRET), auth_required=False)

    @app.on("chat", fields={"room": str, "text": str})
    async def chat(ctx: Context) -> None:
        await ctx.emit_room(ctx.message["room"], "chat", user=ctx.user, text=ctx.message["text"])

    @app.rpc("double")
    async def double(ctx: Context, params: int) -> int:
        return params * 2

    return app


async def test_fixture_clients_talk_through_a_room(tidewire_client: Make) -> None:
    """Two fixture clients in one room see each other's chat message."""
    ann = await tidewire_client(token=sign_token(SECRET, "ann"))
    bob = await tidewire_client(token=sign_token(SECRET, "bob"))
    assert (ann.user, bob.user) == ("ann", "bob")
    await ann.join("lobby")
    joined = await bob.join("lobby")
    assert joined["members"] == ["ann", "bob"]
    assert (await ann.receive("userJoined"))["user"] == "bob"
    await ann.send({"type": "chat", "room": "lobby", "text": "hi"})
    message = await bob.receive("chat")
    assert (message["user"], message["text"]) == ("ann", "hi")


async def test_call_returns_result_and_raises_typed_errors(tidewire_client: Make) -> None:
    """TestClient.call returns the RPC result and raises RPCError with the wire code."""
    client = await tidewire_client()
    assert await client.call("double", 21) == 42
    with pytest.raises(RPCError) as info:
        await client.call("missing")
    assert info.value.code == "no_such_method"


async def test_request_raises_on_error_reply(tidewire_client: Make) -> None:
    """An error reply to a request surfaces as RealtimeError with its code."""
    client = await tidewire_client()
    with pytest.raises(RealtimeError) as info:
        await client.leave("nowhere")
    assert info.value.code == "not_member"


async def test_subscribe_publish_and_recover(tidewire_client: Make) -> None:
    """Publications carry offsets and a resubscribe from an offset recovers the rest."""
    sub = await tidewire_client()
    pub = await tidewire_client()
    first = await sub.subscribe("news")
    await pub.publish("news", {"n": 1})
    await pub.publish("news", {"n": 2})
    assert (await sub.receive("publish"))["offset"] == first["offset"] + 1
    again = await sub.subscribe("news", since={"epoch": first["epoch"], "offset": 1})
    assert again["recovered"] is True
    assert [p["payload"] for p in again["publications"]] == [{"n": 2}]


async def test_running_without_pytest_fixtures(app: App) -> None:
    """running() and TestClient.connect work as plain context managers."""
    async with running(app) as server:
        assert isinstance(server, TestServer)
        assert server.url.endswith("/ws")
        async with TestClient.connect(server.url) as client:
            pong = await client.request({"type": "ping"}, "pong")
            assert pong["type"] == "pong"
            await client.send({"type": "nonsense"})
            error = await client.receive("error")
            assert error["code"] == "unknown_type"
