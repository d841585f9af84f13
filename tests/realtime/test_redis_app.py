"""Two App nodes sharing one redis-server: rooms, channels, a Redis outage, a node's death.

Each node is an App with its own RedisBroker and its own loopback port; the
clients are plain `websockets` clients (tests/realtime/conftest.py), so what is
judged is the wire protocol a browser would see.  Waits are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tidewire.realtime import App, Context
from tidewire.realtime.brokers import RedisBroker
from tidewire.transport import Server

from .conftest import Peer, connect
from .redis_server import RedisServer, running_redis, unique_prefix
from .test_redis_broker import until


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    """One redis-server for the tests that do not break it."""
    with running_redis() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone, to kill and restart."""
    with running_redis() as server:
        yield server


def make_app(url: str, prefix: str, name: str) -> App:
    """A node: an App on RedisBroker with a ``say`` handler that emits to a room."""
    broker = RedisBroker(
        url,
        prefix=prefix,
        reconnect_base=0.05,
        reconnect_cap=0.3,
        keepalive=1.0,
        command_timeout=1.0,
        start_timeout=2.0,
    )
    app = App(broker=broker)

    @app.on("say", fields={"room": str, "text": str})
    async def say(ctx: Context) -> None:
        await ctx.emit_room(ctx.message["room"], "said", text=ctx.message["text"], node=name)

    return app


@contextlib.asynccontextmanager
async def two_nodes(url: str) -> AsyncIterator[tuple[App, Server, App, Server]]:
    """Nodes A and B on one prefix, each serving on its own port."""
    prefix = unique_prefix("app")
    app_a, app_b = make_app(url, prefix, "A"), make_app(url, prefix, "B")
    async with app_a.serve("127.0.0.1", 0) as server_a, app_b.serve("127.0.0.1", 0) as server_b:
        yield app_a, server_a, app_b, server_b


def broker_of(app: App) -> RedisBroker:
    """The app's RedisBroker."""
    assert isinstance(app.broker, RedisBroker)
    return app.broker


async def subscribe(peer: Peer, channel: str, **extra: Any) -> dict[str, Any]:
    """Subscribe and return the ``subscribed`` reply."""
    reply = await peer.request({"type": "subscribe", "channel": channel, **extra})
    assert reply["type"] == "subscribed" and reply["channel"] == channel, reply
    return reply


async def test_a_room_spans_both_nodes(shared_redis: RedisServer) -> None:
    """Clients of one room on nodes A and B both get emit_room from either node."""
    async with (
        two_nodes(shared_redis.url) as (_, server_a, _, server_b),
        connect(server_a) as pa,
        connect(server_b) as pb,
    ):
        await pa.join("lobby")
        await pb.join("lobby")
        assert await pa.recv() == {"type": "userJoined", "room": "lobby", "user": pb.id}
        await pa.send({"type": "say", "room": "lobby", "text": "from A"})
        await pb.send({"type": "say", "room": "lobby", "text": "from B"})
        said = {"type": "said", "node": "A", "text": "from A"}
        said_b = {"type": "said", "node": "B", "text": "from B"}
        for peer in (pa, pb):
            got = [await peer.recv(), await peer.recv()]
            assert sorted(got, key=str) == sorted([said, said_b], key=str)
            await peer.barrier()


async def test_a_publication_on_a_reaches_a_subscriber_on_b(shared_redis: RedisServer) -> None:
    """A channel publish on node A reaches a subscriber on node B with offsets 1, 2, 3."""
    async with (
        two_nodes(shared_redis.url) as (_, server_a, _, server_b),
        connect(server_a) as pa,
        connect(server_b) as sb,
    ):
        first = await subscribe(sb, "news")
        assert first["offset"] == 0
        for n in range(3):
            reply = await pa.request(
                {"type": "publish", "channel": "news", "payload": {"n": n}, "id": n}
            )
            assert reply == {"type": "published", "channel": "news", "offset": n + 1, "id": n}
        for n in range(3):
            assert await sb.recv() == {
                "type": "publish",
                "channel": "news",
                "payload": {"n": n},
                "offset": n + 1,
            }
        again = await subscribe(pa, "news", since={"epoch": first["epoch"], "offset": 1})
        assert again["recovered"] is True and again["epoch"] == first["epoch"]
        assert [p["offset"] for p in again["publications"]] == [2, 3]
        await sb.barrier()


