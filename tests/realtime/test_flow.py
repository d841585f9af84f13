"""Slow-consumer policies (disconnect, drop, latest), batching, and recovery across a gap."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tidewire.realtime import App, Client
from tidewire.realtime.flow import Policy, SlowConsumerPolicy, batch_text, latest_key, type_of
from tidewire.realtime.wire import encode

from .conftest import connect


def test_type_of_reads_the_type_without_parsing() -> None:
    """encode() writes type first, so type_of() finds it; other texts give None."""
    assert type_of(encode({"room": "r", "type": "chat"})) == "chat"
    assert encode({"room": "r", "type": "chat"}).startswith('{"type":"chat"')
    assert type_of('{"room":"r"}') is None
    assert type_of('{"type":"a\\"b"}') is None


def test_latest_key_uses_type_and_fields() -> None:
    """A latest key is the type plus the named fields' values."""
    policy = SlowConsumerPolicy(Policy.LATEST, ("symbol",))
    a = latest_key(encode({"type": "tick", "symbol": "A", "price": 1}), policy)
    b = latest_key(encode({"type": "tick", "symbol": "A", "price": 2}), policy)
    c = latest_key(encode({"type": "tick", "symbol": "B", "price": 2}), policy)
    assert a == b != c
    assert latest_key('{"type":"x"}', SlowConsumerPolicy(Policy.LATEST)) == "x"


def test_batch_text_is_one_envelope() -> None:
    """batch_text joins encoded envelopes into one batch without re-encoding them."""
    assert batch_text(['{"type":"a"}', '{"type":"b"}']) == (
        '{"type":"batch","messages":[{"type":"a"},{"type":"b"}]}'
    )


def test_policy_resolution_most_specific_wins() -> None:
    """Type-and-room beats type, type beats room, room beats the app default."""
    app = App(slow_consumer="drop")
    app.slow_consumer_policy("latest", type="tick", key=("symbol",))
    app.slow_consumer_policy("disconnect", room="vip")
    app.slow_consumer_policy("drop", room="vip", type="tick")
    assert app.policy_for(None, "chat").kind is Policy.DROP
    assert app.policy_for("vip", "chat").kind is Policy.DISCONNECT
    assert app.policy_for("other", "tick") == SlowConsumerPolicy(Policy.LATEST, ("symbol",))
    assert app.policy_for("vip", "tick").kind is Policy.DROP


async def flood(app: App, room: str, envelopes: list[dict[str, Any]], rounds: int) -> None:
    """Emit ``envelopes`` to ``room`` ``rounds`` times, yielding now and then."""
    for i in range(rounds):
        for envelope in envelopes:
            await app.emit_room(room, envelope)
        if i % 4 == 0:
            await asyncio.sleep(0)


async def test_drop_policy_keeps_memory_bounded_and_the_connection_open() -> None:
    """Past the limit a never-reading client's messages are dropped and counted, not queued."""
    limit = 64 * 1024
    app = App(max_outgoing_bytes=limit, rate_limits=None, slow_consumer="drop")
    blob = {"type": "blob", "data": "z" * 20_000}
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server, compression=None) as slow,
        connect(server, compression=None, max_queue=None) as fast,
    ):
        await slow.join("r")
        await fast.join("r")
        session = slow.session(app)
        slow.ws.transport.pause_reading()
        peak = 0
        for _ in range(600):  # 12 MB, far past the kernel buffers and the limit
            await app.emit_room("r", blob)
            peak = max(peak, session.ws.buffered_amount)
            await asyncio.sleep(0)
        assert session.drops > 0 and app.stats["dropped"] == session.drops  # the fast one: none
        assert peak <= limit
        assert not session.closing
        received = 0
        with contextlib.suppress(TimeoutError):
            while True:
                message = await fast.recv(timeout=0.5)
                received += message["type"] == "blob"
        assert received == 600


