"""serve()/Server/ServerConnection (transport/server.py) over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from pathlib import Path
from typing import Any

import pytest

from tidewire.errors import ConnectionClosed, ConnectionClosedOK, InvalidStatus
from tidewire.protocol.connection import State
from tidewire.protocol.http import Request, Response
from tidewire.transport import Server, ServerConnection, WebSocket, connect, serve

from .peers import (
    OP_CLOSE,
    OP_TEXT,
    RawClient,
    echo,
    eof_or_reset,
    http_request,
    inflate,
    wait_until,
)

T = 5  # seconds: the bound on every wait in this module


# ------------------------------------------------------------------------- lifecycle


async def test_async_with_serve_listens_and_stops() -> None:
    """`async with serve(handler, "127.0.0.1", 0)` listens on a real port and stops on exit."""
    async with asyncio.timeout(T):
        async with serve(echo, "127.0.0.1", 0) as server:
            assert isinstance(server, Server)
            assert server.port and server.port != 0
            assert server.url == f"ws://127.0.0.1:{server.port}/"
            async with connect(server.url) as ws:
                await ws.send("ping")
                assert await ws.recv() == "ping"
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", server.port)


async def test_await_serve_then_serve_forever_cancelled() -> None:
    """`server = await serve(...)` serves; cancelling serve_forever() stops the listener."""
    async with asyncio.timeout(T):
        server = await serve(echo, "127.0.0.1", 0)
        forever = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0)
        async with connect(server.url) as ws:
            await ws.send(b"bin")
            assert await ws.recv() == b"bin"
        forever.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forever
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", server.port)
        await server.shutdown()


async def test_server_connection_is_what_the_handler_gets() -> None:
    """The handler receives a ServerConnection tied to its Server."""
    got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        got.set_result(ws)

    async with asyncio.timeout(T):
        async with serve(handler) as server, connect(server.url) as ws:
            sws = await got
            assert isinstance(sws, ServerConnection) and sws.server is server
            await ws.wait_closed()
    assert ws.close_code == 1000


# ---------------------------------------------------------------------- plain HTTP


async def test_health_reports_connections_and_traffic() -> None:
    """GET /health returns JSON whose counters follow the traffic."""
    async with asyncio.timeout(T):
        async with serve(echo) as server:
            idle = await http_request(server.port, "/health")
            assert idle.status == 200
            assert idle.headers["content-type"] == ["application/json"]
            stats = idle.json()
            assert stats["status"] == "ok"
            assert stats["connections"] == 0
            assert isinstance(stats["uptime_seconds"], float | int)
            assert stats["messages_in"] == 0 and stats["messages_out"] == 0
            assert stats["http_requests"] == 1
            async with connect(server.url, compression=False) as ws:
                for i in range(3):
                    await ws.send(f"message {i}")
                    await ws.recv()
                busy = (await http_request(server.port, "/health")).json()
                assert busy["connections"] == 1
                assert busy["messages_in"] == 3 and busy["messages_out"] == 3
                # frames: 6 bytes of header and mask per client message, 2 per server one
                assert busy["bytes_in"] - stats["bytes_in"] >= 3 * (len("message 0") + 6)
                assert busy["bytes_out"] - stats["bytes_out"] >= 3 * (len("message 0") + 2)
            await ws.wait_closed()
            await wait_until(lambda: not server.connections)  # the server saw TCP close
            after = (await http_request(server.port, "/health")).json()
            assert after["connections"] == 0
            assert after["messages_in"] == 3 and after["messages_out"] == 3
            assert after["bytes_in"] >= busy["bytes_in"]
            assert after["uptime_seconds"] >= stats["uptime_seconds"]


async def test_plain_http_probe_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """A GET / without Upgrade gets an HTTP answer, is counted, and logs nothing above DEBUG."""
    caplog.set_level(logging.INFO, logger="tidewire")
    async with asyncio.timeout(T):
        async with serve(echo) as server:
            assert server.http_requests == 0
            result = await http_request(server.port, "/")
            assert result.status == 404
            await http_request(server.port, "/favicon.ico")
            await http_request(server.port, "/", method="HEAD")
            assert server.http_requests == 3
            async with connect(server.url) as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


async def test_unknown_plain_path_is_404() -> None:
    """A plain GET for a path nobody serves is a 404 with a one-line body."""
    async with asyncio.timeout(T):
        async with serve(echo) as server:
            result = await http_request(server.port, "/nope")
    assert result.status == 404
    assert b"/nope" in result.body
    assert result.headers["connection"] == ["close"]


async def test_health_path_none_disables_health() -> None:
    """health_path=None turns /health into an ordinary unknown path."""
    async with asyncio.timeout(T):
        async with serve(echo, health_path=None) as server:
            assert (await http_request(server.port, "/health")).status == 404


async def test_health_hook_extends_the_answer_and_sets_the_status() -> None:
    """health(stats) returns the body: 200 when its status is "ok", 503 otherwise; sync or async."""
    seen: list[dict[str, Any]] = []
    verdict = {"status": "ok"}

    async def check(stats: dict[str, Any]) -> dict[str, Any]:
        seen.append(stats)
        return {**stats, **verdict, "extra": {"healthy": verdict["status"] == "ok"}}

    async with asyncio.timeout(T):
        async with serve(echo, health=check) as server:
            good = await http_request(server.port, "/health")
            assert good.status == 200
            assert good.json()["extra"] == {"healthy": True} and "uptime_seconds" in good.json()
            assert seen[0]["connections"] == 0 and seen[0]["status"] == "ok"
            verdict["status"] = "degraded"
            bad = await http_request(server.port, "/health")
            assert (bad.status, bad.json()["status"]) == (503, "degraded")
        async with serve(echo, health=lambda stats: {"status": "busy"}) as server:
            assert (await http_request(server.port, "/health")).status == 503


async def test_health_hook_is_skipped_while_draining_and_its_failure_is_500() -> None:
    """A draining server answers 503 without asking the hook; a hook that raises gives 500."""
    calls = 0

    def failing(stats: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        raise RuntimeError("the hook broke")

    async with asyncio.timeout(T):
        server = await serve(echo, health=failing)
        assert (await http_request(server.port, "/health")).status == 500
        server.draining = True
        health = await http_request(server.port, "/health")
        assert (health.status, health.json()["status"]) == (503, "draining")
        assert calls == 1
        await server.shutdown(spread=0.0)


async def test_malformed_handshake_gets_400() -> None:
    """An upgrade request without Sec-WebSocket-Key is answered 400 and closed."""
    async with asyncio.timeout(T):
        async with serve(echo) as server:
            result = await http_request(
                server.port,
                "/",
                headers=(
                    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                ),
            )
    assert result.status == 400
    assert b"Sec-WebSocket-Key" in result.body


# ----------------------------------------------------------------------- timeouts


async def test_open_timeout_drops_half_a_handshake() -> None:
    """A client that sends half a request head is dropped after open_timeout."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(T):
        async with serve(echo, open_timeout=0.2) as server:
            raw = await RawClient.open(server.port)
            raw.writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
            start = loop.time()
            assert await eof_or_reset(raw.reader) == b""
            elapsed = loop.time() - start
            assert not server.connections
            await raw.aclose()
    assert 0.15 <= elapsed < 2.0


