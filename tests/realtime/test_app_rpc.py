"""RPC in both directions over loopback: results, typed errors, timeouts, limits, built-ins."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tidewire.errors import RealtimeError, RPCError, RPCTimeout
from tidewire.realtime import App, Context, HMACVerifier, Session

from .conftest import SECRET, TIMEOUT, connect, next_disconnect, track_disconnects, user_token

# --- client -> server -----------------------------------------------------------------------


async def test_rpc_returns_result_with_the_call_id() -> None:
    """A method's return value comes back in ``rpc_result`` under the call's id (int or str)."""
    app = App()

    @app.rpc("add")
    async def add(ctx: Context, params: Any) -> int:
        return int(params["a"] + params["b"])

    @app.rpc("nothing")
    async def nothing(ctx: Context, params: Any) -> None:
        assert params is None

    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        assert await a.call("add", {"a": 1, "b": 2}) == {"type": "rpc_result", "id": 1, "result": 3}
        await a.send({"type": "rpc", "id": "s-1", "method": "add", "params": {"a": 2, "b": 2}})
        assert await a.recv() == {"type": "rpc_result", "id": "s-1", "result": 4}
        assert await a.call("nothing", call_id=2) == {"type": "rpc_result", "id": 2, "result": None}


async def test_realtime_error_code_reaches_the_caller() -> None:
    """A method raising RealtimeError("x", "my_code") answers an error with that code."""
    app = App()

    @app.rpc("fail")
    async def fail(ctx: Context, params: Any) -> None:
        raise RealtimeError("out of stock", "my_code")

    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        assert await a.call("fail") == {
            "type": "rpc_result",
            "id": 1,
            "error": {"code": "my_code", "message": "out of stock"},
        }


async def test_unexpected_exception_is_handler_error_without_details() -> None:
    """A method raising ValueError answers ``handler_error`` and leaks nothing of the message."""
    app = App()

    @app.rpc("crash")
    async def crash(ctx: Context, params: Any) -> None:
        raise ValueError("password=hunter2")

    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        await a.send({"type": "rpc", "id": 1, "method": "crash"})
        raw = await asyncio.wait_for(a.ws.recv(), TIMEOUT)
        assert "hunter2" not in raw
        assert json.loads(raw) == {
            "type": "rpc_result",
            "id": 1,
            "error": {"code": "handler_error", "message": "the method failed"},
        }
        assert (await a.call("crash", call_id=2))["error"]["code"] == "handler_error"


async def test_unknown_method_is_no_such_method() -> None:
    """Calling a method nobody registered answers ``no_such_method``."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        reply = await a.call("nope")
        assert reply["error"] == {"code": "no_such_method", "message": "no such method 'nope'"}


async def test_unserializable_result_is_handler_error() -> None:
    """A method returning something JSON cannot hold still gets an answer: ``handler_error``."""
    app = App()

    @app.rpc("weird")
    async def weird(ctx: Context, params: Any) -> object:
        return {1, 2}

    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        reply = await a.call("weird")
        assert reply["error"]["code"] == "handler_error"
        assert (await a.call("rooms.list", call_id=2))["result"] == []