async def test_latest_policy_keeps_only_the_newest_per_key() -> None:
    """A congested client gets, once it reads again, the newest tick per symbol, in order."""
    app = App(rate_limits=None)
    app.slow_consumer_policy("latest", type="tick", key=("symbol",))
    async with app.serve("127.0.0.1", 0) as server, connect(server, compression=None) as slow:
        await slow.join("t")
        session = slow.session(app)
        slow.ws.transport.pause_reading()
        big = {"type": "tick", "symbol": "FILL", "pad": "p" * 60_000}
        rounds = 0
        while not session.ws.write_paused and rounds < 2000:
            await app.emit_room("t", big)
            await asyncio.sleep(0)
            rounds += 1
        assert session.ws.write_paused
        for price in range(200):
            for symbol in ("A", "B", "C"):
                await app.emit_room("t", {"type": "tick", "symbol": symbol, "price": price})
        assert len(session.held) <= 4  # A, B, C and at most one FILL
        assert session.drops >= 3 * 199
        slow.ws.transport.resume_reading()
        latest: dict[str, int] = {}
        async with asyncio.timeout(10):
            while len(latest) < 3:
                message = await slow.recv(timeout=5)
                if message["symbol"] != "FILL":
                    assert message["symbol"] not in latest  # each symbol exactly once
                    latest[message["symbol"]] = message["price"]
        assert latest == {"A": 199, "B": 199, "C": 199}
        await slow.barrier()


async def test_batching_groups_messages_within_the_interval() -> None:
    """With batch_interval, messages within it arrive in one batch, in order."""
    app = App(batch_interval=0.05, rate_limits=None)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        for i in range(5):
            await app.emit_connection(a.id, {"type": "n", "i": i})
        batch = await a.recv()
        assert batch == {"type": "batch", "messages": [{"type": "n", "i": i} for i in range(5)]}


async def test_batching_flushes_early_at_max_batch_bytes() -> None:
    """A batch reaching max_batch_bytes is sent without waiting for the interval."""
    app = App(batch_interval=10.0, max_batch_bytes=1000, rate_limits=None)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        for i in range(3):
            await app.emit_connection(a.id, {"type": "n", "i": i, "pad": "x" * 400})
        batch = await a.recv(timeout=2)
        assert [m["i"] for m in batch["messages"]] == [0, 1, 2]


async def test_client_recovers_1000_messages_published_during_a_5_s_gap() -> None:
    """A Client away for 5 s while 1,000 messages are published gets all, in order, once."""
    app = App(history_size=1000, rate_limits=None)
    gate = asyncio.Event()
    gate.set()

    @app.on_connect
    async def hold(session: Any) -> None:
        await gate.wait()

    async with app.serve("127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"
        seen: list[int] = []
        async with Client(url, reconnect_base=0.05, reconnect_cap=0.2) as client:
            await client.subscribe("feed", lambda pub: seen.append(pub["payload"]))
            await app.publish("feed", 0)
            async with asyncio.timeout(5):
                while seen != [0]:
                    await asyncio.sleep(0.01)
            gate.clear()  # reconnects wait at the door until the gap is over
            session = next(iter(app.hub.sessions.values()))
            session.fail(4000, "gap")
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(1, 1001):
                await app.publish("feed", i)
                if i % 200 == 0:
                    await asyncio.sleep(1.0)  # 5 x 1 s: a 5-second gap
            assert loop.time() - start >= 5.0
            gate.set()
            async with asyncio.timeout(10):
                while len(seen) < 1001:
                    await asyncio.sleep(0.02)
        assert seen == list(range(1001))


async def test_client_unpacks_batches() -> None:
    """tidewire.Client hands each message of a batch to its handlers, in order."""
    app = App(batch_interval=0.05, rate_limits=None)
    async with app.serve("127.0.0.1", 0) as server:
        got: list[int] = []
        async with Client(f"ws://127.0.0.1:{server.port}/ws") as client:
            client.on("n", lambda message: got.append(message["i"]))
            session = next(iter(app.hub.sessions.values()))
            for i in range(4):
                session.emit("n", i=i)
            async with asyncio.timeout(5):
                while len(got) < 4:
                    await asyncio.sleep(0.01)
        assert got == [0, 1, 2, 3]
