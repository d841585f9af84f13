"""The compression and handshake-limit options reach the protocol core."""

from __future__ import annotations

import asyncio
from typing import Any

from tidewire.protocol.deflate import PerMessageDeflate
from tidewire.transport import WebSocket, connect, serve

from .peers import http_request


async def hold(ws: WebSocket) -> None:
    """Keep the connection open until the client closes it."""
    async for _ in ws:
        pass


def server_codec(server: Any) -> PerMessageDeflate:
    """The negotiated permessage-deflate of the server's only connection."""
    (conn,) = server.connections
    (ext,) = conn.extensions
    assert isinstance(ext, PerMessageDeflate)
    return ext


async def test_compression_settings_reach_the_server_codec() -> None:
    """Window bits, memLevel, level and threshold configure the server's compressor."""
    async with serve(
        hold,
        "127.0.0.1",
        0,
        compression_window_bits=10,
        compression_mem_level=7,
        compression_level=1,
        compression_threshold=100,
    ) as server:
        async with asyncio.timeout(5), connect(server.url) as ws:
            assert "server_max_window_bits=10" in (
                ws.response.headers.get("Sec-WebSocket-Extensions") or ""
            )
            codec = server_codec(server)
            assert codec.local_max_window_bits == 10
            assert codec.mem_level == 7
            assert codec.compress_level == 1
            assert not codec.should_compress(99) and codec.should_compress(100)


async def test_client_compression_settings_reach_the_client_codec() -> None:
    """connect() passes memLevel, level and threshold to its own compressor."""
    async with serve(hold, "127.0.0.1", 0) as server:
        async with (
            asyncio.timeout(5),
            connect(
                server.url, compression_mem_level=6, compression_level=2, compression_threshold=7
            ) as ws,
        ):
            (codec,) = ws.extensions
            assert isinstance(codec, PerMessageDeflate)
            assert (codec.mem_level, codec.compress_level, codec.min_size) == (6, 2, 7)


async def test_handshake_limits_answer_414_and_431() -> None:
    """max_line, max_headers and max_head bound the opening request with 414 / 431."""
    async with serve(hold, "127.0.0.1", 0, max_line=200, max_headers=5, max_head=1000) as server:
        async with asyncio.timeout(10):
            too_long = await http_request(server.port, "/" + "a" * 300)
            assert too_long.status == 414
            many = "".join(f"X-H{i}: v\r\n" for i in range(10))
            assert (await http_request(server.port, "/", headers=many)).status == 431
            assert (await http_request(server.port, "/health")).status == 200
    async with serve(hold, "127.0.0.1", 0, max_head=1000) as server:
        async with asyncio.timeout(10):
            big = "X-Big: " + "b" * 300 + "\r\n"
            assert (await http_request(server.port, "/health", headers=big * 2)).status == 200
            assert (await http_request(server.port, "/health", headers=big * 4)).status == 431
