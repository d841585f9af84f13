"""broadcast(), send_nowait() and buffered_amount (transport/broadcast.py, connection.py).

Over loopback: one tidewire server, clients with no compression, permessage-deflate with
context takeover, and with server_no_context_takeover (two window sizes, plus `websockets`
clients), so every way of framing a broadcast is exercised against real peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from tidewire.errors import ConcurrencyError, ConnectionClosed, InvalidState
from tidewire.protocol.connection import Connection, Side, State
from tidewire.protocol.deflate import ClientDeflateFactory, PerMessageDeflate
from tidewire.transport import Server, WebSocket, broadcast, connect, serve

from .peers import OP_BINARY, OP_CLOSE, RawClient, wait_until

T = 10  # seconds: the bound on every wait in this module

#: Client kinds: how each one negotiates permessage-deflate with the tidewire server.
PLAIN = "plain"  # tidewire client, compression=False
CTX = "ctx"  # tidewire client, default offer: context takeover on both sides
NCT = "nct"  # tidewire client asking server_no_context_takeover (server window 12)
NCT10 = "nct10"  # same, with server_max_window_bits=10: a second sharing profile
WS_CTX = "ws-ctx"  # websockets client, its default offer (context takeover)
WS_NCT = "ws-nct"  # websockets client asking server_no_context_takeover

COMPRESSIBLE = '{"type":"chat","room":"lobby","text":"' + "hello tidewire " * 40 + '"}'
BIG_TEXT = "broadcast " * 20_000  # 200,000 characters: above the fast-level size
SMALL = "hi"  # under the compression threshold (32 bytes)


@dataclass
class Room:
    """A server plus clients, each client paired with its server-side connection."""

    server: Server
    kinds: list[str]
    clients: list[Any]  # tidewire ClientConnection or websockets ClientConnection
    conns: list[WebSocket] = field(default_factory=list)

    def of(self, kind: str) -> list[WebSocket]:
        """The server-side connections of the clients of ``kind``."""
        return [ws for ws, k in zip(self.conns, self.kinds, strict=True) if k == kind]


async def _open_client(url: str, kind: str) -> Any:
    if kind == PLAIN:
        return await connect(url, compression=False)
    if kind == CTX:
        return await connect(url)
    if kind == NCT:
        return await connect(
            url, extensions=[ClientDeflateFactory(server_no_context_takeover=True)]
        )
    if kind == NCT10:
        factory = ClientDeflateFactory(server_no_context_takeover=True, server_max_window_bits=10)
        return await connect(url, extensions=[factory])
    if kind == WS_CTX:
        return await ws_connect(url, proxy=None)
    if kind == WS_NCT:
        factory_ws = ClientPerMessageDeflateFactory(server_no_context_takeover=True)
        return await ws_connect(url, proxy=None, extensions=[factory_ws], compression=None)
    raise AssertionError(kind)


@contextlib.asynccontextmanager
async def room(kinds: list[str], **options: Any) -> AsyncIterator[Room]:
    """Serve, connect one client per kind (path /<index>), pair each with its server side."""
    by_path: dict[str, WebSocket] = {}

    async def handler(ws: WebSocket) -> None:
        assert ws.request is not None
        by_path[ws.request.path] = ws
        async for _ in ws:
            pass

    async with serve(handler, ping_interval=None, **options) as server:
        clients = [await _open_client(f"{server.url}{i}", kind) for i, kind in enumerate(kinds)]
        await wait_until(lambda: len(by_path) == len(kinds))
        conns = [by_path[f"/{i}"] for i in range(len(kinds))]
        try:
            yield Room(server, kinds, clients, conns)
        finally:
            for client in clients:
                await client.close()


async def recv_n(client: Any, n: int) -> list[Any]:
    """The next ``n`` messages of a tidewire or websockets client."""
    return [await client.recv() for _ in range(n)]


def expect_compression(r: Room) -> None:
    """Each kind negotiated what its name says (guards the premise of the other checks)."""
    for ws, kind in zip(r.conns, r.kinds, strict=True):
        codecs = [e for e in ws.extensions if isinstance(e, PerMessageDeflate)]
        if kind == PLAIN:
            assert not codecs
            continue
        (codec,) = codecs
        assert codec.local_no_context_takeover is (kind in (NCT, NCT10, WS_NCT)), kind
        assert codec.local_max_window_bits == (10 if kind == NCT10 else 12), kind


# ------------------------------------------------------------------------- delivery

ALL_KINDS = [PLAIN, CTX, NCT, NCT10, WS_CTX, WS_NCT, PLAIN, CTX, NCT, WS_NCT]


async def test_every_client_receives_every_message_exactly() -> None:
    """Text and binary, small and large, under and over the threshold: each client gets each."""
    blob = os.urandom(3000)
    messages: list[tuple[str | bytes, bool | None]] = [
        (SMALL, None),
        (COMPRESSIBLE, None),
        (BIG_TEXT, None),
        ("héllo wörld ✓ " * 10, None),
        (b"\x00\x01\x02", None),
        (COMPRESSIBLE.encode(), None),
        (blob, None),
        (bytes(200_000), None),
        (COMPRESSIBLE, False),
        (SMALL, True),
        ("", None),
        ("", True),
        (b"", True),
    ]
    async with asyncio.timeout(T), room(ALL_KINDS) as r:
        expect_compression(r)
        for message, compress in messages:
            assert broadcast(r.conns, message, compress=compress) == len(r.conns)
        wanted = [message for message, _ in messages]
        for client, kind in zip(r.clients, r.kinds, strict=True):
            assert await recv_n(client, len(wanted)) == wanted, kind
        for ws in r.conns:
            assert ws.messages_out == len(messages)


async def test_broadcast_accepts_bytearray_and_memoryview_and_rejects_others() -> None:
    """bytearray and memoryview go out as binary; anything else is a TypeError."""
    async with asyncio.timeout(T), room([PLAIN, NCT]) as r:
        assert broadcast(r.conns, bytearray(b"ba")) == 2
        assert broadcast(r.conns, memoryview(b"mv" * 40)) == 2
        with pytest.raises(TypeError):
            broadcast(r.conns, {"not": "encoded"})  # type: ignore[arg-type]
        for client in r.clients:
            assert await recv_n(client, 2) == [b"ba", b"mv" * 40]


# ------------------------------------------------------------------ encode once


@dataclass
class Spy:
    """Counts of frame building: shared frames by key, shared and per-connection compressions."""

    shared: Counter[Hashable] = field(default_factory=Counter)
    deflate_shared: int = 0
    deflate: int = 0
    queued: dict[int, list[int]] = field(default_factory=dict)  # id(conn.proto) -> frame ids


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    """Wrap the frame builders, the codec's two compressors and send_frame with counters."""
    found = Spy()
    frame_for_sharing = Connection.frame_for_sharing
    deflate_shared = PerMessageDeflate.deflate_shared
    deflate = PerMessageDeflate.deflate
    send_frame = Connection.send_frame

    def spy_frame(self: Connection, data: bytes, *, text: bool, compress: bool | None) -> bytes:
        found.shared[self.share_key(len(data), compress)] += 1
        return frame_for_sharing(self, data, text=text, compress=compress)

    def spy_deflate_shared(self: PerMessageDeflate, data: bytes) -> bytes:
        found.deflate_shared += 1
        return deflate_shared(self, data)

    def spy_deflate(self: PerMessageDeflate, data: bytes, *, fin: bool = True) -> bytes:
        if self.is_server_side:
            found.deflate += 1
        return deflate(self, data, fin=fin)

    def spy_send_frame(self: Connection, frame: bytes) -> None:
        found.queued.setdefault(id(self), []).append(id(frame))
        send_frame(self, frame)

    monkeypatch.setattr(Connection, "frame_for_sharing", spy_frame)
    monkeypatch.setattr(PerMessageDeflate, "deflate_shared", spy_deflate_shared)
    monkeypatch.setattr(PerMessageDeflate, "deflate", spy_deflate)
    monkeypatch.setattr(Connection, "send_frame", spy_send_frame)
    return found


