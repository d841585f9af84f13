"""connect() and ClientConnection (transport/client.py) over loopback."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from tidewire.errors import ConnectionClosedOK, HandshakeError, InvalidStatus
from tidewire.protocol.connection import State
from tidewire.transport import ClientConnection, Router, WebSocket, connect, serve
from tidewire.transport.client import parse_uri

from .peers import accept_key, echo, parse_head, raw_server, wait_until

T = 5  # seconds: the bound on every wait in this module


async def test_async_with_connect_closes_with_1000() -> None:
    """`async with connect(url) as ws` opens a ClientConnection and closes it normally on exit."""
    codes: list[int | None] = []

    async def handler(ws: WebSocket) -> None:
        async for _ in ws:
            pass
        codes.append(ws.close_code)

    async with asyncio.timeout(T):
        async with serve(handler) as server:
            async with connect(server.url) as ws:
                assert isinstance(ws, ClientConnection)
                assert ws.state is State.OPEN
            assert ws.state is State.CLOSED
            assert ws.close_code == 1000
            await wait_until(lambda: codes)
    assert codes == [1000]


async def test_await_connect_returns_an_open_connection() -> None:
    """`ws = await connect(url)` returns an open connection the caller closes."""
    async with asyncio.timeout(T):
        async with serve(echo) as server:
            ws = await connect(server.url)
            try:
                await ws.send("a")
                assert await ws.recv() == "a"
            finally:
                await ws.close()
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()


async def test_open_timeout_against_a_silent_server() -> None:
    """A server that accepts TCP but never answers makes connect() raise TimeoutError."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(T)

    loop = asyncio.get_running_loop()
    async with asyncio.timeout(T):
        async with raw_server(silent) as port:
            start = loop.time()
            with pytest.raises(TimeoutError, match="open_timeout=0.2"):
                await connect(f"ws://127.0.0.1:{port}/", open_timeout=0.2)
            elapsed = loop.time() - start
    assert 0.15 <= elapsed < 2.0


async def test_invalid_status_carries_the_status() -> None:
    """A non-101 answer raises InvalidStatus with the status and the response."""
    async with asyncio.timeout(T):
        async with serve(echo, max_connections=0) as server:
            with pytest.raises(InvalidStatus) as info:
                await connect(server.url)
    assert info.value.status == 503
    assert info.value.response.status == 503
    assert isinstance(info.value, HandshakeError)


async def test_wrong_accept_key_is_a_handshake_error() -> None:
    """A 101 with a wrong Sec-WebSocket-Accept fails the handshake (502, names the header)."""

    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n"
        )
        await reader.read()

    async with asyncio.timeout(T):
        async with raw_server(liar) as port:
            with pytest.raises(HandshakeError, match="Sec-WebSocket-Accept") as info:
                await connect(f"ws://127.0.0.1:{port}/")
    assert info.value.status == 502


async def test_server_hanging_up_during_handshake() -> None:
    """A server that closes TCP before answering makes connect() raise ConnectionError."""

    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async with asyncio.timeout(T):
        async with raw_server(rude) as port:
            with pytest.raises(ConnectionError, match="opening handshake"):
                await connect(f"ws://127.0.0.1:{port}/")


async def test_connection_refused() -> None:
    """connect() to a port nobody listens on raises OSError quickly."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with asyncio.timeout(T):
        with pytest.raises(OSError):
            await connect(f"ws://127.0.0.1:{port}/")


async def test_request_carries_path_query_origin_and_headers() -> None:
    """The opening request has the URI's path and query, Origin, and extra headers."""
    request_head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def recorder(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_head.set_result(head)
        _, headers = parse_head(head)
        key = headers["sec-websocket-key"][0]
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode()
        )
        await reader.read()

    async with asyncio.timeout(T):
        async with raw_server(recorder) as port:
            ws = await connect(
                f"ws://127.0.0.1:{port}/path/x?q=1",
                origin="https://app.example",
                headers={"Authorization": "Bearer t"},
                subprotocols=["p1"],
                close_timeout=0.2,
            )
            start, headers = parse_head(await request_head)
            await ws.close()
    assert start == "GET /path/x?q=1 HTTP/1.1"
    assert headers["host"] == [f"127.0.0.1:{port}"]
    assert headers["origin"] == ["https://app.example"]
    assert headers["authorization"] == ["Bearer t"]
    assert headers["sec-websocket-protocol"] == ["p1"]
    assert "permessage-deflate" in headers["sec-websocket-extensions"][0]
    assert ws.extensions == [] and ws.subprotocol is None


def test_parse_uri() -> None:
    """parse_uri splits ws/wss URIs and rejects everything else."""
    assert parse_uri("ws://h/") == (False, "h", 80, "/")
    assert parse_uri("wss://h:8443/a?b=c") == (True, "h", 8443, "/a?b=c")
    assert parse_uri("ws://h") == (False, "h", 80, "/")
    for bad in ("http://h/", "ws://h/#frag", "ws:///path"):
        with pytest.raises(ValueError):
            parse_uri(bad)


async def test_ssl_context_with_ws_uri_is_rejected() -> None:
    """ssl= with a ws:// URI is a ValueError (use wss://)."""
    with pytest.raises(ValueError, match="wss"):
        await connect("ws://127.0.0.1:1/", ssl=ssl.create_default_context())


async def test_refused_handshake_keeps_the_response_body() -> None:
    """InvalidStatus.response carries the body the server sent with its refusal."""
    router = Router()
    router.add_websocket("/ws", echo)
    async with serve(router, "127.0.0.1", 0) as server:
        with pytest.raises(InvalidStatus) as info:
            await connect(f"ws://127.0.0.1:{server.port}/nope", open_timeout=5)
        assert info.value.status == 404
        assert b"/nope" in info.value.response.body
