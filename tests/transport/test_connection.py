"""WebSocket (transport/connection.py) over loopback: messages, fragments, ping, close, state."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tidewire.errors import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
)
from tidewire.protocol.connection import State
from tidewire.protocol.http import Request, Response
from tidewire.transport import WebSocket, connect, serve

from .peers import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawClient,
    echo,
    encode_frame,
    eof_or_reset,
    queued,
    raw_accept,
    raw_server,
    read_frame,
)

T = 5  # seconds: the bound on every wait in this module


async def test_send_recv_text_and_binary_types() -> None:
    """str goes out as text and comes back str; bytes, bytearray, memoryview come back bytes."""
    async with asyncio.timeout(T):
        async with serve(echo) as server, connect(server.url) as ws:
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\xff")
            got = await ws.recv()
            assert type(got) is bytes and got == b"\x00\xff"
            await ws.send(bytearray(b"ba"))
            assert await ws.recv() == b"ba"
            await ws.send(memoryview(b"mv"))
            assert await ws.recv() == b"mv"
            await ws.send("")
            assert await ws.recv() == ""


async def test_send_dict_is_a_type_error() -> None:
    """send() refuses a dict with a hint to encode it, and the connection stays usable."""
    async with asyncio.timeout(T):
        async with serve(echo) as server, connect(server.url) as ws:
            with pytest.raises(TypeError, match="json"):
                await ws.send({"a": 1})  # type: ignore[arg-type]
            await ws.send("still open")
            assert await ws.recv() == "still open"


async def test_async_for_ends_cleanly_on_normal_close() -> None:
    """`async for` over a connection stops without an exception when the peer closes with 1000."""

    async def handler(ws: WebSocket) -> None:
        for i in range(3):
            await ws.send(f"m{i}")
        # returning closes with 1000

    async with asyncio.timeout(T):
        async with serve(handler) as server, connect(server.url) as ws:
            got = [message async for message in ws]
            assert got == ["m0", "m1", "m2"]
            assert ws.close_code == 1000
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()


async def test_async_for_raises_on_error_close() -> None:
    """`async for` raises ConnectionClosedError when the handler fails (1011)."""

    async def handler(ws: WebSocket) -> None:
        await ws.send("before")
        raise RuntimeError("boom")

    async with asyncio.timeout(T):
        async with serve(handler) as server, connect(server.url) as ws:
            got = []
            with pytest.raises(ConnectionClosedError) as info:
                async for message in ws:
                    got.append(message)
            assert got == ["before"]
            assert info.value.code == 1011
            assert ws.close_code == 1011


async def _fragments(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        await asyncio.sleep(0)
        yield item


async def _received_frames(fragments: Any) -> tuple[list[Any], Any]:
    """Have a server send ``fragments`` to a raw client; return the frames and the message."""

    async def handler(ws: WebSocket) -> None:
        await ws.send(fragments)
        await ws.wait_closed()

    async with serve(handler, compression=False) as server:
        raw = await RawClient.open(server.port)
        await raw.handshake()
        frames = []
        while True:
            frame = await raw.recv_frame()
            frames.append(frame)
            if frame.fin:
                break
        await raw.aclose()
    return frames, b"".join(f.payload for f in frames)


async def test_send_fragments_from_list_one_message() -> None:
    """A list of str is sent as one fragmented text message: TEXT, CONT..., fin on the last."""
    async with asyncio.timeout(T):
        frames, payload = await _received_frames(["ab", "cd", "ef"])
    assert [f.opcode for f in frames] == [OP_TEXT, OP_CONT, OP_CONT]
    assert [f.fin for f in frames] == [False, False, True]
    assert payload == b"abcdef"


async def test_send_fragments_from_async_iterator_one_message() -> None:
    """An async iterator of bytes is sent as one fragmented binary message."""
    async with asyncio.timeout(T):
        frames, payload = await _received_frames(_fragments([b"a", b"bc", b"d"]))
    assert [f.opcode for f in frames] == [OP_BINARY, OP_CONT, OP_CONT]
    assert payload == b"abcd"


async def test_fragmented_message_arrives_as_one() -> None:
    """The peer's recv() returns one message for a fragmented send (list and async iterator)."""
    async with asyncio.timeout(T):
        async with serve(echo) as server, connect(server.url) as ws:
            await ws.send(["one ", "two ", "three"])
            assert await ws.recv() == "one two three"
            await ws.send(_fragments([b"\x01", b"\x02", b"\x03"]))
            assert await ws.recv() == b"\x01\x02\x03"
            await ws.send(_fragments(["solo"]))
            assert await ws.recv() == "solo"