async def test_open_timeout_does_not_cut_an_open_connection() -> None:
    """Once upgraded, a connection outlives open_timeout."""
    async with asyncio.timeout(T):
        async with serve(echo, open_timeout=0.1) as server, connect(server.url) as ws:
            await asyncio.sleep(0.3)
            await ws.send("alive")
            assert await ws.recv() == "alive"


# ----------------------------------------------------------------- process_request


async def test_process_request_rejects_upgrade_with_401() -> None:
    """process_request returning a Response answers it instead of upgrading."""

    def auth(ws: ServerConnection, request: Request) -> Response | None:
        if request.path_only == "/health":
            return None
        if request.headers.get("Authorization") != "Bearer good":
            return Response.build(401, b"token required\n")
        return None

    async with asyncio.timeout(T):
        async with serve(echo, process_request=auth) as server:
            with pytest.raises(InvalidStatus) as info:
                await connect(server.url)
            assert info.value.status == 401
            async with connect(server.url, headers={"Authorization": "Bearer good"}) as ws:
                await ws.send("in")
                assert await ws.recv() == "in"
            assert (await http_request(server.port, "/health")).status == 200
            assert server.upgrades == 1


async def test_process_request_serves_a_file(tmp_path: Path) -> None:
    """process_request can serve a static file body on the WebSocket port."""
    page = tmp_path / "index.html"
    page.write_bytes(b"<!doctype html><title>tidewire</title>\n")

    def static(ws: ServerConnection, request: Request) -> Response | None:
        if request.path_only == "/index.html":
            return Response.build(200, page.read_bytes(), content_type="text/html")
        return None

    async with asyncio.timeout(T):
        async with serve(echo, process_request=static) as server:
            result = await http_request(server.port, "/index.html")
            assert result.status == 200
            assert result.body == page.read_bytes()
            assert result.headers["content-type"] == ["text/html"]
            assert result.headers["content-length"] == [str(len(page.read_bytes()))]
            async with connect(server.url) as ws:  # upgrades still reach the handler
                await ws.send("x")
                assert await ws.recv() == "x"


