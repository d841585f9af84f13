"""TLS on both ends (serve(ssl=...) and connect("wss://...")) with a throwaway trustme CA."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator

import pytest
import trustme

from tidewire.transport import connect, serve

from .peers import echo

T = 5  # seconds: the bound on every wait in this module


@pytest.fixture(scope="module")
def contexts() -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext]]:
    """A server context with a cert for localhost/127.0.0.1 and a client context trusting it."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    yield server_ctx, client_ctx


async def test_wss_round_trips_text_and_binary(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """wss://localhost with a trustme CA round-trips text, binary and a large message."""
    server_ctx, client_ctx = contexts
    async with asyncio.timeout(T):
        async with serve(echo, "127.0.0.1", 0, ssl=server_ctx) as server:
            assert server.url.startswith("wss://")
            url = f"wss://localhost:{server.port}/secure"
            async with connect(url, ssl=client_ctx) as ws:
                assert ws.transport is not None
                assert ws.transport.get_extra_info("ssl_object") is not None
                await ws.send("secret text")
                assert await ws.recv() == "secret text"
                await ws.send(b"\x00secret\xff")
                assert await ws.recv() == b"\x00secret\xff"
                big = bytes(range(256)) * 4096  # 1 MiB: many TLS records
                await ws.send(big)
                assert await ws.recv() == big
            assert ws.close_code == 1000


async def test_wss_with_untrusted_certificate_fails(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """A client that does not trust the CA fails certificate verification."""
    server_ctx, _ = contexts
    async with asyncio.timeout(T):
        async with serve(echo, ssl=server_ctx) as server:
            with pytest.raises(ssl.SSLCertVerificationError):
                await connect(f"wss://localhost:{server.port}/", ssl=ssl.create_default_context())


async def test_plain_http_health_over_tls(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """/health answers over TLS as well."""
    server_ctx, client_ctx = contexts
    async with asyncio.timeout(T):
        async with serve(echo, ssl=server_ctx) as server:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.port, ssl=client_ctx, server_hostname="localhost"
            )
            writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            data = await reader.read()
            writer.close()
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b'"status": "ok"' in data