async def test_fragments_must_not_mix_types() -> None:
    """Mixing str and bytes fragments raises TypeError."""
    async with asyncio.timeout(T):
        async with serve(echo, compression=False) as server, connect(server.url) as ws:
            with pytest.raises(TypeError, match="fragments"):
                await ws.send(["text", b"bytes"])


async def test_send_during_fragmented_send_is_a_concurrency_error() -> None:
    """A plain send() while a fragmented message is streaming raises ConcurrencyError."""
    gate = asyncio.Event()

    async def slow() -> AsyncIterator[str]:
        yield "a"
        await gate.wait()
        yield "b"

    async with asyncio.timeout(T):
        async with serve(echo) as server, connect(server.url) as ws:
            streaming = asyncio.create_task(ws.send(slow()))
            await asyncio.sleep(0.01)
            with pytest.raises(ConcurrencyError):
                await ws.send("interleaved")
            gate.set()
            await streaming
            assert await ws.recv() == "ab"


async def test_two_readers_is_a_concurrency_error() -> None:
    """A second coroutine calling recv() while one waits raises ConcurrencyError."""
    async with asyncio.timeout(T):
        async with serve(echo) as server, connect(server.url) as ws:
            first = asyncio.create_task(ws.recv())
            await asyncio.sleep(0.01)
            with pytest.raises(ConcurrencyError):
                await ws.recv()
            await ws.send("x")
            assert await first == "x"


async def test_ping_returns_rtt_and_sets_latency() -> None:
    """ping() resolves with a float round-trip time once the pong arrives and sets ws.latency."""
    async with asyncio.timeout(T):
        async with serve(echo) as server, connect(server.url, ping_interval=None) as ws:
            assert ws.latency == 0.0
            rtt = await ws.ping()
            assert isinstance(rtt, float) and 0.0 < rtt < T
            assert ws.latency == rtt
            rtt2 = await ws.ping(b"custom")
            assert ws.latency == rtt2


async def test_ping_with_raw_peer_payload_and_pong() -> None:
    """ping(data) puts data on the wire and resolves only on the matching pong."""
    holder: list[asyncio.Task[float]] = []
    started = asyncio.Event()

    async def handler(ws: WebSocket) -> None:
        holder.append(asyncio.create_task(ws.ping(b"abc")))
        started.set()
        await ws.wait_closed()

    async with asyncio.timeout(T):
        async with serve(handler, ping_interval=None, close_timeout=0.5) as server:
            raw = await RawClient.open(server.port)
            await raw.handshake()
            frame = await raw.recv_frame()
            assert (frame.opcode, frame.payload) == (OP_PING, b"abc")
            await started.wait()
            raw.send(OP_PONG, b"other")
            await asyncio.sleep(0.05)
            assert not holder[0].done()
            raw.send(OP_PONG, b"abc")
            assert isinstance(await holder[0], float)
            await raw.aclose()


async def test_close_code_and_reason_reach_the_peer() -> None:
    """close(code, reason) on the client shows up as close_code/close_reason on the server."""
    seen: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            seen.set_result((ws.close_code, ws.close_reason, type(exc), exc.code, exc.reason))

    async with asyncio.timeout(T):
        async with serve(handler) as server:
            ws = await connect(server.url)
            assert ws.close_code is None and ws.close_reason is None
            await ws.close(4001, "custom bye")
            assert ws.state is State.CLOSED
            code, reason, exc_type, exc_code, exc_reason = await seen
    assert (code, reason) == (4001, "custom bye")
    assert exc_type is ConnectionClosedError  # 4001 is not a normal closure
    assert (exc_code, exc_reason) == (4001, "custom bye")