async def test_redis_outage_errors_then_a_new_epoch(own_redis: RedisServer) -> None:
    """Redis killed: publish gets broker_unavailable; restarted empty: a new epoch, told to all."""
    async with (
        two_nodes(own_redis.url) as (app_a, server_a, app_b, server_b),
        connect(server_a) as pa,
        connect(server_b) as sb,
    ):
        first = await subscribe(sb, "news")
        await pa.request({"type": "publish", "channel": "news", "payload": 1, "id": 1})
        assert (await sb.recv())["offset"] == 1
        own_redis.kill()
        await until(lambda: not broker_of(app_a).healthy, "node A noticed the outage")
        error = await pa.request({"type": "publish", "channel": "news", "payload": 2, "id": 2})
        assert (error["type"], error["code"], error["ref"]) == ("error", "broker_unavailable", 2)
        assert "Redis is unavailable" in error["message"]
        own_redis.start()
        await until(
            lambda: broker_of(app_a).healthy and broker_of(app_b).healthy, "both nodes are back"
        )
        notice = await sb.recv()
        assert notice["type"] == "subscribed" and notice["recovered"] is False
        assert notice["epoch"] != first["epoch"] and notice["offset"] == 0
        stale = await subscribe(pa, "news", since={"epoch": first["epoch"], "offset": 1})
        assert (stale["recovered"], stale["epoch"], stale["publications"]) == (
            False,
            notice["epoch"],
            [],
        )
        await pa.request({"type": "publish", "channel": "news", "payload": 3, "id": 3})
        assert (await sb.recv())["offset"] == 1
        assert (await pa.recv())["offset"] == 1


async def test_a_dead_nodes_client_resumes_on_the_other_without_loss(
    shared_redis: RedisServer,
) -> None:
    """Node A dies mid-stream; its client resubscribes on B with since and misses nothing."""
    total = 80
    async with two_nodes(shared_redis.url) as (app_a, server_a, app_b, server_b):
        received: list[int] = []
        payloads: list[Any] = []
        async with connect(server_a) as sa:
            position = await subscribe(sa, "feed")

            async def publish_all() -> None:
                for n in range(total):
                    await app_b.publish("feed", {"n": n})
                    await asyncio.sleep(0.003)

            publisher = asyncio.get_running_loop().create_task(publish_all())
            while len(received) < 10:
                envelope = await sa.recv()
                received.append(envelope["offset"])
                payloads.append(envelope["payload"])
            for ws in list(server_a.connections):  # the node dies: no close frames
                assert ws.transport is not None
                ws.transport.abort()
            server_a.close()
            await app_a.close()
            with contextlib.suppress(ConnectionClosed):
                while True:
                    envelope = await sa.recv()
                    received.append(envelope["offset"])
                    payloads.append(envelope["payload"])
        async with connect(server_b) as sb:
            since = {"epoch": position["epoch"], "offset": received[-1]}
            reply = await subscribe(sb, "feed", since=since)
            assert reply["recovered"] is True and reply["epoch"] == position["epoch"]
            for envelope in reply["publications"]:
                received.append(envelope["offset"])
                payloads.append(envelope["payload"])
            while received[-1] < total:
                envelope = await sb.recv()
                assert envelope["type"] == "publish", envelope
                received.append(envelope["offset"])
                payloads.append(envelope["payload"])
            await asyncio.wait_for(publisher, 5.0)
            await sb.barrier()
        assert received == list(range(1, total + 1))
        assert payloads == [{"n": n} for n in range(total)]


async def test_subscribe_with_since_during_publishes_is_gap_and_duplicate_free(
    shared_redis: RedisServer,
) -> None:
    """Subscribing with since on A while B publishes nonstop: every offset once, in order."""
    async with two_nodes(shared_redis.url) as (app_a, server_a, app_b, _):
        for round_ in range(4):
            channel = f"race-{round_}"
            for n in range(10):
                await app_b.publish(channel, n)
            epoch, _ = await app_b.broker.position(channel, app_b.clock())
            stop = asyncio.Event()

            async def publish_until_stopped(
                channel: str = channel, stop: asyncio.Event = stop
            ) -> int:
                count = 10
                while not stop.is_set() or count < 60:
                    await app_b.publish(channel, count)
                    count += 1
                return count

            publisher = asyncio.get_running_loop().create_task(publish_until_stopped())
            async with connect(server_a) as peer:
                await asyncio.sleep(0.002 * round_)
                reply = await subscribe(peer, channel, since={"epoch": epoch, "offset": 5})
                assert reply["recovered"] is True
                offsets = [p["offset"] for p in reply["publications"]]
                stop.set()
                last = await asyncio.wait_for(publisher, 5.0)
                while (offsets[-1] if offsets else reply["offset"]) < last:
                    envelope = await peer.recv()
                    assert envelope["type"] == "publish", envelope
                    offsets.append(envelope["offset"])
                await peer.barrier()
            assert offsets == list(range(6, last + 1)), f"round {round_}: {offsets}"
