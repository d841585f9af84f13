"""Limits over loopback: rate limits, strikes, idle timeout, sizes, connections, slow consumers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from tidewire.realtime import App, Context, RateLimit, RateLimits
from tidewire.realtime.wire import encode

from .conftest import connect, next_disconnect, track_disconnects


def typing_app(**kwargs: Any) -> App:
    """An app with ``typing`` and ``chat`` handlers that answer."""
    app = App(**kwargs)

    @app.on("typing")
    async def typing(ctx: Context) -> dict[str, Any]:
        return {"type": "typed"}

    @app.on("chat")
    async def chat(ctx: Context) -> dict[str, Any]:
        return {"type": "chatted"}

    return app


async def test_rate_limit_answers_rate_limited_with_retry_after() -> None:
    """Past the burst a message answers ``rate_limited`` with retry_after and is not handled."""
    limits = RateLimits(per_connection=RateLimit(rate=10.0, burst=3), max_strikes=None)
    app = App(rate_limits=limits)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        for n in range(3):
            assert await a.request({"type": "ping", "id": n}) == {"type": "pong", "id": n}
        reply = await a.request({"type": "join", "room": "r", "id": 3})
        assert (reply["type"], reply["code"], reply["ref"]) == ("error", "rate_limited", 3)
        assert 0.0 < reply["retry_after"] <= 0.1
        assert "r" not in app.hub.rooms
        await asyncio.sleep(reply["retry_after"])
        assert (await a.request({"type": "join", "room": "r"}))["type"] == "joined"
    assert app.stats["rate_limited"] == 1


async def test_sustained_abuse_closes_1008() -> None:
    """A client that ignores ``rate_limited`` is closed with 1008 after max_strikes refusals."""
    limits = RateLimits(per_connection=RateLimit(rate=0.1, burst=1), max_strikes=3)
    app = App(rate_limits=limits)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        for n in range(4):
            await a.send({"type": "ping", "id": n})
        before = await a.expect_closed(1008)
        assert before[0] == {"type": "pong", "id": 0}
        assert [(m["code"], m["ref"]) for m in before[1:]] == [
            ("rate_limited", n) for n in (1, 2, 3)
        ]
        assert a.ws.close_reason == "rate limit exceeded repeatedly"


async def test_per_type_limit_applies_to_its_type_only() -> None:
    """A ``per_type`` limit refuses that type while other types still pass."""
    limits = RateLimits(per_type={"typing": RateLimit(rate=0.1, burst=2)}, max_strikes=None)
    app = typing_app(rate_limits=limits)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        assert await a.request({"type": "typing"}) == {"type": "typed"}
        assert await a.request({"type": "typing"}) == {"type": "typed"}
        reply = await a.request({"type": "typing"})
        assert (reply["type"], reply["code"], reply["ref"]) == ("error", "rate_limited", "typing")
        assert reply["retry_after"] > 1.0
        for _ in range(5):
            assert await a.request({"type": "chat"}) == {"type": "chatted"}
        await a.barrier()


async def test_rate_limits_are_per_connection() -> None:
    """One connection's exhausted bucket does not limit another connection."""
    limits = RateLimits(per_connection=RateLimit(rate=0.1, burst=1), max_strikes=None)
    app = App(rate_limits=limits)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a, connect(server) as b:
        await a.request({"type": "ping"})
        assert (await a.request({"type": "ping"}))["code"] == "rate_limited"
        assert await b.request({"type": "ping"}) == {"type": "pong"}