async def test_server_close_code_and_reason_reach_the_client() -> None:
    """close(code, reason) on the server shows up on the client; 1001 counts as OK."""

    async def handler(ws: WebSocket) -> None:
        await ws.close(1001, "going away")

    async with asyncio.timeout(T):
        async with serve(handler) as server, connect(server.url) as ws:
            with pytest.raises(ConnectionClosedOK) as info:
                await ws.recv()
            assert (info.value.code, info.value.reason) == (1001, "going away")
            assert (ws.close_code, ws.close_reason) == (1001, "going away")


async def test_close_is_idempotent_and_wait_closed_returns() -> None:
    """close() twice is fine; wait_closed() returns once TCP is closed; send then raises."""
    async with asyncio.timeout(T):
        async with serve(echo) as server:
            ws = await connect(server.url)
            waiter = asyncio.create_task(ws.wait_closed())
            await asyncio.sleep(0.01)
            assert not waiter.done()
            await ws.close()
            await ws.close()
            await waiter
            assert ws.state is State.CLOSED
            assert ws.close_code == 1000
            with pytest.raises(ConnectionClosedOK):
                await ws.send("late")
            with pytest.raises(ConnectionClosedOK):
                await ws.ping()


async def test_abrupt_tcp_close_is_connection_closed_error() -> None:
    """A peer that drops TCP without a close frame gives ConnectionClosedError with 1006."""
    result: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            result.set_result(exc)

    async with asyncio.timeout(T):
        async with serve(handler) as server:
            raw = await RawClient.open(server.port)
            await raw.handshake()
            await raw.aclose()
            exc = await result
    assert type(exc) is ConnectionClosedError
    assert isinstance(exc, ConnectionClosedError) and exc.code == 1006


async def test_read_only_attributes() -> None:
    """The connection's public attributes are readable, typed, and cannot be assigned."""
    server_side: asyncio.Future[WebSocket] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        server_side.set_result(ws)
        await echo(ws)

    names = [
        "id",
        "state",
        "remote_address",
        "request",
        "response",
        "subprotocol",
        "extensions",
        "close_code",
        "close_reason",
        "latency",
    ]
    async with asyncio.timeout(T):
        async with serve(handler) as server:
            async with connect(server.url + "room/7?user=ann&x=1&x=2", headers={"X-Y": "z"}) as ws:
                sws = await server_side
                for conn in (ws, sws):
                    for name in names:
                        with pytest.raises(AttributeError):
                            setattr(conn, name, None)
                assert isinstance(ws.id, int) and isinstance(sws.id, int) and ws.id != sws.id
                assert ws.state is State.OPEN and sws.state is State.OPEN
                assert ws.remote_address[:2] == ("127.0.0.1", server.port)
                assert sws.remote_address[0] == "127.0.0.1"
                req = sws.request
                assert isinstance(req, Request)
                assert req.path_only == "/room/7"
                assert req.query == {"user": ["ann"], "x": ["1", "2"]}
                assert req.headers["X-Y"] == "z"
                assert ws.request is not None and ws.request.path == req.path
                assert isinstance(ws.response, Response) and ws.response.status == 101
                assert isinstance(sws.response, Response) and sws.response.status == 101
                assert ws.subprotocol is None and sws.subprotocol is None
                assert ws.extensions and sws.extensions
                assert ws.close_code is None and ws.close_reason is None
                assert ws.latency == 0.0
            await sws.wait_closed()
            assert sws.state is State.CLOSED
            assert (sws.close_code, sws.close_reason) == (1000, "")


async def test_close_frame_is_sent_once_and_echoed() -> None:
    """The server answers a client close frame with the same code and closes TCP."""
    async with asyncio.timeout(T):
        async with serve(echo) as server:
            raw = await RawClient.open(server.port)
            await raw.handshake()
            raw.send(OP_CLOSE, (3000).to_bytes(2, "big") + b"x")
            frame = await raw.recv_frame()
            assert frame.opcode == OP_CLOSE
            assert (frame.close_code, frame.close_reason) == (3000, "x")
            assert await raw.reader.read() == b""
            await raw.aclose()


