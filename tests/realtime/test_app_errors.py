"""Protocol errors over loopback: bad frames and envelopes, validation, handler failures, ping."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tidewire.realtime import App, Context

from .conftest import TIMEOUT, Peer, connect


def handlers_app() -> App:
    """An app with a validated ``chat``, a failing ``crash`` and replying handlers."""
    app = App()

    @app.on("chat", fields={"text": str, "n": int, "tag": (str, type(None))})
    async def chat(ctx: Context) -> dict[str, Any]:
        return {"type": "chatted", "text": ctx.message["text"]}

    @app.on("crash")
    async def crash(ctx: Context) -> None:
        raise RuntimeError("db password is hunter2")

    @app.on("nothing")
    async def nothing(ctx: Context) -> dict[str, Any]:
        return {"no": "type"}

    @app.on("weird")
    async def weird(ctx: Context) -> dict[str, Any]:
        return {"type": "weird", "value": {1, 2}}

    @app.on("complain")
    async def complain(ctx: Context) -> None:
        ctx.error("my_error", "you did it wrong")

    @app.on("slow")
    async def slow(ctx: Context) -> dict[str, Any]:
        for _ in range(50):
            await asyncio.sleep(0)
        return {"type": "slow-done"}

    @app.on("fast")
    async def fast(ctx: Context) -> dict[str, Any]:
        return {"type": "fast-done"}

    return app


async def raw_error(peer: Peer, data: str | bytes) -> dict[str, Any]:
    """Send ``data`` as is and return the ``error`` envelope it earns."""
    await peer.ws.send(data)
    reply = await peer.recv()
    assert reply["type"] == "error", reply
    return reply


async def test_malformed_json_is_bad_json() -> None:
    """Text that is not JSON (or uses NaN) answers ``bad_json`` without a ref."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        for data in ("not json", '{"type": "x"', '{"type": "x", "v": NaN}', ""):
            reply = await raw_error(a, data)
            assert reply["code"] == "bad_json" and "ref" not in reply, (data, reply)
            assert reply["message"].startswith("malformed JSON"), reply


async def test_binary_frame_is_bad_json() -> None:
    """A binary frame answers ``bad_json``, even one holding valid JSON."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        reply = await raw_error(a, json.dumps({"type": "ping"}).encode())
        assert reply["code"] == "bad_json"
        assert "binary" in reply["message"]


@pytest.mark.parametrize(
    "data",
    ["[1, 2]", "42", '"ping"', "null", "{}", '{"type": 1}', '{"type": null}', '{"type": ""}'],
    ids=["array", "number", "string", "null", "no-type", "int-type", "null-type", "empty-type"],
)
async def test_non_envelopes_are_bad_envelope(data: str) -> None:
    """JSON that is not an object with a non-empty string type answers ``bad_envelope``."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        reply = await raw_error(a, data)
        assert reply["code"] == "bad_envelope"


async def test_bad_ids_are_bad_envelope() -> None:
    """An ``id`` that is not an integer or a short string answers ``bad_envelope``."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        for bad in (1.5, True, "", "x" * 65, [1], 2**53):
            reply = await a.request({"type": "ping", "id": bad})
            assert (reply["type"], reply["code"], reply["ref"]) == ("error", "bad_envelope", "ping")


@pytest.mark.parametrize("kind", ["joined", "userJoined", "connection", "pong", "error", "left"])
async def test_server_only_types_are_bad_envelope(kind: str) -> None:
    """A client sending a type only the server sends gets ``bad_envelope`` with its ref."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        reply = await a.request({"type": kind, "room": "r"})
        assert (reply["type"], reply["code"], reply["ref"]) == ("error", "bad_envelope", kind)
        reply = await a.request({"type": kind, "id": 3})
        assert (reply["code"], reply["ref"]) == ("bad_envelope", 3)