async def test_idle_connection_is_closed_4101_while_pinging_one_stays() -> None:
    """Without messages for idle_timeout a connection closes with 4101 ``idle``; pings keep one."""
    app = App(idle_timeout=0.4)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as busy:
        async with connect(server) as idle:
            stop = asyncio.Event()

            async def keep_alive() -> int:
                pings = 0
                while not stop.is_set():
                    await busy.request({"type": "ping"})
                    pings += 1
                    await asyncio.sleep(0.05)
                return pings

            pinger = asyncio.create_task(keep_alive())
            start = time.monotonic()
            assert await idle.expect_closed(4101) == []
            elapsed = time.monotonic() - start
            stop.set()
            assert await pinger >= 5
            assert idle.ws.close_reason == "idle"
            assert 0.35 <= elapsed < 1.5
        await busy.barrier()
        assert time.monotonic() - start > 0.4
    assert app.stats["idle_closed"] == 1


async def test_message_larger_than_max_message_size_closes_1009() -> None:
    """A message above max_message_size closes the connection with 1009."""
    app = App(max_message_size=1024)
    async with app.serve("127.0.0.1", 0) as server, connect(server, compression=None) as a:
        reply = await a.request({"type": "ping", "pad": "x" * 900})
        assert reply == {"type": "pong"}
        await a.send({"type": "ping", "pad": "x" * 2000})
        assert await a.expect_closed(1009) == []


async def test_max_connections_refuses_the_upgrade_with_503() -> None:
    """Past max_connections the opening handshake answers HTTP 503; a freed slot is reusable."""
    app = App(max_connections=2)
    gone = track_disconnects(app)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        async with connect(server) as b:
            with pytest.raises(InvalidStatus) as info:
                async with connect(server):
                    pass
            assert info.value.response.status_code == 503
            b_id = b.id
        assert await next_disconnect(gone) == b_id
        async with connect(server) as c:
            assert c.id not in (a.id, b_id)


async def test_slow_consumer_is_closed_4001_with_bounded_buffer() -> None:
    """A client that stops reading is closed with 4001; its backlog never passes the limit."""
    limit = 64 * 1024
    app = App(max_outgoing_bytes=limit, rate_limits=None)
    envelope = {"type": "blob", "data": "x" * 4000}
    size = len(encode(envelope))
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server, compression=None) as slow,
        connect(server, compression=None) as fast,
    ):
        session = slow.session(app)
        slow.ws.transport.pause_reading()
        peak = sent = 0
        while not session.closing and sent < 50_000:
            await app.emit_connection(session.id, envelope)
            sent += 1
            peak = max(peak, session.ws.buffered_amount)
            if sent % 8 == 0:
                await asyncio.sleep(0)  # let the transport hand bytes to the socket
        assert session.closing, f"still open after {sent} messages"
        assert limit - size - 16 < peak <= limit
        assert app.stats["slow_consumers"] == 1
        await fast.barrier()

        slow.ws.transport.resume_reading()
        before = await slow.expect_closed(4001, timeout=10)
        # What was queued before the close still arrives; the message that would
        # have passed the limit was not queued.
        assert before == [envelope] * (sent - 1)
        assert slow.ws.close_reason == f"slow consumer: more than {limit} bytes queued"


async def test_slow_room_member_does_not_hold_back_the_others() -> None:
    """Room fan-out closes the slow member with 4001 and keeps delivering to the fast one."""
    limit = 32 * 1024
    app = App(max_outgoing_bytes=limit, rate_limits=None)
    envelope = {"type": "blob", "data": "y" * 2000}
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server, compression=None) as slow,
        connect(server, compression=None) as fast,
    ):
        await slow.join("r")
        await fast.join("r")
        assert (await slow.recv())["type"] == "userJoined"
        session = slow.session(app)
        slow.ws.transport.pause_reading()
        sent = 0
        while not session.closing:
            await app.emit_room("r", envelope)
            assert await fast.recv() == envelope
            sent += 1
            assert sent < 50_000, "the slow member was never closed"
        await app.emit_room("r", {"type": "after"})
        assert await fast.recv() == {"type": "after"}

        slow.ws.transport.resume_reading()
        assert await slow.expect_closed(4001, timeout=10) == [envelope] * (sent - 1)
        assert await fast.recv() == {"type": "userLeft", "room": "r", "user": slow.id}