# ------------------------------------------------------------------ too-big messages


async def test_too_big_message_closes_with_1009_naming_the_limit() -> None:
    """A message over max_message_size fails the connection with 1009; the reason names both."""
    seen: asyncio.Future[ConnectionClosed] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            seen.set_result(exc)

    async with asyncio.timeout(T):
        async with serve(handler, max_message_size=1000, compression=False) as server:
            async with connect(server.url) as ws:
                await ws.send(b"x" * 2000)
                with pytest.raises(ConnectionClosedError) as info:
                    await ws.recv()
            server_exc = await seen
    assert info.value.code == 1009
    assert "max_message_size=1000" in info.value.reason
    assert "2000" in info.value.reason
    assert ws.close_code == 1009
    assert isinstance(server_exc, ConnectionClosedError)
    assert server_exc.sent is not None and server_exc.sent.code == 1009


async def test_too_big_compressed_message_closes_with_1009() -> None:
    """A compressed message that inflates past max_message_size is failed with 1009 too."""
    async with asyncio.timeout(T):
        async with serve(echo, max_message_size=1000) as server:
            async with connect(server.url) as ws:
                assert ws.extensions
                await ws.send("a" * 100_000)  # deflates to a few hundred bytes
                with pytest.raises(ConnectionClosedError) as info:
                    await ws.recv()
    assert info.value.code == 1009
    assert "max_message_size=1000" in info.value.reason


async def test_client_max_message_size() -> None:
    """The client enforces its own max_message_size on what the server sends."""

    async def handler(ws: WebSocket) -> None:
        await ws.send(b"y" * 5000)
        await ws.wait_closed()

    async with asyncio.timeout(T):
        async with serve(handler, compression=False) as server:
            async with connect(server.url, max_message_size=4096) as ws:
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
                await ws.wait_closed()
    assert info.value.sent is not None and info.value.sent.code == 1009
    assert "max_message_size=4096" in info.value.sent.reason


# ------------------------------------------------------------------------ keepalive


async def test_keepalive_answered_while_client_handler_is_busy() -> None:
    """With a small ping_interval the server pings and the client pongs without reading."""
    server_side: asyncio.Future[WebSocket] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        server_side.set_result(ws)
        await ws.wait_closed()

    async with asyncio.timeout(T):
        async with serve(handler, ping_interval=0.05, ping_timeout=0.15) as server:
            async with connect(server.url, ping_interval=None) as ws:
                sws = await server_side
                await asyncio.sleep(0.5)  # the client is busy elsewhere: it never calls recv()
                assert ws.state is State.OPEN and sws.state is State.OPEN
                assert sws.latency > 0.0  # set by a keepalive pong
            assert ws.close_code == 1000


async def test_keepalive_peer_that_never_pongs_is_closed_with_1011() -> None:
    """A peer that ignores pings is failed with 1011 after ping_timeout."""
    seen: asyncio.Future[ConnectionClosed] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            seen.set_result(exc)

    loop = asyncio.get_running_loop()
    async with asyncio.timeout(T):
        async with serve(
            handler, ping_interval=0.05, ping_timeout=0.1, close_timeout=0.2
        ) as server:
            raw = await RawClient.open(server.port)
            await raw.handshake()
            first_ping = None
            while True:
                frame = await raw.recv_frame()
                if frame.opcode == OP_PING:
                    first_ping = first_ping or loop.time()
                    continue  # never answer
                break
            closed_at = loop.time()
            assert frame.opcode == OP_CLOSE
            assert frame.close_code == 1011
            assert "ping" in frame.close_reason
            assert first_ping is not None and 0.08 <= closed_at - first_ping < 2.0
            exc = await seen
            await raw.aclose()
    assert isinstance(exc, ConnectionClosedError)
    assert exc.sent is not None and exc.sent.code == 1011


