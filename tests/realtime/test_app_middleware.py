"""Middleware over loopback: order, rejection, rewriting, dropping, and RPCs."""

from __future__ import annotations

from typing import Any

from tidewire.errors import RealtimeError, Rejected
from tidewire.realtime import App, Context
from tidewire.realtime.middleware import Next

from .conftest import connect


def echo_app(log: list[str]) -> App:
    """An app with an ``echo`` handler and an ``echo`` RPC that log their calls."""
    app = App()

    @app.on("echo")
    async def echo(ctx: Context) -> dict[str, Any]:
        log.append("handler")
        return {"type": "echoed", "message": ctx.message}

    @app.rpc("echo")
    async def echo_rpc(ctx: Context, params: Any) -> Any:
        log.append("rpc")
        return params

    return app


async def test_middlewares_run_in_the_order_added_around_the_handler() -> None:
    """Middleware added first runs outermost: a> b> c> handler c< b< a<."""
    log: list[str] = []
    app = echo_app(log)

    def tracer(name: str) -> Any:
        async def middleware(ctx: Context, call_next: Next) -> Any:
            log.append(f"{name}>")
            result = await call_next()
            log.append(f"{name}<")
            return result

        return middleware

    for name in "abc":
        app.use(tracer(name))
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        assert (await a.request({"type": "echo"}))["type"] == "echoed"
        assert log == ["a>", "b>", "c>", "handler", "c<", "b<", "a<"]


async def test_rejecting_middleware_answers_error_and_skips_the_handler() -> None:
    """A middleware raising Rejected answers ``error`` with its code; the handler never runs."""
    log: list[str] = []
    app = echo_app(log)

    @app.use
    async def guard(ctx: Context, call_next: Next) -> Any:
        if ctx.message.get("bad"):
            raise Rejected("bad messages are refused")
        if ctx.message.get("banned"):
            raise RealtimeError("you are banned", "banned")
        return await call_next()

    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        assert await a.request({"type": "echo", "bad": True, "id": 4}) == {
            "type": "error",
            "code": "rejected",
            "message": "bad messages are refused",
            "ref": 4,
        }
        reply = await a.request({"type": "echo", "banned": True})
        assert (reply["code"], reply["message"], reply["ref"]) == (
            "banned",
            "you are banned",
            "echo",
        )
        assert log == []
        assert (await a.request({"type": "echo"}))["type"] == "echoed"
        assert log == ["handler"]


async def test_middleware_rewrites_the_message_before_the_handler() -> None:
    """A middleware replacing ``ctx.message`` changes what the handler sees."""
    log: list[str] = []
    app = echo_app(log)

    @app.use
    async def shout(ctx: Context, call_next: Next) -> Any:
        ctx.message = {**ctx.message, "text": str(ctx.message["text"]).upper(), "seen": True}
        return await call_next()

    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        assert await a.request({"type": "echo", "text": "hi"}) == {
            "type": "echoed",
            "message": {"type": "echo", "text": "HI", "seen": True},
        }


async def test_middleware_not_calling_next_drops_silently() -> None:
    """A middleware that returns without ``call_next`` drops the message: no reply, no handler."""
    log: list[str] = []
    app = echo_app(log)

    @app.use
    async def drop(ctx: Context, call_next: Next) -> Any:
        if ctx.message.get("drop"):
            return None
        return await call_next()

    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        await a.send({"type": "echo", "drop": True, "id": 1})
        await a.barrier()
        assert log == []
        assert (await a.request({"type": "echo", "id": 2}))["id"] == 2


async def test_middleware_can_answer_by_itself() -> None:
    """A middleware returning an envelope short-circuits: it is sent as the reply."""
    log: list[str] = []
    app = echo_app(log)

    @app.use
    async def cached(ctx: Context, call_next: Next) -> Any:
        return {"type": "cached"}

    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        assert await a.request({"type": "echo", "id": "c"}) == {"type": "cached", "id": "c"}
        assert log == []


async def test_middleware_failure_is_handler_error_and_connection_survives() -> None:
    """A middleware raising a plain exception answers ``handler_error``; the next message works."""
    log: list[str] = []
    app = echo_app(log)

    @app.use
    async def flaky(ctx: Context, call_next: Next) -> Any:
        if ctx.message.get("boom"):
            raise KeyError("internal")
        return await call_next()

    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        reply = await a.request({"type": "echo", "boom": True})
        assert (reply["type"], reply["code"], reply["ref"]) == ("error", "handler_error", "echo")
        assert "internal" not in reply["message"]
        assert (await a.request({"type": "echo"}))["type"] == "echoed"


async def test_middleware_applies_to_rpcs_and_commands() -> None:
    """RPCs and reserved commands (join) pass through middleware too."""
    log: list[str] = []
    app = echo_app(log)
    seen: list[tuple[str, Any]] = []

    @app.use
    async def guard(ctx: Context, call_next: Next) -> Any:
        seen.append((ctx.type, ctx.message.get("method") or ctx.message.get("room")))
        if ctx.message.get("method") == "echo" and ctx.params == "forbidden":
            raise Rejected("not this one")
        if ctx.type == "join" and ctx.message["room"] == "closed":
            raise Rejected("room closed")
        return await call_next()

    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        assert (await a.call("echo", "fine"))["result"] == "fine"
        assert (await a.call("echo", "forbidden", call_id=2)) == {
            "type": "rpc_result",
            "id": 2,
            "error": {"code": "rejected", "message": "not this one"},
        }
        reply = await a.request({"type": "join", "room": "closed"})
        assert (reply["type"], reply["code"]) == ("error", "rejected")
        assert "closed" not in app.hub.rooms
        assert log == ["rpc"]
        assert seen == [("rpc", "echo"), ("rpc", "echo"), ("join", "closed")]