async def test_async_process_request() -> None:
    """An async process_request is awaited: it may reject or let the upgrade through."""

    async def check(ws: ServerConnection, request: Request) -> Response | None:
        await asyncio.sleep(0.01)
        if request.query.get("token") != ["ok"]:
            return Response.build(403, b"bad token\n")
        return None

    async with asyncio.timeout(T):
        async with serve(echo, process_request=check) as server:
            with pytest.raises(InvalidStatus) as info:
                await connect(server.url + "?token=no")
            assert info.value.status == 403
            async with connect(server.url + "?token=ok") as ws:
                await ws.send("through")
                assert await ws.recv() == "through"


async def test_async_process_request_failure_is_500() -> None:
    """An async process_request that raises answers 500 and the server keeps serving."""

    async def broken(ws: ServerConnection, request: Request) -> Response | None:
        raise RuntimeError("hook bug")

    async with asyncio.timeout(T):
        async with serve(echo, process_request=broken) as server:
            with pytest.raises(InvalidStatus) as info:
                await connect(server.url)
            assert info.value.status == 500


async def test_sync_process_request_failure_is_500(caplog: pytest.LogCaptureFixture) -> None:
    """A process_request that raises answers 500 (logged) instead of dropping the socket."""

    def broken(ws: ServerConnection, request: Request) -> Response | None:
        raise RuntimeError("hook bug")

    async with asyncio.timeout(T):
        async with serve(echo, process_request=broken) as server:
            assert (await http_request(server.port, "/anything")).status == 500
            with pytest.raises(InvalidStatus) as info:
                await connect(server.url)
            assert info.value.status == 500
    assert "process_request failed" in caplog.text


# ------------------------------------------------------------ origins, connections


async def test_origins_allowed_forbidden_and_duplicated() -> None:
    """origins: an allowed Origin upgrades, another gets 403, two Origin headers get 400."""
    allowed = "https://app.example"
    async with asyncio.timeout(T):
        async with serve(echo, origins=[allowed]) as server:
            async with connect(server.url, origin=allowed) as ws:
                await ws.send("ok")
                assert await ws.recv() == "ok"
            with pytest.raises(InvalidStatus) as info:
                await connect(server.url, origin="https://evil.example")
            assert info.value.status == 403
            with pytest.raises(InvalidStatus) as info:
                await connect(server.url)  # no Origin: None is not in the list
            assert info.value.status == 403
            raw = await RawClient.open(server.port)
            await raw.handshake(
                extra=f"Origin: {allowed}\r\nOrigin: https://evil.example\r\n", expect=400
            )
            await raw.aclose()


async def test_origins_may_allow_a_missing_origin() -> None:
    """None in origins lets non-browser clients without an Origin header in."""
    async with asyncio.timeout(T):
        async with serve(echo, origins=[None, "https://app.example"]) as server:
            async with connect(server.url) as ws:
                await ws.send("no origin")
                assert await ws.recv() == "no origin"


async def test_max_connections_answers_503_before_upgrade() -> None:
    """Beyond max_connections an upgrade gets 503 (no 101); a freed slot is usable again."""
    async with asyncio.timeout(T):
        async with serve(echo, max_connections=2) as server:
            first = await connect(server.url)
            second = await connect(server.url)
            with pytest.raises(InvalidStatus) as info:
                await connect(server.url)
            assert info.value.status == 503
            assert server.upgrades == 2
            await first.close()
            await wait_until(lambda: len(server.connections) < 2)
            async with connect(server.url) as third:
                await third.send("in")
                assert await third.recv() == "in"
            await second.close()


# ---------------------------------------------------------- subprotocols, compression


async def test_subprotocol_selection_follows_server_preference() -> None:
    """The server picks its most preferred subprotocol among those the client offers."""
    chosen: list[str | None] = []

    async def handler(ws: WebSocket) -> None:
        chosen.append(ws.subprotocol)

    async with asyncio.timeout(T):
        async with serve(handler, subprotocols=["chat.v2", "chat.v1"]) as server:
            async with connect(server.url, subprotocols=["chat.v1", "chat.v2"]) as ws:
                assert ws.subprotocol == "chat.v2"
                assert ws.response is not None
                assert ws.response.headers["Sec-WebSocket-Protocol"] == "chat.v2"
                await ws.wait_closed()
            async with connect(server.url, subprotocols=["chat.v1"]) as ws:
                assert ws.subprotocol == "chat.v1"
                await ws.wait_closed()
            async with connect(server.url, subprotocols=["other"]) as ws:
                assert ws.subprotocol is None
                await ws.wait_closed()
            async with connect(server.url) as ws:
                assert ws.subprotocol is None
                await ws.wait_closed()
    assert chosen == ["chat.v2", "chat.v1", None, None]