async def test_frames_are_built_once_per_profile(spy: Spy) -> None:
    """One plain frame, one compressed frame per no-context profile; context takeover per conn."""
    kinds = [PLAIN, PLAIN, PLAIN, CTX, CTX, WS_CTX, NCT, NCT, WS_NCT, NCT10, NCT10]
    async with asyncio.timeout(T), room(kinds) as r:
        expect_compression(r)
        assert broadcast(r.conns, COMPRESSIBLE) == len(kinds)
        # keys: () for plain, then one per (window bits, level, memLevel) profile
        assert sorted(spy.shared.values()) == [1, 1, 1], spy.shared
        assert () in spy.shared
        assert spy.deflate_shared == 2  # window 12 (NCT, WS_NCT) and window 10 (NCT10)
        assert spy.deflate == 3  # CTX, CTX, WS_CTX: each with its own compressor
        # the very same bytes object sits in every receiver of one profile
        for kind in (PLAIN, NCT, NCT10):
            ids = {tuple(spy.queued[id(ws.proto)]) for ws in r.of(kind)}
            assert len(ids) == 1, kind
        assert spy.queued[id(r.of(NCT)[0].proto)] == spy.queued[id(r.of(WS_NCT)[0].proto)]
        assert not any(id(ws.proto) in spy.queued for ws in r.of(CTX) + r.of(WS_CTX))

        # under the threshold, or compress=False: one plain frame for everybody
        spy.shared.clear()
        spy.deflate = spy.deflate_shared = 0
        assert broadcast(r.conns, SMALL) == len(kinds)
        assert broadcast(r.conns, COMPRESSIBLE, compress=False) == len(kinds)
        assert spy.shared == Counter({(): 2})
        assert spy.deflate == spy.deflate_shared == 0

        for client in r.clients:
            assert await recv_n(client, 3) == [COMPRESSIBLE, SMALL, COMPRESSIBLE]


