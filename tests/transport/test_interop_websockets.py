"""Interop with the `websockets` 17.4 package over loopback, in both directions.

tidewire server + websockets client, and websockets server + tidewire client: text,
binary, fragmented messages, permessage-deflate negotiated and used, pings, close codes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection as WSServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed as WSConnectionClosed

from tidewire.errors import ConnectionClosed
from tidewire.transport import WebSocket, connect, serve

T = 5  # seconds: the bound on every wait in this module
BIG_TEXT = "interop " * 5000  # 40,000 characters that deflate to well under 1,000 bytes


# ------------------------------------------------------- tidewire server, websockets client


async def test_tidewire_server_websockets_client_messages() -> None:
    """Text, binary and fragmented messages cross in both directions, compressed."""
    server_side: asyncio.Future[WebSocket] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        server_side.set_result(ws)
        async for message in ws:
            if message == "fragments please":
                await ws.send(["frag", "mented", " text"])
            else:
                await ws.send(message)

    async with asyncio.timeout(T):
        async with serve(handler) as server:
            async with ws_connect(server.url, proxy=None) as client:
                sws = await server_side
                assert client.protocol.extensions, "websockets negotiated no extension"
                assert sws.extensions, "tidewire negotiated no extension"
                await client.send("héllo")
                assert await client.recv() == "héllo"
                await client.send(b"\x00\x01\xfe")
                assert await client.recv() == b"\x00\x01\xfe"
                await client.send(["web", "sockets ", "fragments"])
                assert await client.recv() == "websockets fragments"
                await client.send("fragments please")
                assert await client.recv() == "fragmented text"
                in_before, out_before = sws.bytes_in, sws.bytes_out
                await client.send(BIG_TEXT)
                assert await client.recv() == BIG_TEXT
                assert sws.bytes_in - in_before < len(BIG_TEXT) // 10  # compressed inbound
                assert sws.bytes_out - out_before < len(BIG_TEXT) // 10  # compressed outbound


async def test_tidewire_server_sees_websockets_close_code() -> None:
    """A websockets client's close(4000, reason) reaches the tidewire handler."""
    seen: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            seen.set_result((exc.code, exc.reason, ws.close_code, ws.close_reason))

    async with asyncio.timeout(T):
        async with serve(handler) as server:
            async with ws_connect(server.url, proxy=None) as client:
                await client.close(4000, "client bye")
            assert await seen == (4000, "client bye", 4000, "client bye")


async def test_websockets_client_sees_tidewire_close_code() -> None:
    """A tidewire handler's close(4001, reason) reaches the websockets client."""

    async def handler(ws: WebSocket) -> None:
        await ws.close(4001, "server bye")

    async with asyncio.timeout(T):
        async with serve(handler) as server:
            async with ws_connect(server.url, proxy=None) as client:
                with pytest.raises(WSConnectionClosed) as info:
                    await client.recv()
                assert info.value.rcvd is not None
                assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "server bye")
                assert (client.close_code, client.close_reason) == (4001, "server bye")


async def test_tidewire_server_ping_to_websockets_client() -> None:
    """tidewire's ping() gets websockets' pong; websockets' ping gets tidewire's pong."""
    rtts: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        rtts.set_result(await ws.ping())
        await ws.wait_closed()

    async with asyncio.timeout(T):
        async with serve(handler) as server:
            async with ws_connect(server.url, proxy=None) as client:
                assert await rtts > 0.0  # websockets pongs without being read
                pong = await client.ping()
                assert await pong > 0.0


# ------------------------------------------------------- websockets server, tidewire client


async def _ws_echo(conn: WSServerConnection) -> None:
    async for message in conn:
        if message == "fragments please":
            await conn.send([b"by", b"tes"])
        elif message == "close please":
            await conn.close(4002, "websockets bye")
        else:
            await conn.send(message)


async def test_websockets_server_tidewire_client_messages() -> None:
    """Text, binary and fragmented messages cross in both directions, compressed."""
    async with asyncio.timeout(T):
        async with ws_serve(_ws_echo, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}/") as ws:
                assert ws.extensions, "tidewire negotiated no extension"
                await ws.send("héllo")
                assert await ws.recv() == "héllo"
                await ws.send(b"\xff\x00")
                assert await ws.recv() == b"\xff\x00"
                await ws.send(["tide", "wire ", "fragments"])
                assert await ws.recv() == "tidewire fragments"
                await ws.send("fragments please")
                assert await ws.recv() == b"bytes"
                in_before, out_before = ws.bytes_in, ws.bytes_out
                await ws.send(BIG_TEXT)
                assert await ws.recv() == BIG_TEXT
                assert ws.bytes_out - out_before < len(BIG_TEXT) // 10
                assert ws.bytes_in - in_before < len(BIG_TEXT) // 10
                rtt = await ws.ping()
                assert rtt > 0.0 and ws.latency == rtt
            assert ws.close_code == 1000


async def test_websockets_server_sees_tidewire_close_code() -> None:
    """A tidewire client's close(4003, reason) reaches the websockets handler."""
    seen: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

    async def handler(conn: WSServerConnection) -> None:
        try:
            await conn.recv()
        except WSConnectionClosed as exc:
            assert exc.rcvd is not None
            seen.set_result((exc.rcvd.code, exc.rcvd.reason))

    async with asyncio.timeout(T):
        async with ws_serve(handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            ws = await connect(f"ws://127.0.0.1:{port}/")
            await ws.close(4003, "tidewire bye")
            assert await seen == (4003, "tidewire bye")


async def test_tidewire_client_sees_websockets_close_code() -> None:
    """A websockets handler's close(4002, reason) reaches the tidewire client."""
    async with asyncio.timeout(T):
        async with ws_serve(_ws_echo, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}/") as ws:
                await ws.send("close please")
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
                assert (info.value.code, info.value.reason) == (4002, "websockets bye")
                assert (ws.close_code, ws.close_reason) == (4002, "websockets bye")


async def test_tidewire_client_without_compression_to_websockets() -> None:
    """compression=False on the tidewire client: no extension, messages still cross."""
    async with asyncio.timeout(T):
        async with ws_serve(_ws_echo, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}/", compression=False) as ws:
                assert ws.extensions == []
                await ws.send(BIG_TEXT)
                assert await ws.recv() == BIG_TEXT