async def test_select_subprotocol_callable() -> None:
    """select_subprotocol(offered) decides instead of the preference list."""
    async with asyncio.timeout(T):
        async with serve(echo, select_subprotocol=lambda offered: offered[-1]) as server:
            async with connect(server.url, subprotocols=["a", "b", "c"]) as ws:
                assert ws.subprotocol == "c"


async def test_permessage_deflate_negotiated_by_default_and_used() -> None:
    """Both sides negotiate permessage-deflate by default and compressible data shrinks."""
    got: asyncio.Future[WebSocket] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        got.set_result(ws)
        await echo(ws)

    text = "tidewire " * 2000
    async with asyncio.timeout(T):
        async with serve(handler) as server, connect(server.url) as ws:
            sws = await got
            assert ws.extensions and sws.extensions
            assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
            before = ws.bytes_out
            await ws.send(text)
            assert await ws.recv() == text
            assert 0 < ws.bytes_out - before < len(text) // 10


async def test_compression_false_on_either_side() -> None:
    """compression=False on the server or on the client means no extension at all."""
    async with asyncio.timeout(T):
        async with serve(echo, compression=False) as server, connect(server.url) as ws:
            assert ws.extensions == []
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await ws.send("a" * 1000)
            assert await ws.recv() == "a" * 1000
        async with serve(echo) as server, connect(server.url, compression=False) as ws:
            assert ws.extensions == []
            assert "Sec-WebSocket-Extensions" not in ws.request.headers
            before = ws.bytes_out
            await ws.send("a" * 1000)
            assert await ws.recv() == "a" * 1000
            assert ws.bytes_out - before >= 1000


async def test_per_message_compress_override_sets_rsv1() -> None:
    """send(compress=...) overrides the threshold: RSV1 on the wire follows it."""
    plan: list[tuple[str, bool | None]] = [
        ("a" * 1000, None),  # above the threshold: compressed
        ("a" * 1000, False),  # forced off
        ("hi", None),  # below the threshold: sent as is
        ("hi", True),  # forced on
    ]

    async def handler(ws: WebSocket) -> None:
        for text, compress in plan:
            await ws.send(text, compress=compress)
        await ws.wait_closed()

    async with asyncio.timeout(T):
        async with serve(handler, close_timeout=0.5) as server:
            raw = await RawClient.open(server.port)
            await raw.handshake(deflate=True)
            assert raw.headers["sec-websocket-extensions"][0].startswith("permessage-deflate")
            frames = [await raw.recv_frame() for _ in plan]
            raw.send(OP_CLOSE, (1000).to_bytes(2, "big"))
            await raw.recv_frame()
            await raw.aclose()
    assert [f.rsv1 for f in frames] == [True, False, False, True]
    assert all(f.opcode == OP_TEXT for f in frames)
    decoded = [(inflate(f.payload) if f.rsv1 else f.payload).decode() for f in frames]
    assert decoded == [text for text, _ in plan]


async def test_client_compress_override() -> None:
    """The client's send(compress=False) puts the raw bytes on the wire."""
    text = "b" * 4000
    async with asyncio.timeout(T):
        async with serve(echo) as server, connect(server.url) as ws:
            before = ws.bytes_out
            await ws.send(text, compress=False)
            assert await ws.recv() == text
            plain = ws.bytes_out - before
            before = ws.bytes_out
            await ws.send(text)
            assert await ws.recv() == text
            packed = ws.bytes_out - before
    assert plain >= len(text) > 10 * packed


# ----------------------------------------------------------------- graceful shutdown


async def test_shutdown_closes_with_1001_and_leaves_no_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """shutdown() sends 1001 to every client, ends every handler and leaks no task."""
    ended: list[int] = []

    async def handler(ws: WebSocket) -> None:
        try:
            await echo(ws)
        finally:
            ended.append(ws.id)

    async with asyncio.timeout(T):
        server = await serve(handler, close_timeout=1.0)
        clients = [await connect(server.url) for _ in range(3)]
        for ws in clients:
            await ws.send("hello")
            assert await ws.recv() == "hello"
        await server.shutdown()
        for ws in clients:
            with pytest.raises(ConnectionClosedOK) as info:
                await ws.recv()
            assert info.value.code == 1001
            assert (ws.close_code, ws.close_reason) == (1001, "server shutting down")
            await ws.wait_closed()
    assert len(ended) == 3
    assert not server.handler_tasks and not server.connections
    assert asyncio.all_tasks() == {asyncio.current_task()}
    gc.collect()
    assert "Task was destroyed" not in caplog.text


