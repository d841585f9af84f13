"""The reconnecting Python client across drops: rejoin, recovery, close codes, tokens, heartbeat.

Held moments ("while the client is disconnected") are held by a server-side
:class:`~.clientkit.Gate`, never by sleeping; every wait is bounded (clientkit.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tidewire.errors import ConnectionClosed, RealtimeError, RPCError, Unauthorized
from tidewire.protocol.close import CloseAction, CloseCode
from tidewire.realtime import App, HMACVerifier, Session, sign_token
from tidewire.realtime.client import Client, ClientState, Disconnect
from tidewire.realtime.context import Context

from .clientkit import (
    FAST,
    SECRET,
    TIMEOUT,
    Gate,
    barrier,
    free_port,
    kicking_app,
    sync,
    until,
    url_of,
    when,
)

# --------------------------------------------------------------- reconnect


async def test_reconnect_rejoins_and_recovers_channel_without_gaps_or_duplicates() -> None:
    """After a drop the client rejoins, gets what it missed, then live ones: each offset once."""
    app = kicking_app()
    gate = Gate(app, pass_first=2)

    @app.rpc("replay")
    async def replay(ctx: Context, params: Any) -> None:
        ctx.session.send({"type": "publish", "channel": "news", "payload": "dup", "offset": 3})

    async with (
        app.serve("127.0.0.1", 0) as server,
        Client(url_of(server), **FAST) as ann,
        Client(url_of(server), **FAST) as bob,
    ):
        got: list[int] = []
        failed: list[str] = []
        ann.on("recovery_failed", failed.append)
        await ann.join("lobby")
        await ann.subscribe("news", lambda envelope: got.append(envelope["offset"]))
        for n in (1, 2):
            await bob.publish("news", n)
        await sync(bob)
        await barrier(ann)
        assert got == [1, 2]
        closes = when(ann, "close")
        reopened = when(ann, "state", lambda state: state is ClientState.OPEN)
        with pytest.raises(RPCError):
            await ann.call("kick")
        disconnect: Disconnect = await until(closes)
        assert (disconnect.code, disconnect.reason, disconnect.action) == (
            4000,
            "bye",
            CloseAction.RECONNECT,
        )
        await until(asyncio.ensure_future(gate.waiting.wait()))
        for n in (3, 4, 5):  # published while ann is held off
            await bob.publish("news", n)
        await sync(bob)
        gate.open.set()
        await until(reopened)
        await bob.publish("news", 6)
        await sync(bob)
        await ann.call("replay")  # a stale offset 3 again: dropped
        await barrier(ann)
        assert got == [1, 2, 3, 4, 5, 6]
        assert failed == []
        session = app.hub.sessions[ann.connection_id or ""]
        assert session.rooms == {"lobby"} and ann.position("news") is not None


async def test_recovery_failed_after_server_restart() -> None:
    """A restarted App has a new epoch: "recovery_failed" fires, live publications continue."""
    first = App()
    async with first.serve("127.0.0.1", 0) as server:
        port = server.port
        client = Client(url_of(server), **FAST)
        await client.connect()
        got: list[Any] = []
        failed = when(client, "recovery_failed")
        await client.subscribe("news", lambda envelope: got.append(envelope["payload"]))
        await first.publish("news", "old")
        await barrier(client)
        old_position = client.position("news")
        assert got == ["old"] and old_position is not None
    assert client.state is not ClientState.CLOSED
    second = App()
    async with second.serve("127.0.0.1", port):
        assert await until(failed) == "news"
        new_position = client.position("news")
        assert new_position is not None and new_position[0] != old_position[0]
        await second.publish("news", "new")
        await barrier(client)
        assert got == ["old", "new"]
        await client.close()


async def test_failover_to_the_next_url() -> None:
    """With the first URL down, connect() goes on to the second one."""
    app = App()
    dead = f"ws://127.0.0.1:{free_port()}/ws"
    async with app.serve("127.0.0.1", 0) as server:
        async with Client([dead, url_of(server)], **FAST) as client:
            assert client.url == url_of(server)
            assert await client.call("rooms.list") == []
        alone = Client(dead, **FAST)
        with pytest.raises(OSError):
            await alone.connect()
        assert alone.state is ClientState.CLOSED
        with pytest.raises(RealtimeError) as gave_up:
            await Client(dead, max_attempts=3, **FAST).connect(retry=True)
        assert gave_up.value.code == "reconnect_failed" and "3 attempts" in str(gave_up.value)


async def test_stop_code_closes_for_good() -> None:
    """4500 and 1008 stop the client: closed, an error event, no second connection."""
    for code in (CloseCode.FORBIDDEN, CloseCode.POLICY_VIOLATION):
        app = kicking_app()
        async with app.serve("127.0.0.1", 0) as server, Client(url_of(server), **FAST) as client:
            errors = when(client, "error")
            closes = when(client, "close")
            with pytest.raises(RPCError):
                await client.call("kick", [code, "go away"])
            await asyncio.wait_for(client.wait_closed(), TIMEOUT)
            assert client.state is ClientState.CLOSED
            disconnect = await until(closes)
            assert (disconnect.code, disconnect.action) == (code, CloseAction.STOP)
            error = await until(errors)
            assert isinstance(error, ConnectionClosed) and error.code == code
            assert app.stats["connections"] == 1
            with pytest.raises(RPCError) as info:
                await client.call("rooms.list")
            assert info.value.code == "disconnected"


async def test_refused_token_raises_unauthorized_without_retrying() -> None:
    """A refused token (then 1008) makes connect() raise Unauthorized, even with retry."""
    app = App(auth=HMACVerifier(SECRET))
    async with app.serve("127.0.0.1", 0) as server:
        client = Client(url_of(server), token="not-a-token", **FAST)
        with pytest.raises(Unauthorized):
            await client.connect(retry=True)
        assert client.state is ClientState.CLOSED
        assert app.stats["connections"] == 1
    tokenless = App()  # refuses every token but keeps the connection open
    async with tokenless.serve("127.0.0.1", 0) as server:
        client = Client(url_of(server), token="t", **{**FAST, "open_timeout": 0.2})
        with pytest.raises(Unauthorized):
            await client.connect(retry=True)
        assert tokenless.stats["connections"] == 1


async def test_token_expired_close_fetches_a_new_token() -> None:
    """4200 is REAUTH: the token function is called again and the client is back as its user."""
    app = kicking_app(auth=HMACVerifier(SECRET))
    calls: list[int] = []

    @app.rpc("whoami")
    async def whoami(ctx: Context, params: Any) -> str | None:
        return ctx.user

    async def token() -> str:
        calls.append(1)
        return sign_token(SECRET, "ann")

    async with (
        app.serve("127.0.0.1", 0) as server,
        Client(url_of(server), token=token, **FAST) as client,
    ):
        assert client.user == "ann" and len(calls) == 1
        reopened = when(client, "state", lambda state: state is ClientState.OPEN)
        closes = when(client, "close")
        with pytest.raises(RPCError):
            await client.call("kick", [CloseCode.TOKEN_EXPIRED, "token expired"])
        assert (await until(closes)).action is CloseAction.REAUTH
        await until(reopened)
        assert len(calls) == 2
        assert await client.call("whoami") == "ann"


async def test_dead_server_is_detected_by_heartbeat() -> None:
    """No pong within pong_timeout: the client drops the connection (1006) and reconnects."""
    app = App()
    paused: list[Session] = []

    @app.on_connect
    async def stall_first(session: Session) -> None:
        if not paused:
            paused.append(session)
            transport = session.ws.transport
            assert transport is not None
            transport.pause_reading()  # the server stops reading: no pong will come

    async with app.serve("127.0.0.1", 0, close_timeout=1.0) as server:
        client = Client(url_of(server), ping_interval=0.1, pong_timeout=0.2, **FAST)
        closes = when(client, "close")
        reopened = when(client, "state", lambda state: state is ClientState.OPEN)
        await client.connect()
        disconnect = await until(closes)
        assert disconnect.code == CloseCode.ABNORMAL_CLOSURE
        assert "pong" in disconnect.reason and disconnect.action is CloseAction.BACKOFF
        await until(reopened)
        assert await client.call("rooms.list") == []
        transport = paused[0].ws.transport
        assert transport is not None
        transport.resume_reading()  # let the stalled session see its close and clean up
        await client.close()


async def test_close_fails_pending_calls_and_stops_reconnecting() -> None:
    """close() fails calls in flight with ``disconnected``; while reconnecting it stops for good."""
    app = kicking_app()
    gate = Gate(app, pass_first=2)
    release = asyncio.Event()

    @app.rpc("hang")
    async def hang(ctx: Context, params: Any) -> None:
        await asyncio.wait_for(release.wait(), TIMEOUT)

    async with app.serve("127.0.0.1", 0) as server:
        client = Client(url_of(server), **FAST)
        await client.connect()
        call = asyncio.ensure_future(client.call("hang"))
        await barrier(client)
        await client.close()
        with pytest.raises(RPCError) as info:
            await until(call)
        assert info.value.code == "disconnected"
        release.set()

        other = Client(url_of(server), **FAST)
        await other.connect()
        with pytest.raises(RPCError):
            await other.call("kick", [CloseCode.TRY_LATER, "later"])
        assert other.state is ClientState.RECONNECTING
        await until(asyncio.ensure_future(gate.waiting.wait()))  # held in its next attempt
        closed = when(other, "state", lambda state: state is ClientState.CLOSED)
        await other.close()
        await asyncio.wait_for(other.wait_closed(), TIMEOUT)
        assert closed.done()
        gate.open.set()
        with pytest.raises(RealtimeError):
            await other.join("lobby")
        assert gate.count == 3  # client, other, other's held attempt: nothing after close()