async def test_client_keepalive_fails_a_silent_server_with_1011() -> None:
    """The client pings too, and fails with 1011 when the server never pongs."""
    frames: list[Any] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw_accept(reader, writer)
        while True:
            frame = await read_frame(reader)
            frames.append(frame)
            if frame.opcode == OP_CLOSE:
                await reader.read()
                return

    async with asyncio.timeout(T):
        async with raw_server(silent) as port:
            ws = await connect(
                f"ws://127.0.0.1:{port}/", ping_interval=0.05, ping_timeout=0.1, close_timeout=0.2
            )
            await ws.wait_closed()
    assert [f.opcode for f in frames][:1] == [OP_PING]
    assert frames[-1].opcode == OP_CLOSE and frames[-1].close_code == 1011


async def test_ping_interval_none_disables_keepalive() -> None:
    """With ping_interval=None no ping is sent; with a small interval one comes quickly."""
    async with asyncio.timeout(T):
        async with serve(echo, ping_interval=None, close_timeout=0.2) as server:
            raw = await RawClient.open(server.port)
            await raw.handshake()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(raw.recv_frame(), 0.3)
            await raw.aclose()
        async with serve(echo, ping_interval=0.05, close_timeout=0.2) as server:
            raw = await RawClient.open(server.port)
            await raw.handshake()
            frame = await asyncio.wait_for(raw.recv_frame(), 0.3)
            assert frame.opcode == OP_PING
            await raw.aclose()


# ---------------------------------------------------------------------- backpressure


async def test_send_waits_above_write_high_water_and_memory_stays_bounded() -> None:
    """To a peer that never reads, send() blocks once the write buffer passes high water."""
    high, size = 64 * 1024, 16 * 1024
    report: dict[str, Any] = {}
    blocked = asyncio.Event()

    async def handler(ws: WebSocket) -> None:
        assert ws.transport is not None
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        payload = os.urandom(size)
        sent, biggest = 0, 0
        try:
            async with asyncio.timeout(0.5):
                # Plain awaits, no wait_for: a send() that never suspends would
                # starve the loop and queue all 2,000 messages (32 MiB) in memory.
                for _ in range(2000):
                    await ws.send(payload)
                    sent += 1
                    biggest = max(biggest, ws.transport.get_write_buffer_size())
        except TimeoutError:
            report["blocked"] = True
        report["sent"] = sent
        report["biggest"] = biggest
        report["buffer"] = ws.transport.get_write_buffer_size()
        try:
            await asyncio.wait_for(ws.send(payload), 0.2)
        except TimeoutError:
            report["still_blocked"] = True
        blocked.set()
        await asyncio.wait_for(ws.send(b"final"), T)  # resumes once the peer reads
        report["resumed"] = True
        await ws.wait_closed()

    async with asyncio.timeout(T * 2):
        async with serve(
            handler,
            compression=False,
            write_high_water=high,
            write_low_water=high // 4,
            close_timeout=0.5,
        ) as server:
            raw = await RawClient.open(server.port, rcvbuf=16 * 1024)
            await raw.handshake()
            await blocked.wait()
            while True:  # now read everything
                frame = await raw.recv_frame()
                if frame.payload == b"final":
                    break
            raw.send(OP_CLOSE, (1000).to_bytes(2, "big"))
            await raw.recv_frame()
            await raw.aclose()
    assert report.get("blocked"), report
    assert report["sent"] < 2000
    assert report.get("still_blocked"), report
    assert report["buffer"] >= high // 4
    # bounded: high water plus one message (and its frame header)
    assert report["biggest"] <= high + size + 16, report
    assert report.get("resumed")


