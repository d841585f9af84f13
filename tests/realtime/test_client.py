"""The reconnecting Python client against a real App over loopback: the basics.

Connecting and closing, options, rooms, channels, calls in both directions,
the offline queue and the back-off delay.  Reconnects: test_client_reconnect.py;
several URLs, health checks and failover: test_client_nodes.py.  Helpers and
the rules for bounded waits: clientkit.py.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tidewire.errors import RealtimeError, Rejected, RPCError, RPCTimeout
from tidewire.realtime import App
from tidewire.realtime.client import Client, ClientState, OfflineQueueFull, backoff_delay
from tidewire.realtime.context import Context

from .clientkit import FAST, TIMEOUT, Gate, barrier, kicking_app, sync, until, url_of, when

# ------------------------------------------------------------------ basics


async def test_connect_opens_after_hello_and_close_ends() -> None:
    """connect() reads the hello: state goes connecting -> open, close() ends in closed."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server:
        client = Client(url_of(server), **FAST)
        states: list[ClientState] = []
        client.on("state", states.append)
        async with client:
            assert client.state is ClientState.OPEN
            assert client.connection_id in app.hub.sessions
            assert client.url == url_of(server)
        assert states == [ClientState.CONNECTING, ClientState.OPEN, ClientState.CLOSED]
        with pytest.raises(RealtimeError) as info:
            await client.send({"type": "note"})
        assert info.value.code == "disconnected"


async def test_options_are_checked_up_front() -> None:
    """Bad URLs, numbers and transport options raise at construction, naming the option."""
    with pytest.raises(ValueError, match="ws://"):
        Client("http://example.com/ws")
    with pytest.raises(ValueError, match="reconnect_base"):
        Client("ws://h/ws", reconnect_base=0)
    with pytest.raises(TypeError, match="no_such_option"):
        Client("ws://h/ws", no_such_option=1)
    with pytest.raises(TypeError, match="ping_timeout"):
        Client("ws://h/ws", ping_timeout=1.0)


async def test_join_leave_and_room_events() -> None:
    """join returns members or the server's error; room notices and app types are events."""
    app = App()
    app.authorize_with(lambda session, name, action: name != "secret")

    @app.on("chat", fields={"room": str, "text": str})
    async def chat(ctx: Context) -> None:
        await ctx.emit_room(ctx.message["room"], "chat", text=ctx.message["text"])

    async with (
        app.serve("127.0.0.1", 0) as server,
        Client(url_of(server), **FAST) as ann,
        Client(url_of(server), **FAST) as bob,
    ):
        reply = await ann.join("lobby")
        assert reply == {
            "type": "joined",
            "room": "lobby",
            "count": 1,
            "members": [ann.user or ann.connection_id],
        }
        seen: list[dict[str, Any]] = []

        async def joined(envelope: dict[str, Any]) -> None:
            seen.append(envelope)

        ann.on("userJoined", joined)
        left = when(ann, "userLeft")
        await bob.join("lobby")
        await barrier(ann)
        assert seen == [{"type": "userJoined", "room": "lobby", "user": bob.connection_id}]
        everything: list[str] = []
        bob.on("message", lambda envelope: everything.append(envelope["type"]))
        chats = when(bob, "chat")
        await ann.emit("chat", room="lobby", text="hi")
        assert await until(chats) == {"type": "chat", "text": "hi"}
        assert everything == ["chat"]
        await bob.leave("lobby")
        assert (await until(left))["user"] == bob.connection_id
        assert bob.rooms == frozenset() and ann.rooms == {"lobby"}
        with pytest.raises(Rejected) as refused:
            await ann.join("secret")
        assert refused.value.code == "forbidden"
        with pytest.raises(RealtimeError) as invalid:
            await ann.join("no spaces")
        assert invalid.value.code == "invalid"
        assert ann.rooms == {"lobby"}


async def test_subscribe_publish_and_unsubscribe() -> None:
    """A subscriber gets each publication once in offset order until it unsubscribes."""
    app = App()
    async with (
        app.serve("127.0.0.1", 0) as server,
        Client(url_of(server), **FAST) as ann,
        Client(url_of(server), **FAST) as bob,
    ):
        got: list[dict[str, Any]] = []
        unsubscribe = await ann.subscribe("news", got.append)
        with pytest.raises(Exception, match="already subscribed"):
            await ann.subscribe("news", got.append)
        for n in range(3):
            await bob.publish("news", {"n": n})
        await sync(bob)
        await barrier(ann)
        assert got == [
            {"type": "publish", "channel": "news", "payload": {"n": n}, "offset": n + 1}
            for n in range(3)
        ]
        position = ann.position("news")
        assert position is not None and position[1] == 3
        await unsubscribe()
        await bob.publish("news", "late")
        await sync(bob)
        await barrier(ann)
        assert len(got) == 3 and ann.channels == frozenset()


