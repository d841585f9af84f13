"""Router (transport/routing.py): typed path parameters, 404s, HTTP routes on the WebSocket port."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tidewire.errors import InvalidStatus
from tidewire.protocol.http import Request, Response
from tidewire.transport import Router, WebSocket, connect, serve
from tidewire.transport.routing import Route

from .peers import http_request

T = 5  # seconds: the bound on every wait in this module


def make_router(seen: list[tuple[str, dict[str, Any]]]) -> Router:
    """/ws/chat/{room} and /item/{id:int} WebSocket routes, plus an HTTP route."""
    router = Router()

    @router.websocket("/ws/chat/{room}")
    async def chat(ws: WebSocket) -> None:
        seen.append(("chat", dict(ws.path_params)))
        await ws.send(f"room {ws.path_params['room']}")

    @router.websocket("/item/{id:int}")
    async def item(ws: WebSocket) -> None:
        seen.append(("item", dict(ws.path_params)))
        await ws.send(json.dumps(ws.path_params))

    def version(request: Request) -> Response:
        return Response.build(200, b'{"version": 1}', content_type="application/json")

    router.add_http("/version", version)
    return router


def test_route_compile_converts_types() -> None:
    """Route.match converts int, float, str and path parameters and rejects mismatches."""
    route = Route.compile("/a/{n:int}/{x:float}/{name}/{rest:path}", None)
    assert route.match("/a/-3/2.5/bob/x/y/z") == {"n": -3, "x": 2.5, "name": "bob", "rest": "x/y/z"}
    assert route.match("/a/three/2.5/bob/x") is None
    assert route.match("/a/3/2.5/bob/") is None
    with pytest.raises(ValueError, match="start with"):
        Route.compile("no-slash", None)
    with pytest.raises(ValueError, match="unknown path parameter type"):
        Route.compile("/x/{a:uuid}", None)


def test_router_first_match_wins() -> None:
    """Routes are tried in the order they were added."""
    router = Router()

    async def first(ws: WebSocket) -> None: ...

    async def second(ws: WebSocket) -> None: ...

    router.add_websocket("/x/{name}", first)
    router.add_websocket("/x/fixed", second)
    assert router.match_websocket("/x/fixed") == (first, {"name": "fixed"})
    assert router.match_websocket("/y") is None
    assert router.match_http("/x/fixed") is None


async def test_path_params_are_typed() -> None:
    """ws.path_params holds the converted values: str for {room}, int for {id:int}."""
    seen: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(T):
        async with serve(make_router(seen)) as server:
            async with connect(server.url + "ws/chat/lobby?x=1") as ws:
                assert await ws.recv() == "room lobby"
            async with connect(server.url + "item/42") as ws:
                assert json.loads(await ws.recv()) == {"id": 42}
    assert seen == [("chat", {"room": "lobby"}), ("item", {"id": 42})]
    assert type(seen[1][1]["id"]) is int


async def test_unknown_websocket_path_is_404_before_upgrade() -> None:
    """An upgrade to a path with no route, or a bad int, gets HTTP 404 and no 101."""
    async with asyncio.timeout(T):
        async with serve(make_router([])) as server:
            for path in ("nowhere", "item/abc", "ws/chat/a/b"):
                with pytest.raises(InvalidStatus) as info:
                    await connect(server.url + path)
                assert info.value.status == 404
            assert server.upgrades == 0


async def test_http_route_and_unknown_plain_path() -> None:
    """A plain GET reaches an HTTP route; an unknown plain path is 404; /health still works."""
    async with asyncio.timeout(T):
        async with serve(make_router([])) as server:
            result = await http_request(server.port, "/version")
            assert result.status == 200 and result.json() == {"version": 1}
            assert (await http_request(server.port, "/missing")).status == 404
            assert (await http_request(server.port, "/ws/chat/lobby")).status == 404
            assert (await http_request(server.port, "/health")).json()["status"] == "ok"
            assert server.http_requests == 4


async def test_async_http_route() -> None:
    """An async HTTP responder is awaited and its Response sent."""
    router = Router()

    async def slow(request: Request) -> Response:
        await asyncio.sleep(0.01)
        return Response.build(200, b"slow " + request.path_only.encode())

    router.add_http("/slow/{n:int}", slow)
    async with asyncio.timeout(T):
        async with serve(router) as server:
            result = await http_request(server.port, "/slow/5")
    assert result.status == 200
    assert result.body == b"slow /slow/5"


async def test_failing_http_route_is_500() -> None:
    """An HTTP responder that raises, sync or async, answers 500 and the server goes on."""
    router = Router()

    def sync_bug(request: Request) -> Response:
        raise RuntimeError("route bug")

    async def async_bug(request: Request) -> Response:
        raise RuntimeError("route bug")

    router.add_http("/sync", sync_bug)
    router.add_http("/async", async_bug)
    async with asyncio.timeout(T):
        async with serve(router) as server:
            assert (await http_request(server.port, "/sync")).status == 500
            assert (await http_request(server.port, "/async")).status == 500
            assert (await http_request(server.port, "/health")).status == 200


async def test_post_body_reaches_the_http_route() -> None:
    """A POST body (Content-Length) reaches the responder; 413 and 411 come from the transport."""
    router = Router()

    def echo_body(request: Request) -> Response:
        return Response.build(200, request.method.encode() + b" " + request.body)

    router.add_http("/echo", echo_body)
    async with asyncio.timeout(T):
        async with serve(router, max_body_size=100) as server:
            result = await http_request(
                server.port, "/echo", method="POST", headers="Content-Length: 5\r\n", body=b"hello"
            )
            assert (result.status, result.body) == (200, b"POST hello")
            big = await http_request(
                server.port, "/echo", method="POST", headers="Content-Length: 101\r\n"
            )
            assert big.status == 413 and b"max_body_size=100" in big.body
            chunked = await http_request(
                server.port, "/echo", method="POST", headers="Transfer-Encoding: chunked\r\n"
            )
            assert chunked.status == 411
            plain = await http_request(server.port, "/echo")
            assert (plain.status, plain.body) == (200, b"GET ")


async def test_expect_100_continue_over_a_socket() -> None:
    """A client that waits for "100 Continue" gets it, sends the body, and gets the answer."""
    router = Router()
    router.add_http("/echo", lambda request: Response.build(200, request.body))
    async with asyncio.timeout(T):
        async with serve(router) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(
                    b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 4\r\n\r\n"
                )
                interim = await reader.readuntil(b"\r\n\r\n")
                assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
                writer.write(b"ping")
                answer = await reader.read()
            finally:
                writer.close()
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nping")