async def test_shutdown_cancels_handlers_that_do_not_end() -> None:
    """A handler still busy after the connections closed is cancelled after the timeout."""
    cancelled = asyncio.Event()

    async def handler(ws: WebSocket) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    loop = asyncio.get_running_loop()
    async with asyncio.timeout(T):
        server = await serve(handler, close_timeout=0.3)
        ws = await connect(server.url)
        start = loop.time()
        await server.shutdown()
        elapsed = loop.time() - start
        await ws.wait_closed()
    assert cancelled.is_set()
    assert ws.close_code == 1001
    assert elapsed < 2.0
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_draining_health_503_upgrades_503_and_stragglers_aborted() -> None:
    """While draining /health is 503, new upgrades get 503; peers ignoring close are aborted."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(T):
        server = await serve(echo, close_timeout=5.0)
        raw = await RawClient.open(server.port)
        await raw.handshake()
        start = loop.time()
        draining = asyncio.create_task(server.shutdown(timeout=0.5, spread=0.0))
        frame = await raw.recv_frame()  # the 1001, which this peer ignores
        assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1001)
        assert server.draining
        health = await http_request(server.port, "/health")
        assert health.status == 503
        assert health.json()["status"] == "draining"
        with pytest.raises(InvalidStatus) as info:
            await connect(server.url)
        assert info.value.status == 503
        assert not draining.done()
        assert await eof_or_reset(raw.reader) == b""  # aborted after the timeout
        await draining
        elapsed = loop.time() - start
        await raw.aclose()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", server.port)
    assert 0.4 <= elapsed < 2.0
    assert not server.connections and not server.handler_tasks
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_async_with_exit_is_a_graceful_shutdown() -> None:
    """Leaving `async with serve(...)` closes open clients with 1001."""
    async with asyncio.timeout(T):
        async with serve(echo) as server:
            ws = await connect(server.url)
            await ws.send("x")
            await ws.recv()
        await ws.wait_closed()
    assert ws.close_code == 1001
    assert ws.state is State.CLOSED


async def test_shutdown_is_quick_for_a_connection_whose_reading_is_paused() -> None:
    """A connection paused at max_queue still reads the 1001 echo during shutdown."""
    server_side: asyncio.Future[WebSocket] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        server_side.set_result(ws)
        await ws.wait_closed()  # never reads

    async def flood(ws: WebSocket) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.send(bytes(64 * 1024))

    loop = asyncio.get_running_loop()
    async with asyncio.timeout(T):
        server = await serve(handler, max_queue=2, compression=False, close_timeout=2.0)
        ws = await connect(server.url, compression=False)
        sender = asyncio.create_task(flood(ws))
        sws = await server_side
        assert sws.transport is not None
        while sws.transport.is_reading():
            await asyncio.sleep(0.01)
        start = loop.time()
        await server.shutdown(spread=0.0)
        elapsed = loop.time() - start
        await sender
        await ws.wait_closed()
    assert ws.close_code == 1001
    assert sws.close_code == 1001  # the echo was read: a clean closing handshake
    assert elapsed < 1.0


async def test_server_close_then_wait_closed() -> None:
    """server.close() stops listening and sends 1001; wait_closed() waits for the handlers."""
    async with asyncio.timeout(T):
        server = await serve(echo)
        ws = await connect(server.url)
        server.close()
        await server.wait_closed()
        await ws.wait_closed()
        assert ws.close_code == 1001
        assert not server.handler_tasks
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", server.port)


async def test_shutdown_with_close_timeout_none_waits_for_the_closing_handshake() -> None:
    """close_timeout=None disables the drain deadline: slow peers still close cleanly."""
    ended: list[int | None] = []

    async def handler(ws: WebSocket) -> None:
        await echo(ws)
        ended.append(ws.close_code)

    async with asyncio.timeout(T):
        server = await serve(handler, close_timeout=None)
        raw = await RawClient.open(server.port)
        await raw.handshake()
        draining = asyncio.create_task(server.shutdown(spread=0.0))
        frame = await raw.recv_frame()
        assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1001)
        await asyncio.sleep(0.2)  # a slow peer: no deadline means no abort
        assert not draining.done()
        raw.send(OP_CLOSE, frame.payload)
        assert await raw.reader.read() == b""
        await draining
        await raw.aclose()
    assert ended == [1001]