async def test_unknown_type_is_unknown_type() -> None:
    """A type nobody handles answers ``unknown_type``; the ref is the type, or the id."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        reply = await a.request({"type": "teleport"})
        assert reply == {
            "type": "error",
            "code": "unknown_type",
            "message": "no handler for message type 'teleport'",
            "ref": "teleport",
        }
        reply = await a.request({"type": "teleport", "id": "t1"})
        assert (reply["code"], reply["ref"]) == ("unknown_type", "t1")


async def test_field_validation_is_invalid() -> None:
    """``fields=`` refuses a missing or mistyped field (bool is no int) with ``invalid``."""
    app = handlers_app()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        good = {"type": "chat", "text": "hi", "n": 1, "tag": None}
        assert await a.request(good) == {"type": "chatted", "text": "hi"}
        cases = [
            ({"text": "hi", "n": 1}, "missing field 'tag'"),
            ({"text": 5, "n": 1, "tag": "t"}, "field 'text' must be str"),
            ({"text": "hi", "n": True, "tag": "t"}, "field 'n' must be int"),
            ({"text": "hi", "n": 1, "tag": 3}, "field 'tag' must be str/NoneType"),
        ]
        for n, (fields, message) in enumerate(cases):
            reply = await a.request({"type": "chat", "id": n, **fields})
            assert reply == {"type": "error", "code": "invalid", "message": message, "ref": n}


async def test_reserved_fields_are_validated() -> None:
    """Reserved types with missing fields answer ``invalid`` with the ref."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        reply = await a.request({"type": "rpc", "method": "x"})
        assert (reply["code"], reply["ref"]) == ("invalid", "rpc")
        reply = await a.request({"type": "publish", "channel": "c", "id": 2})
        assert (reply["code"], reply["ref"]) == ("invalid", 2)
        reply = await a.request({"type": "auth", "id": 3})
        assert (reply["code"], reply["ref"]) == ("invalid", 3)
        reply = await a.request({"type": "rpc_result", "id": 4})
        assert (reply["code"], reply["ref"]) == ("invalid", 4)


async def test_handler_exception_is_handler_error_and_connection_stays_usable() -> None:
    """A handler raising answers ``handler_error`` without its message; the next message works."""
    app = handlers_app()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        await a.send({"type": "crash", "id": 1})
        raw = await asyncio.wait_for(a.ws.recv(), TIMEOUT)
        assert "hunter2" not in raw
        assert json.loads(raw) == {
            "type": "error",
            "code": "handler_error",
            "message": "the handler failed",
            "ref": 1,
        }
        good = {"type": "chat", "text": "still here", "n": 2, "tag": "t"}
        assert await a.request(good) == {"type": "chatted", "text": "still here"}


async def test_unencodable_reply_is_handler_error_and_connection_stays_usable() -> None:
    """A handler returning a reply JSON cannot hold answers ``handler_error``; the worker lives."""
    app = handlers_app()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        reply = await a.request({"type": "weird"})
        assert (reply["type"], reply["code"], reply["ref"]) == ("error", "handler_error", "weird")
        assert await a.request({"type": "fast"}) == {"type": "fast-done"}


async def test_errors_keep_the_connection_open() -> None:
    """Fewer protocol errors than the strike limit never close the connection."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        for data in ("nope", "[]", '{"type": "joined"}', '{"type": "zzz"}') * 2:
            await raw_error(a, data)
        await a.barrier()


async def test_a_flood_of_malformed_messages_closes_1008() -> None:
    """Malformed messages count as strikes: ten within the window close with 1008."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        for _ in range(10):
            await a.ws.send("nope")
        received = await a.expect_closed(1008)
        assert [m["code"] for m in received] == ["bad_json"] * 10
        assert a.ws.close_reason == "too many malformed messages"


async def test_ping_is_answered_with_pong() -> None:
    """App-level ``ping`` answers ``pong``, echoing the id when there is one."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        assert await a.request({"type": "ping"}) == {"type": "pong"}
        assert await a.request({"type": "ping", "id": 17}) == {"type": "pong", "id": 17}
        assert await a.request({"type": "ping", "id": "p"}) == {"type": "pong", "id": "p"}


async def test_returned_envelope_is_sent_as_reply() -> None:
    """A handler returning a dict with a type has it sent, with the message's id added."""
    app = handlers_app()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        message = {"type": "chat", "text": "x", "n": 0, "tag": None, "id": "q"}
        assert await a.request(message) == {"type": "chatted", "text": "x", "id": "q"}
        await a.send({"type": "nothing"})
        await a.barrier()


async def test_ctx_error_sends_error_with_ref() -> None:
    """``ctx.error`` sends an ``error`` that refers to the message."""
    app = handlers_app()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        assert await a.request({"type": "complain", "id": 8}) == {
            "type": "error",
            "code": "my_error",
            "message": "you did it wrong",
            "ref": 8,
        }


async def test_messages_are_handled_in_arrival_order() -> None:
    """A slow handler finishes before the next message of the same client starts."""
    app = handlers_app()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        await a.send({"type": "slow"})
        await a.send({"type": "fast"})
        assert [await a.recv(), await a.recv()] == [{"type": "slow-done"}, {"type": "fast-done"}]


def test_reserved_types_cannot_be_handled() -> None:
    """``@app.on`` refuses the reserved types of the protocol."""
    app = App()
    for kind in ("join", "publish", "rpc", "ping", "auth", "rpc_result"):
        with pytest.raises(ValueError, match="reserved"):
            app.on(kind)