async def test_reading_pauses_above_max_queue_and_resumes() -> None:
    """A flood into a handler that does not read stops at max_queue and resumes on recv()."""
    max_queue, count, size = 4, 200, 64 * 1024
    server_side: asyncio.Future[WebSocket] = asyncio.get_running_loop().create_future()
    go = asyncio.Event()
    got: list[bytes] = []

    async def handler(ws: WebSocket) -> None:
        server_side.set_result(ws)
        await go.wait()
        for _ in range(count):
            message = await ws.recv()
            assert isinstance(message, bytes)
            got.append(message[:4])
        await ws.wait_closed()

    async def flood(ws: WebSocket) -> None:
        for i in range(count):
            await ws.send(i.to_bytes(4, "big") + bytes(size - 4))

    async with asyncio.timeout(T * 2):
        async with serve(
            handler, max_queue=max_queue, compression=False, close_timeout=0.5
        ) as server:
            async with connect(server.url, compression=False, close_timeout=0.5) as ws:
                sws = await server_side
                assert sws.transport is not None
                sender = asyncio.create_task(flood(ws))
                while sws.transport.is_reading():
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)
                # one read (at most 256 KiB here: four messages) may land after the pause
                assert queued(sws) <= max_queue + 4
                assert not sws.transport.is_reading()
                assert not sender.done()  # the flood is held back by TCP, not buffered
                go.set()
                await sender
                while len(got) < count:
                    await asyncio.sleep(0.01)
                assert sws.transport.is_reading()
    assert [int.from_bytes(g, "big") for g in got] == list(range(count))


# ----------------------------------------------------------------------- close timeout


async def test_server_aborts_peer_that_never_answers_close_after_close_timeout() -> None:
    """close() gives a silent peer close_timeout seconds, then aborts TCP."""
    took: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        start = asyncio.get_running_loop().time()
        await ws.close(1000, "bye")
        took.set_result(asyncio.get_running_loop().time() - start)

    async with asyncio.timeout(T):
        async with serve(handler, close_timeout=0.2) as server:
            raw = await RawClient.open(server.port)
            await raw.handshake()
            frame = await raw.recv_frame()
            assert frame.opcode == OP_CLOSE
            assert await eof_or_reset(raw.reader) == b""
            elapsed = await took
            await raw.aclose()
    assert 0.15 <= elapsed < 2.0


async def test_client_aborts_server_that_never_answers_close() -> None:
    """The client's close() waits close_timeout for a silent server, then aborts."""
    got_eof = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw_accept(reader, writer)
        frame = await read_frame(reader)
        assert frame.opcode == OP_CLOSE
        await eof_or_reset(reader)
        got_eof.set()

    loop = asyncio.get_running_loop()
    async with asyncio.timeout(T):
        async with raw_server(silent) as port:
            ws = await connect(f"ws://127.0.0.1:{port}/", close_timeout=0.2)
            start = loop.time()
            await ws.close()
            elapsed = loop.time() - start
            await got_eof.wait()
    assert 0.15 <= elapsed < 2.0
    assert ws.state is State.CLOSED and ws.close_code == 1006


async def test_client_closes_tcp_when_server_keeps_it_open_after_close() -> None:
    """A server that echoes the close but keeps TCP open is cut off after close_timeout."""
    got_eof = asyncio.Event()

    async def lingering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw_accept(reader, writer)
        frame = await read_frame(reader)
        writer.write(encode_frame(OP_CLOSE, frame.payload, mask=False))
        await eof_or_reset(reader)
        got_eof.set()

    async with asyncio.timeout(T):
        async with raw_server(lingering) as port:
            ws = await connect(f"ws://127.0.0.1:{port}/", close_timeout=0.2)
            await ws.close(1000)
            await got_eof.wait()
    assert ws.state is State.CLOSED and ws.close_code == 1000
    with pytest.raises(ConnectionClosedOK):
        await ws.recv()


async def test_close_completes_while_reading_is_paused() -> None:
    """close() from a handler whose queue is full still reads the peer's close promptly."""
    took: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        assert ws.transport is not None
        while ws.transport.is_reading():  # wait for the flood to fill max_queue
            await asyncio.sleep(0.01)
        start = asyncio.get_running_loop().time()
        await ws.close(1000, "enough")
        took.set_result(asyncio.get_running_loop().time() - start)

    async def flood(ws: WebSocket) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.send(bytes(64 * 1024))

    async with asyncio.timeout(T):
        async with serve(handler, max_queue=2, compression=False, close_timeout=2.0) as server:
            async with connect(server.url, compression=False, close_timeout=2.0) as ws:
                sender = asyncio.create_task(flood(ws))
                await ws.wait_closed()
                await sender
            elapsed = await took
    assert (ws.close_code, ws.close_reason) == (1000, "enough")
    assert elapsed < 1.0  # not the 2 s close_timeout abort


