"""Loopback helpers for the transport tests: raw peers that misbehave on purpose, HTTP probes.

Everything listens on 127.0.0.1 port 0.  The raw peers speak just enough RFC 6455 by hand
(handshake, frames) to do what tidewire's own client never would: ignore pings, ignore close
frames, stop reading, or never answer at all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tidewire.transport import WebSocket

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HOST = "127.0.0.1"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for ``key`` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def queued(ws: WebSocket) -> int:
    """Messages received by ``ws`` and not yet read (the receive queue's length)."""
    return len(ws._messages)


@dataclass
class Frame:
    """One frame as seen on the wire."""

    fin: bool
    rsv1: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int:
        """The code of a close frame (1005 when it has none)."""
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else 1005

    @property
    def close_reason(self) -> str:
        """The reason of a close frame."""
        return self.payload[2:].decode()


def encode_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False, mask: bool = True
) -> bytes:
    """Serialize one frame by hand; clients mask (section 5.3), servers do not."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, mbit | n])
    elif n < 1 << 16:
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return head + key + masked


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """Read one frame (masked or not) from ``reader``."""
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", await reader.readexactly(8))[0]
    key = await reader.readexactly(4) if head[1] & 0x80 else None
    payload = await reader.readexactly(length)
    if key is not None:
        payload = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return Frame(bool(head[0] & 0x80), bool(head[0] & 0x40), head[0] & 0x0F, payload)


def inflate(payload: bytes) -> bytes:
    """Decompress one permessage-deflate message payload (RFC 7692 section 7.2.2)."""
    return zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")


def parse_head(head: bytes) -> tuple[str, dict[str, list[str]]]:
    """Split an HTTP head into its start line and lower-cased header lists."""
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], headers


async def eof_or_reset(reader: asyncio.StreamReader) -> bytes:
    """Read until the peer closes or resets the connection; return what came."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""


class RawClient:
    """A hand-written WebSocket client that does only what the test tells it to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, list[str]] = {}

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int | None = None) -> RawClient:
        """Open TCP to 127.0.0.1:port; ``rcvbuf`` shrinks the kernel receive buffer."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def handshake(
        self, path: str = "/", *, deflate: bool = False, extra: str = "", expect: int = 101
    ) -> None:
        """Send an opening request and read the response head (status must be ``expect``)."""
        key = base64.b64encode(os.urandom(16)).decode()
        offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
        self.writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{offer}{extra}\r\n"
            ).encode()
        )
        start, self.headers = parse_head(await self.reader.readuntil(b"\r\n\r\n"))
        self.status = int(start.split()[1])
        assert self.status == expect, start
        if expect == 101:
            assert self.headers["sec-websocket-accept"] == [accept_key(key)]

    def send(self, opcode: int, payload: bytes = b"", **kwargs: Any) -> None:
        """Write one masked frame."""
        self.writer.write(encode_frame(opcode, payload, **kwargs))

    async def recv_frame(self) -> Frame:
        """Read one frame from the server."""
        return await read_frame(self.reader)

    async def aclose(self) -> None:
        """Close TCP without any closing handshake."""
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def raw_server(
    behaviour: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 running ``behaviour(reader, writer)`` per connection."""
    tasks: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await behaviour(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(run, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def raw_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Server side of a handshake by hand: read the request, answer 101 (no extensions)."""
    _, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
    key = headers["sec-websocket-key"][0]
    writer.write(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
        ).encode()
    )
    await writer.drain()


@dataclass
class HttpResult:
    """A plain HTTP response read to EOF."""

    status: int
    headers: dict[str, list[str]]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


async def http_request(
    port: int, path: str, *, headers: str = "", method: str = "GET", body: bytes = b""
) -> HttpResult:
    """Send one HTTP/1.1 request to 127.0.0.1:port and read the response until EOF."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n"
        writer.write(head.encode() + body)
        data = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    start, parsed = parse_head(head)
    return HttpResult(int(start.split()[1]), parsed, body)


async def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll ``predicate`` every few milliseconds until true; TimeoutError after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def echo(ws: WebSocket) -> None:
    """Handler: send every message back."""
    async for message in ws:
        await ws.send(message)