async def test_shared_compressed_frame_is_smaller_and_leaves_the_codec_alone() -> None:
    """A no-context connection gets the compressed shared frame; its own compressor stays unused."""
    async with asyncio.timeout(T), room([NCT, PLAIN]) as r:
        nct, plain = r.conns
        before = nct.bytes_out, plain.bytes_out  # the 101 responses
        broadcast(r.conns, COMPRESSIBLE)
        await recv_n(r.clients[0], 1)
        await recv_n(r.clients[1], 1)
        assert plain.bytes_out - before[1] == len(COMPRESSIBLE) + 4
        assert nct.bytes_out - before[0] < len(COMPRESSIBLE) // 5
        (codec,) = nct.extensions
        assert codec._compressor is None


# ------------------------------------------------------------------ skipping


async def test_closed_closing_and_fragmenting_connections_are_skipped() -> None:
    """Closed, closing and mid-fragment connections are not counted and get nothing extra."""
    release = asyncio.Event()

    async def pieces() -> AsyncIterator[str]:
        yield "frag"
        yield "ment"
        await release.wait()
        yield "ed"

    async with asyncio.timeout(T), room([PLAIN, NCT, CTX, PLAIN, NCT]) as r:
        gone, closing, fragmenting, open_a, open_b = r.conns
        await r.clients[0].close()
        await wait_until(lambda: gone.state is State.CLOSED)
        streamer = asyncio.create_task(fragmenting.send(pieces()))
        await wait_until(lambda: fragmenting.proto.sending_fragments)
        closer = asyncio.create_task(closing.close())
        await asyncio.sleep(0)  # close() sent its close frame; the echo cannot be in yet
        assert closing.state is State.CLOSING

        assert broadcast(r.conns, COMPRESSIBLE) == 2
        assert broadcast([gone, closing, fragmenting], "nobody") == 0
        assert [ws.messages_out for ws in r.conns] == [0, 0, 0, 1, 1]

        release.set()
        await streamer
        assert await r.clients[2].recv() == "fragmented"
        assert broadcast(r.conns, "after") == 3  # the fragmented send is over
        assert await recv_n(r.clients[2], 1) == ["after"]
        for client in r.clients[3:]:
            assert await recv_n(client, 2) == [COMPRESSIBLE, "after"]
        with pytest.raises(ConnectionClosed):
            await r.clients[1].recv()  # the server closed it: nothing was sent after
        await closer


async def test_broadcast_skips_a_stream_that_has_not_sent_its_first_fragment() -> None:
    """While send() iterates a stream, broadcast skips the connection as send() would refuse."""
    release = asyncio.Event()

    async def pieces() -> AsyncIterator[bytes]:
        await release.wait()
        yield b"only"

    async with asyncio.timeout(T), room([PLAIN]) as r:
        (ws,) = r.conns
        streamer = asyncio.create_task(ws.send(pieces()))
        await wait_until(lambda: ws._sending_stream)
        assert broadcast(r.conns, "skipped") == 0
        release.set()
        await streamer
        assert await r.clients[0].recv() == b"only"