async def test_messages_received_before_close_are_still_delivered() -> None:
    """recv() returns every message that arrived before the close, then raises."""

    async def handler(ws: WebSocket) -> None:
        for i in range(5):
            await ws.send(str(i))

    async with asyncio.timeout(T):
        async with serve(handler) as server:
            ws = await connect(server.url)
            await ws.wait_closed()
            assert ws.state is State.CLOSED
            assert [await ws.recv() for _ in range(5)] == ["0", "1", "2", "3", "4"]
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()


async def test_pending_ping_fails_when_the_connection_drops() -> None:
    """A ping() still waiting for its pong raises ConnectionClosedError when TCP goes away."""
    result: asyncio.Future[BaseException | float] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        try:
            result.set_result(await ws.ping())
        except ConnectionClosed as exc:
            result.set_result(exc)

    async with asyncio.timeout(T):
        async with serve(handler, ping_interval=None) as server:
            raw = await RawClient.open(server.port)
            await raw.handshake()
            assert (await raw.recv_frame()).opcode == OP_PING
            await raw.aclose()
            outcome = await result
    assert isinstance(outcome, ConnectionClosedError) and outcome.code == 1006


# ---------------------------------------------------------------- peer protocol errors


async def test_valid_message_before_a_protocol_error_is_handled_first() -> None:
    """A message followed by bad bytes is echoed before the connection fails with 1002."""
    async with asyncio.timeout(T):
        async with serve(echo, compression=False, close_timeout=0.5) as server:
            raw = await RawClient.open(server.port)
            await raw.handshake()
            # a valid text frame, then an unmasked frame (a client MUST mask, section 5.1)
            raw.writer.write(
                encode_frame(OP_TEXT, b"first") + encode_frame(OP_TEXT, b"bad", mask=False)
            )
            echoed = await raw.recv_frame()
            assert (echoed.opcode, echoed.payload) == (OP_TEXT, b"first")
            close = await raw.recv_frame()
            assert close.opcode == OP_CLOSE and close.close_code == 1002
            assert await eof_or_reset(raw.reader) == b""
            await raw.aclose()


async def test_protocol_error_fails_after_fail_delay_if_handler_is_slow() -> None:
    """If the handler does not read within fail_delay, the connection fails anyway."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(T):
        async with serve(
            lambda ws: asyncio.sleep(T), compression=False, fail_delay=0.1, close_timeout=0.3
        ) as server:
            raw = await RawClient.open(server.port)
            await raw.handshake()
            start = loop.time()
            raw.writer.write(encode_frame(OP_TEXT, b"ok") + bytes([0x83, 0x80, 0, 0, 0, 0]))
            close = await raw.recv_frame()  # 0x3 is a reserved opcode
            assert close.opcode == OP_CLOSE and close.close_code == 1002
            assert "opcode" in close.close_reason
            assert 0.08 <= loop.time() - start < 2.0
            await raw.aclose()


async def test_max_frame_size_closes_with_1009() -> None:
    """A frame over max_frame_size fails the connection with 1009 naming max_frame_size."""
    async with asyncio.timeout(T):
        async with serve(echo, max_frame_size=100, compression=False) as server:
            async with connect(server.url) as ws:
                await ws.send(["a" * 60, "b" * 60])  # two frames under the limit: fine
                assert await ws.recv() == "a" * 60 + "b" * 60
                await ws.send("c" * 101)
                with pytest.raises(ConnectionClosedError) as info:
                    await ws.recv()
    assert info.value.code == 1009
    assert "max_frame_size=100" in info.value.reason