async def test_slow_method_times_out_and_is_cancelled() -> None:
    """Past rpc_timeout the caller gets ``timeout`` and the method is cancelled."""
    app = App(rpc_timeout=0.2)
    cancelled = asyncio.Event()

    @app.rpc("hang")
    async def hang(ctx: Context, params: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        reply = await a.call("hang")
        assert reply["error"]["code"] == "timeout"
        assert "0.2" in reply["error"]["message"]
        await asyncio.wait_for(cancelled.wait(), TIMEOUT)


async def test_calls_run_concurrently() -> None:
    """A fast call answers while a slow one from the same client is still running."""
    app = App()
    release = asyncio.Event()

    @app.rpc("slow")
    async def slow(ctx: Context, params: Any) -> str:
        await release.wait()
        return "slow"

    @app.rpc("fast")
    async def fast(ctx: Context, params: Any) -> str:
        return "fast"

    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        await a.send({"type": "rpc", "id": 1, "method": "slow"})
        assert await a.call("fast", call_id=2) == {"type": "rpc_result", "id": 2, "result": "fast"}
        release.set()
        assert await a.recv() == {"type": "rpc_result", "id": 1, "result": "slow"}


async def test_max_concurrent_rpcs_is_too_many_calls() -> None:
    """Past max_concurrent_rpcs running calls, another one answers ``too_many_calls`` at once."""
    app = App(max_concurrent_rpcs=2)
    release = asyncio.Event()

    @app.rpc("wait")
    async def wait(ctx: Context, params: Any) -> int:
        await release.wait()
        return int(params)

    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        await a.send({"type": "rpc", "id": 1, "method": "wait", "params": 1})
        await a.send({"type": "rpc", "id": 2, "method": "wait", "params": 2})
        reply = await a.call("wait", 3, call_id=3)
        assert reply["error"] == {"code": "too_many_calls", "message": "at most 2 calls at once"}
        release.set()
        results = {(await a.recv())["id"], (await a.recv())["id"]}
        assert results == {1, 2}
        assert (await a.call("wait", 4, call_id=4))["result"] == 4


# --- server -> client -----------------------------------------------------------------------


def asking_app(outcomes: asyncio.Queue[Any], *, timeout: float = TIMEOUT) -> App:
    """An app whose ``ask`` method and ``prompt`` message call ``confirm`` on the client."""
    app = App()

    async def ask_client(ctx: Context) -> Any:
        try:
            result = await ctx.call("confirm", ctx.message.get("params"), timeout=timeout)
        except RPCError as exc:
            outcomes.put_nowait(exc)
            return {"failed": exc.code}
        outcomes.put_nowait(result)
        return {"answer": result}

    @app.rpc("ask")
    async def ask(ctx: Context, params: Any) -> Any:
        return await ask_client(ctx)

    @app.on("prompt")
    async def prompt(ctx: Context) -> dict[str, Any]:
        return {"type": "prompted", **await ask_client(ctx)}

    return app


async def test_server_call_gets_the_client_result() -> None:
    """``ctx.call`` sends ``rpc`` to the client and returns the ``rpc_result`` it answers."""
    outcomes: asyncio.Queue[Any] = asyncio.Queue()
    app = asking_app(outcomes)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        await a.send({"type": "rpc", "id": 1, "method": "ask", "params": {"q": "sure?"}})
        call = await a.recv()
        assert call == {
            "type": "rpc",
            "id": call["id"],
            "method": "confirm",
            "params": {"q": "sure?"},
        }
        await a.send({"type": "rpc_result", "id": call["id"], "result": "yes"})
        assert await a.recv() == {"type": "rpc_result", "id": 1, "result": {"answer": "yes"}}
        assert outcomes.get_nowait() == "yes"


async def test_server_call_from_a_message_handler() -> None:
    """A message handler can await ``ctx.call``: the reader still takes the client's answer."""
    outcomes: asyncio.Queue[Any] = asyncio.Queue()
    app = asking_app(outcomes)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        await a.send({"type": "prompt"})
        call = await a.recv()
        assert call == {"type": "rpc", "id": call["id"], "method": "confirm"}
        await a.send({"type": "rpc_result", "id": call["id"], "result": [1, 2]})
        assert await a.recv() == {"type": "prompted", "answer": [1, 2]}


async def test_server_call_client_error_raises_rpc_error() -> None:
    """A client answering with an error makes ``ctx.call`` raise RPCError with its code."""
    outcomes: asyncio.Queue[Any] = asyncio.Queue()
    app = asking_app(outcomes)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        await a.send({"type": "rpc", "id": 1, "method": "ask"})
        call = await a.recv()
        error = {"code": "declined", "message": "user said no"}
        await a.send({"type": "rpc_result", "id": call["id"], "error": error})
        assert await a.recv() == {"type": "rpc_result", "id": 1, "result": {"failed": "declined"}}
        exc = outcomes.get_nowait()
        assert type(exc) is RPCError and str(exc) == "user said no"


async def test_server_call_without_answer_times_out() -> None:
    """A client that never answers makes ``ctx.call`` raise RPCTimeout after its timeout."""
    outcomes: asyncio.Queue[Any] = asyncio.Queue()
    app = asking_app(outcomes, timeout=0.2)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        await a.send({"type": "rpc", "id": 1, "method": "ask"})
        call = await a.recv()
        assert call["method"] == "confirm"
        assert await a.recv() == {"type": "rpc_result", "id": 1, "result": {"failed": "timeout"}}
        assert isinstance(outcomes.get_nowait(), RPCTimeout)
        assert len(a.session(app).calls) == 0
        # A late answer to the expired call is ignored.
        await a.send({"type": "rpc_result", "id": call["id"], "result": "late"})
        await a.barrier()


async def test_server_call_fails_when_the_client_disconnects() -> None:
    """A client that disconnects mid-call makes ``ctx.call`` raise RPCError ``disconnected``."""
    outcomes: asyncio.Queue[Any] = asyncio.Queue()
    app = asking_app(outcomes, timeout=30)
    async with app.serve("127.0.0.1", 0) as server:
        async with connect(server) as a:
            await a.send({"type": "rpc", "id": 1, "method": "ask"})
            assert (await a.recv())["method"] == "confirm"
        exc = await asyncio.wait_for(outcomes.get(), TIMEOUT)
        assert type(exc) is RPCError and exc.code == "disconnected"


async def test_message_handler_awaiting_a_call_is_cancelled_on_disconnect() -> None:
    """A message handler waiting on ``ctx.call`` ends with the connection, not at the timeout."""
    app = App()
    gone = track_disconnects(app)
    ended: asyncio.Queue[BaseException] = asyncio.Queue()

    @app.on("prompt")
    async def prompt(ctx: Context) -> None:
        try:
            await ctx.call("confirm", timeout=30)
        except BaseException as exc:
            ended.put_nowait(exc)
            raise

    async with app.serve("127.0.0.1", 0) as server:
        async with connect(server) as a:
            await a.send({"type": "prompt"})
            assert (await a.recv())["method"] == "confirm"
            cid = a.id
        assert await next_disconnect(gone) == cid
        exc = await asyncio.wait_for(ended.get(), TIMEOUT)
        assert isinstance(exc, asyncio.CancelledError | RPCError)
        assert not isinstance(exc, RPCTimeout)


async def test_unmatched_rpc_result_is_ignored() -> None:
    """An ``rpc_result`` for no pending call is dropped without an error."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        await a.send({"type": "rpc_result", "id": 99, "result": 1})
        await a.barrier()


# --- built-in methods -----------------------------------------------------------------------


async def test_rooms_list_respects_the_see_action() -> None:
    """``rooms.list`` lists rooms with member counts, leaving out those the caller may not see."""
    app = App()

    @app.authorize_with
    def authorizer(session: Session, name: str, action: str) -> bool:
        return not (action == "see" and name.startswith("hidden"))

    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server) as a,
        connect(server) as b,
    ):
        await a.join("lobby")
        await b.join("lobby")
        assert (await a.recv())["type"] == "userJoined"
        await a.join("hidden-ops")
        await b.join("zoo")
        assert (await a.call("rooms.list"))["result"] == [
            {"room": "lobby", "members": 2},
            {"room": "zoo", "members": 1},
        ]


async def test_presence_lists_members_connections_and_meta() -> None:
    """``presence`` lists each user once with its connection count and session metadata."""
    app = App(auth=HMACVerifier(SECRET))

    @app.on_connect
    async def tag(session: Session) -> None:
        session.metadata["status"] = f"{session.user}-online"

    alice = user_token("alice")
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server, token=alice) as alice1,
        connect(server, token=alice) as alice2,
        connect(server, token=user_token("bob")) as bob,
    ):
        for peer in (alice1, alice2, bob):
            await peer.join("lobby")
        reply = await bob.call("presence", {"room": "lobby"})
        assert reply["result"] == [
            {"user": "alice", "connections": 2, "meta": {"status": "alice-online"}},
            {"user": "bob", "connections": 1, "meta": {"status": "bob-online"}},
        ]
        assert (await bob.call("presence", {"room": "empty"}, call_id=2))["result"] == []


async def test_presence_errors() -> None:
    """``presence`` answers ``invalid_params`` for bad params, ``forbidden`` for hidden rooms."""
    app = App()

    @app.authorize_with
    def authorizer(session: Session, name: str, action: str) -> bool:
        return name != "hidden"

    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        for n, params in enumerate(([1], {"room": ""}, {"room": "bad room"}, {}), start=1):
            reply = await a.call("presence", params, call_id=n)
            assert reply["error"]["code"] == "invalid_params", params
        reply = await a.call("presence", {"room": "hidden"}, call_id=9)
        assert reply["error"]["code"] == "forbidden"