# ------------------------------------------------------------------ ordering


async def test_interleaved_send_broadcast_and_send_nowait_keep_order() -> None:
    """Per connection, messages arrive in the order send, broadcast and send_nowait queued them."""
    kinds = [PLAIN, CTX, NCT, NCT10, WS_CTX, WS_NCT]
    async with asyncio.timeout(T), room(kinds) as r:
        expected: list[list[str]] = [[] for _ in kinds]
        for i in range(30):
            if i % 3 == 0:
                for n, ws in enumerate(r.conns):
                    own = f"own {i} to {n} " + "x" * (i * 3)
                    await ws.send(own)
                    expected[n].append(own)
            shared = f"broadcast {i} " + COMPRESSIBLE[: i * 10]
            assert broadcast(r.conns, shared) == len(kinds)
            for n in range(len(kinds)):
                expected[n].append(shared)
            if i % 2:
                for n, ws in enumerate(r.conns):
                    quick = f"nowait {i} " + "y" * (i * 4)
                    ws.send_nowait(quick)
                    expected[n].append(quick)
            if i % 5 == 4:
                await asyncio.sleep(0)
        for client, want in zip(r.clients, expected, strict=True):
            assert await recv_n(client, len(want)) == want


async def test_broadcast_from_clients_masks_each_frame() -> None:
    """Client connections fall back to their own masked frames; the server reads every one."""
    got: list[tuple[str, Any]] = []

    async def handler(ws: WebSocket) -> None:
        assert ws.request is not None
        async for message in ws:
            got.append((ws.request.path, message))

    async with asyncio.timeout(T), serve(handler, ping_interval=None) as server:
        clients = [
            await connect(f"{server.url}a", compression=False),
            await connect(f"{server.url}b"),
            await connect(
                f"{server.url}c",
                extensions=[ClientDeflateFactory(client_no_context_takeover=True)],
            ),
        ]
        assert all(c.proto.share_key(1000) is None for c in clients)
        assert broadcast(clients, COMPRESSIBLE) == 3
        assert broadcast(clients, b"\x01\x02") == 3
        await wait_until(lambda: len(got) == 6)
        for path in ("/a", "/b", "/c"):
            assert [m for p, m in got if p == path] == [COMPRESSIBLE, b"\x01\x02"]
        for client in clients:
            await client.close()


# ------------------------------------------------------------- writes, counters


async def test_writes_are_coalesced_and_counted_like_send() -> None:
    """A burst of broadcasts costs two writes per receiver (first direct); counters match."""
    async with asyncio.timeout(T), room([PLAIN, PLAIN, NCT, NCT]) as r:
        writes: Counter[int] = Counter()
        for ws in r.conns:
            transport = ws.transport
            assert transport is not None
            real = transport.write

            def counted(data: Any, _real: Callable[[Any], None] = real, _id: int = ws.id) -> None:
                writes[_id] += 1
                _real(data)

            transport.write = counted  # type: ignore[method-assign]
        by_broadcast, by_send = [r.conns[0], r.conns[2]], [r.conns[1], r.conns[3]]
        messages: list[str | bytes] = [SMALL, COMPRESSIBLE, b"\x00" * 100, "x" * 5]
        for message in messages:
            broadcast(by_broadcast, message)
        assert all(ws.buffered_amount > 0 for ws in by_broadcast)
        for message in messages:
            for ws in by_send:
                await ws.send(message)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert writes == Counter({ws.id: 2 if ws in by_broadcast else 1 for ws in r.conns})
        for a, b in zip(by_broadcast, by_send, strict=True):
            assert a.messages_out == b.messages_out == len(messages)
            assert a.bytes_out == b.bytes_out
        stats = r.server.stats()
        assert stats["messages_out"] == 4 * len(messages)
        for client in r.clients:
            assert await recv_n(client, len(messages)) == messages


