"""The reconnecting Python client against a real App over loopback.

Every wait is bounded by ``TIMEOUT``; reconnect delays are made tiny with a
small ``reconnect_base``/``reconnect_cap``, and the moments a test must hold
("while the client is disconnected") are held by an ``on_connect`` gate on the
server, never by sleeping.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable
from typing import Any

import pytest

from tidewire.errors import (
    ConnectionClosed,
    RealtimeError,
    Rejected,
    RPCError,
    RPCTimeout,
    Unauthorized,
)
from tidewire.protocol.close import CloseAction, CloseCode
from tidewire.realtime import App, HMACVerifier, Session, sign_token
from tidewire.realtime.client import (
    Client,
    ClientState,
    Disconnect,
    OfflineQueueFull,
    backoff_delay,
)
from tidewire.realtime.context import Context
from tidewire.transport import Server

#: Seconds any one expected event may take.
TIMEOUT = 3.0

#: A secret long enough for HMACVerifier.
SECRET = b"client-tests-secret-0123456789abcdef"

#: Client options that keep reconnects fast and waits short.
FAST: dict[str, Any] = {
    "reconnect_base": 0.02,
    "reconnect_cap": 0.1,
    "open_timeout": TIMEOUT,
    "call_timeout": TIMEOUT,
    "close_timeout": 1.0,
}


def url_of(server: Server) -> str:
    """The App's WebSocket URL on ``server``."""
    return f"ws://127.0.0.1:{server.port}/ws"


def when(
    client: Client, event: str, match: Callable[..., bool] | None = None
) -> asyncio.Future[Any]:
    """A future for the first ``event`` whose arguments satisfy ``match`` (its first argument)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def callback(*args: Any) -> None:
        if not future.done() and (match is None or match(*args)):
            future.set_result(args[0] if args else None)
            client.off(event, callback)

    client.on(event, callback)
    return future


async def until(future: asyncio.Future[Any]) -> Any:
    """The future's result, failing the test after TIMEOUT."""
    return await asyncio.wait_for(future, TIMEOUT)


async def barrier(client: Client) -> None:
    """Everything the server sent this client before now has been dispatched.

    The server answers in order with what it already queued for the client, so
    once this call's result is back, earlier messages went through the reader.
    """
    await client.call("rooms.list")


async def sync(client: Client) -> None:
    """Everything this client sent before now has been handled by the server.

    ``join`` runs in the connection's ordered worker, after earlier messages.
    """
    await client.join("sync")


def kicking_app(**kwargs: Any) -> App:
    """An App whose RPC ``kick`` closes the caller with the code in its params."""
    app = App(**kwargs)

    @app.rpc("kick")
    async def kick(ctx: Context, params: Any) -> None:
        code, reason = params if params else (CloseCode.RECONNECT, "bye")
        ctx.session.fail(code, reason)

    return app


class Gate:
    """An ``on_connect`` hook that holds the connections after the first ``pass_first``."""

    def __init__(self, app: App, pass_first: int = 1) -> None:
        """Install the hook on ``app``; the gate starts closed."""
        self.count = 0
        self.pass_first = pass_first
        self.open = asyncio.Event()
        self.waiting = asyncio.Event()
        app.on_connect(self.hook)

    async def hook(self, session: Session) -> None:
        """Let the first connections through; hold later ones until released."""
        self.count += 1
        if self.count > self.pass_first:
            self.waiting.set()
            await asyncio.wait_for(self.open.wait(), TIMEOUT)


def free_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


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