async def test_call_returns_result_or_raises_by_code() -> None:
    """call() returns the result, raises RPCError with the server's code, RPCTimeout on time."""
    app = App()
    release = asyncio.Event()

    @app.rpc("add")
    async def add(ctx: Context, params: Any) -> int:
        return int(params["a"] + params["b"])

    @app.rpc("refuse")
    async def refuse(ctx: Context, params: Any) -> None:
        raise RealtimeError("not today", "bad_input")

    @app.rpc("crash")
    async def crash(ctx: Context, params: Any) -> None:
        raise ValueError("internal detail")

    @app.rpc("hang")
    async def hang(ctx: Context, params: Any) -> None:
        await asyncio.wait_for(release.wait(), TIMEOUT)

    async with app.serve("127.0.0.1", 0) as server, Client(url_of(server), **FAST) as client:
        assert await client.call("add", {"a": 1, "b": 2}) == 3
        for method, code in [
            ("nope", "no_such_method"),
            ("refuse", "bad_input"),
            ("crash", "handler_error"),
        ]:
            with pytest.raises(RPCError) as info:
                await client.call(method)
            assert info.value.code == code
        with pytest.raises(RPCTimeout) as timed_out:
            await client.call("hang", timeout=0.1)
        assert isinstance(timed_out.value, TimeoutError) and timed_out.value.code == "timeout"
        release.set()
        assert await client.call("add", {"a": 2, "b": 2}) == 4


async def test_server_calls_client_rpc_handlers() -> None:
    """The server's ctx.call() reaches @client.rpc handlers; unknown methods and errors map."""
    app = App()

    @app.rpc("ask")
    async def ask(ctx: Context, params: Any) -> Any:
        return await ctx.call(params["method"], params.get("params"), timeout=TIMEOUT)

    async with app.serve("127.0.0.1", 0) as server, Client(url_of(server), **FAST) as client:

        @client.rpc("double")
        async def double(params: Any) -> int:
            return int(params) * 2

        @client.rpc("upper")
        def upper(params: Any) -> str:
            return str(params).upper()

        @client.rpc("refuse")
        def refuse(params: Any) -> None:
            raise RealtimeError("no", "not_allowed")

        assert await client.call("ask", {"method": "double", "params": 21}) == 42
        assert await client.call("ask", {"method": "upper", "params": "hi"}) == "HI"
        for method, code in [("missing", "no_such_method"), ("refuse", "not_allowed")]:
            with pytest.raises(RPCError) as info:
                await client.call("ask", {"method": method})
            assert info.value.code == code


# ------------------------------------------------------------ offline queue


async def test_offline_queue_flushes_in_order_after_a_server_close() -> None:
    """Sends while reconnecting are queued, then sent in order after the room is rejoined."""
    app = kicking_app()
    gate = Gate(app)
    notes: list[tuple[int, bool]] = []
    all_in = asyncio.Event()

    @app.on("note")
    async def note(ctx: Context) -> None:
        notes.append((ctx.message["n"], "lobby" in ctx.session.rooms))
        if len(notes) == 5:
            all_in.set()

    async with app.serve("127.0.0.1", 0) as server, Client(url_of(server), **FAST) as client:
        await client.join("lobby")
        with pytest.raises(RPCError) as info:
            await client.call("kick")
        assert info.value.code == "disconnected"
        assert client.state is ClientState.RECONNECTING
        for n in range(5):
            await client.send({"type": "note", "n": n})
        assert client.queued == 5 and client.queued_bytes > 0
        await until(asyncio.ensure_future(gate.waiting.wait()))
        gate.open.set()
        await asyncio.wait_for(all_in.wait(), TIMEOUT)
        assert notes == [(n, True) for n in range(5)]
        assert client.queued == 0 and client.queued_bytes == 0


async def test_offline_queue_full_raises_and_keeps_what_it_has() -> None:
    """Past offline_max_messages or _bytes, send() raises OfflineQueueFull and drops nothing."""
    app = App()
    received: list[int] = []
    both = asyncio.Event()

    @app.on("note")
    async def note(ctx: Context) -> None:
        received.append(ctx.message["n"])
        if len(received) == 2:
            both.set()

    async with app.serve("127.0.0.1", 0) as server:
        client = Client(url_of(server), offline_max_messages=2, **FAST)
        await client.send({"type": "note", "n": 0})
        await client.send({"type": "note", "n": 1})
        with pytest.raises(OfflineQueueFull) as full:
            await client.send({"type": "note", "n": 2})
        assert (full.value.code, full.value.what, full.value.limit) == (
            "offline_queue_full",
            "messages",
            2,
        )
        assert isinstance(full.value, RealtimeError) and client.queued == 2
        small = Client(url_of(server), offline_max_bytes=40, **FAST)
        with pytest.raises(OfflineQueueFull) as too_big:
            await small.send({"type": "note", "text": "x" * 40})
        assert too_big.value.what == "bytes" and small.queued == 0
        async with client:
            await asyncio.wait_for(both.wait(), TIMEOUT)
        assert received == [0, 1]


# ----------------------------------------------------------------- back-off


def test_backoff_delay_is_full_jitter_within_bounds() -> None:
    """Delays spread over [0, min(cap, base * 2**attempt)] and repeat for a seed."""
    rng = random.Random(1234)
    for attempt in range(12):
        window = min(30.0, 0.5 * 2**attempt)
        samples = [backoff_delay(attempt, base=0.5, cap=30.0, rng=rng) for _ in range(200)]
        assert all(0.0 <= delay <= window for delay in samples)
        assert min(samples) < 0.1 * window and max(samples) > 0.9 * window
    assert backoff_delay(10_000, base=0.5, cap=30.0, rng=rng) <= 30.0
    runs = [random.Random(7), random.Random(7)]
    first, second = ([backoff_delay(n, base=0.5, cap=4.0, rng=r) for n in range(6)] for r in runs)
    assert first == second
    with pytest.raises(ValueError):
        backoff_delay(-1, base=0.5, cap=30.0)