async def test_a_failing_write_does_not_stall_the_other_receivers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One transport whose write raises is logged; the rest of the batch is still flushed."""
    async with asyncio.timeout(T), room([PLAIN, PLAIN, PLAIN]) as r:
        broken = r.conns[1]
        assert broken.transport is not None

        def explode(data: Any) -> None:
            raise RuntimeError("broken transport")

        broken.transport.write = explode  # type: ignore[method-assign]
        assert broadcast(r.conns, "first") == 3
        assert broadcast(r.conns, "second") == 3
        for n in (0, 2):
            assert await recv_n(r.clients[n], 2) == ["first", "second"]
        assert "flushing connection" in caplog.text and "broken transport" in caplog.text
        assert not broken._flush_scheduled  # a later flush is not blocked by the failure
        broken.transport.abort()


async def test_slow_reader_does_not_block_broadcast_and_buffer_drains() -> None:
    """A client that stops reading: broadcast returns, buffered_amount grows, then drains."""
    high = 64 * 1024
    size, count = 256 * 1024, 40  # 10 MiB: past the kernel's socket buffers (4 MiB + rcvbuf)
    chunk = os.urandom(size)
    members: list[WebSocket] = []

    async def handler(ws: WebSocket) -> None:
        members.append(ws)
        async for _ in ws:
            pass

    async with (
        asyncio.timeout(T),
        serve(handler, ping_interval=None, compression=False, write_high_water=high) as server,
    ):
        fast = await connect(server.url, max_message_size=None)
        await wait_until(lambda: len(members) == 1)
        assert server.port is not None
        slow = await RawClient.open(server.port, rcvbuf=16 * 1024)
        await slow.handshake()
        await wait_until(lambda: len(members) == 2)
        fast_ws, slow_ws = members

        received: list[str | bytes] = []

        async def read_fast() -> None:
            for _ in range(count):
                received.append(await fast.recv())

        reader = asyncio.create_task(read_fast())
        peak = 0
        loop = asyncio.get_running_loop()
        for _ in range(count):
            started = loop.time()
            assert broadcast(members, chunk) == 2
            assert loop.time() - started < 1.0  # synchronous: never waits for the slow peer
            peak = max(peak, slow_ws.buffered_amount)
            await asyncio.sleep(0)
        await reader
        assert len(received) == count and received[-1] == chunk
        assert slow_ws._write_paused  # the high-water check still fired pause_writing()
        assert slow_ws.buffered_amount > 2 * 1024 * 1024
        assert peak >= slow_ws.buffered_amount
        assert fast_ws.buffered_amount == 0

        for _ in range(count):
            frame = await slow.recv_frame()
            assert frame.opcode == OP_BINARY and frame.payload == chunk
        await wait_until(lambda: slow_ws.buffered_amount == 0)
        assert not slow_ws._write_paused
        slow.send(OP_CLOSE, (1000).to_bytes(2, "big"))
        assert (await slow.recv_frame()).opcode == OP_CLOSE
        await slow.aclose()
        await fast.close()


# ---------------------------------------------------------------- send_nowait


async def test_send_nowait_queues_without_waiting_and_raises_when_closed() -> None:
    """send_nowait() returns None at once, is written with the next flush, raises once closed."""
    release = asyncio.Event()

    async def pieces() -> AsyncIterator[str]:
        yield "a"
        await release.wait()
        yield "b"

    async with asyncio.timeout(T), room([CTX]) as r:
        (ws,) = r.conns
        (client,) = r.clients
        ws.send_nowait("text")  # returns at once: nothing to await
        ws.send_nowait(b"bytes")
        ws.send_nowait(COMPRESSIBLE, compress=False)
        assert ws.buffered_amount > len(COMPRESSIBLE)  # queued for this turn's flush
        assert ws.messages_out == 3
        with pytest.raises(TypeError):
            ws.send_nowait(["not", "a", "stream"])  # type: ignore[arg-type]
        assert await recv_n(client, 3) == ["text", b"bytes", COMPRESSIBLE]
        assert ws.bytes_out > len(COMPRESSIBLE)  # sent uncompressed as asked

        streamer = asyncio.create_task(ws.send(pieces()))
        await wait_until(lambda: ws._sending_stream)
        with pytest.raises(ConcurrencyError):
            ws.send_nowait("interleaved")
        release.set()
        await streamer
        assert await client.recv() == "ab"

        await client.close()
        await wait_until(lambda: ws.state is State.CLOSED)
        with pytest.raises(ConnectionClosed) as caught:
            ws.send_nowait("too late")
        assert caught.value.code == 1000
        with pytest.raises(ConnectionClosed):
            await ws.send("too late")  # the same error as send()


async def test_send_nowait_past_high_water_writes_at_once() -> None:
    """Past write_high_water send_nowait() writes immediately, so pause_writing() can fire."""
    high = 16 * 1024
    async with asyncio.timeout(T), room([PLAIN], write_high_water=high, write_low_water=0) as r:
        (ws,) = r.conns
        ws.send_nowait(b"x" * 100)
        assert ws.proto.pending_size == 102  # waits for the scheduled flush
        ws.send_nowait(b"y" * (high + 1))
        assert ws.proto.pending_size == 0  # written now, not at the end of the turn
        assert await recv_n(r.clients[0], 2) == [b"x" * 100, b"y" * (high + 1)]


# ------------------------------------------------------ core hooks (no sockets)


def _server_codec(**flags: Any) -> PerMessageDeflate:
    return PerMessageDeflate(is_server_side=True, server_max_window_bits=12, **flags)


def _open(side: Side, codec: PerMessageDeflate | None = None) -> Connection:
    return Connection(side, extensions=[codec] if codec is not None else [])


def test_share_key_follows_role_codec_and_threshold() -> None:
    """Plain frames share (); no-context codecs share by profile; the rest cannot share."""
    assert _open(Side.SERVER).share_key(1000) == ()
    assert _open(Side.CLIENT).share_key(1000) is None
    nct = _open(Side.SERVER, _server_codec(server_no_context_takeover=True))
    ctx = _open(Side.SERVER, _server_codec())
    assert nct.share_key(10) == () and ctx.share_key(10) == ()  # under min_size
    assert nct.share_key(1000, compress=False) == ()
    assert nct.share_key(1000) == ("permessage-deflate", 12, 6, 5)
    assert nct.share_key(10, compress=True) == ("permessage-deflate", 12, 6, 5)
    assert ctx.share_key(1000) is None
    with pytest.raises(InvalidState):
        ctx.frame_for_sharing(b"x" * 1000, text=False)


def test_shared_frame_inflates_and_matches_a_fresh_codec() -> None:
    """The shared compressed frame is what a fresh no-context codec sends, RSV1 set."""
    data = COMPRESSIBLE.encode()
    sharer = _open(Side.SERVER, _server_codec(server_no_context_takeover=True))
    frame = sharer.frame_for_sharing(data, text=True)
    fresh = _open(Side.SERVER, _server_codec(server_no_context_takeover=True))
    fresh.send_text(data)
    assert frame == fresh.data_to_send()
    assert frame[0] == 0xC1  # FIN, RSV1, text
    payload = frame[4:] if frame[1] == 126 else frame[2:]
    assert zlib.decompressobj(-12).decompress(payload + b"\x00\x00\xff\xff") == data
    assert sharer.data_to_send() == b""  # building the frame queued nothing


def test_send_frame_checks_state_role_and_fragments() -> None:
    """send_frame refuses a client, a closed connection and an unfinished fragmented message."""
    frame = _open(Side.SERVER).frame_for_sharing(b"abc", text=False)
    server = _open(Side.SERVER)
    server.send_frame(frame)
    assert server.pending_size == len(frame) and server.data_to_send() == frame
    with pytest.raises(InvalidState):
        _open(Side.CLIENT).send_frame(frame)
    server.send_text("part", fin=False)
    assert server.sending_fragments
    with pytest.raises(InvalidState):
        server.send_frame(frame)
    server.send_continuation("end", fin=True)
    assert not server.sending_fragments
    server.send_close()
    with pytest.raises(InvalidState):
        server.send_frame(frame)


async def test_first_broadcast_of_a_turn_is_written_at_once() -> None:
    """The first broadcast in a loop turn writes during the call; the next waits for the flush."""
    async with asyncio.timeout(T), room([PLAIN, PLAIN]) as r:
        await asyncio.sleep(0)  # start a fresh loop turn
        writes: list[bytes] = []
        for ws in r.conns:
            transport = ws.transport
            assert transport is not None
            real = transport.write

            def counted(data: Any, _real: Callable[[Any], None] = real) -> None:
                writes.append(bytes(data))
                _real(data)

            transport.write = counted  # type: ignore[method-assign]
        broadcast(r.conns, "one")
        assert len(writes) == 2 and all(ws.buffered_amount == 0 for ws in r.conns)
        broadcast(r.conns, "two")
        assert len(writes) == 2 and all(ws.buffered_amount > 0 for ws in r.conns)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(writes) == 4
        for client in r.clients:
            assert await recv_n(client, 2) == ["one", "two"]
