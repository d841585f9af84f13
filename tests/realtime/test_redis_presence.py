"""Cluster-wide presence on Redis: shared members, once-only events, dead nodes, outages.

Brokers and App nodes share one redis-server under a unique prefix; a node that
dies without cleaning up is a child process killed with SIGKILL.  Presence TTLs
are small (TTL s, refreshed every REFRESH s) so expiry is seen within seconds.
Waits are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from tidewire.errors import BrokerError
from tidewire.realtime import App, HMACVerifier
from tidewire.realtime.brokers import RedisBroker
from tidewire.realtime.brokers.redis_presence import SWEEP_BATCH
from tidewire.realtime.presence import Member, PresenceUpdate
from tidewire.transport import Server

from .broker_contract import RecordingNode
from .conftest import SECRET, connect, user_token
from .httpkit import ADMIN_TOKEN, http
from .redis_server import RedisServer, _die_with_parent, running_redis, unique_prefix
from .test_redis_broker import until

#: Presence TTL and refresh of every node here (the defaults are 30 s and 10 s).
TTL, REFRESH = 1.0, 0.25
#: Allowance on top of the documented bound (TTL + REFRESH): scheduling, signals.
SLACK = 1.0

#: A node in a child process: an App on RedisBroker; prints its port, then serves.
NODE = """
import asyncio, sys
from tidewire.realtime import App
from tidewire.realtime.brokers import RedisBroker
from tidewire.realtime.brokers.redis_presence import SWEEP_BATCH

async def main(url, prefix, ttl, refresh):
    broker = RedisBroker(
        url, prefix=prefix, presence_ttl=float(ttl), presence_refresh=float(refresh)
    )
    server = await App(broker=broker).serve("127.0.0.1", 0)
    print(server.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    """One redis-server for the tests that do not break it."""
    with running_redis() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone, to kill, pause or restart."""
    with running_redis() as server:
        yield server


def broker(url: str, prefix: str, **options: Any) -> RedisBroker:
    """A RedisBroker with fast presence expiry, reconnects and timeouts."""
    settings: dict[str, Any] = {
        "prefix": prefix,
        "presence_ttl": TTL,
        "presence_refresh": REFRESH,
        "reconnect_base": 0.05,
        "reconnect_cap": 0.3,
        "keepalive": 1.0,
        "command_timeout": 1.0,
        "start_timeout": 2.0,
    }
    settings.update(options)
    return RedisBroker(url, **settings)


@contextlib.asynccontextmanager
async def started(*brokers: RedisBroker) -> AsyncIterator[list[RecordingNode]]:
    """Start each broker on its own RecordingNode; close them all at the end."""
    nodes = [RecordingNode() for _ in brokers]
    try:
        for b, node in zip(brokers, nodes, strict=True):
            await b.start(node)
        yield nodes
    finally:
        for b in brokers:
            await b.close()


def listen(b: RedisBroker) -> list[tuple[str, str, bool, int]]:
    """Record the presence changes ``b`` reports to its listener."""
    changes: list[tuple[str, str, bool, int]] = []
    b.on_presence_change = lambda *change: changes.append(change)
    return changes


@contextlib.asynccontextmanager
async def serving(app: App) -> AsyncIterator[Server]:
    """``app`` served on a free loopback port."""
    async with app.serve("127.0.0.1", 0) as server:
        yield server


@contextlib.asynccontextmanager
async def node_process(url: str, prefix: str) -> AsyncIterator[tuple[Any, Server]]:
    """A node in a child process; yields the process and a stand-in Server with its port."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        NODE,
        url,
        prefix,
        str(TTL),
        str(REFRESH),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        line = await asyncio.wait_for(process.stdout.readline(), 10.0)
        if not line:
            pytest.fail(f"the node process did not start: {(await process.stderr.read())!r}")

        class Port:
            port = int(line)

        yield process, cast(Server, Port())
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


# ------------------------------------------------------------------- brokers


async def test_nodes_share_presence_and_decide_first_and_last_together(
    shared_redis: RedisServer,
) -> None:
    """One user with a connection on each node: one first join, one last leave, one list."""
    prefix = unique_prefix("presence")
    a, b = broker(shared_redis.url, prefix), broker(shared_redis.url, prefix)
    async with started(a, b):
        assert await a.presence_join("lobby", "alice", "a1", {"on": "a"}) == PresenceUpdate(
            True, 1, "alice"
        )
        assert (await b.presence_join("lobby", "alice", "b1", {"on": "b"})).changed is False
        assert (await b.presence_join("lobby", "bob", "b2", {})).changed is True
        listing = await a.presence_members("lobby")
        assert (listing.count, listing.connections) == (2, 3)
        assert listing.members[0].user == "alice" and listing.members[0].connections == 2
        assert listing.members[0].meta in ({"on": "a"}, {"on": "b"})
        assert await b.presence_rooms() == [("lobby", 2)]
        assert await a.presence_leave("lobby", "a1") == PresenceUpdate(False, 2, "alice")
        assert await b.presence_leave("lobby", "b1") == PresenceUpdate(True, 1, "alice")
        assert (await a.presence_members("lobby")).names == ["bob"]


async def test_the_key_layout(shared_redis: RedisServer) -> None:
    """Presence keys as docs/scale-out.md lists them; the node's expiry is TTL ahead."""
    prefix = unique_prefix("layout")
    a = broker(shared_redis.url, prefix)
    client = aioredis.Redis.from_url(shared_redis.url, decode_responses=True)
    try:
        async with started(a):
            await a.presence_join("lobby", "alice", "c1", {"k": 1})
            base, node = f"{prefix}presence:{{lobby}}:", a.node_id
            assert a.presence_key("lobby", "members") == base + "members"
            assert await client.hgetall(base + "members") == {"alice": "1"}
            assert {
                k: json.loads(v) for k, v in (await client.hgetall(base + "conns")).items()
            } == {"c1": ["alice", node, {"k": 1}]}
            assert await client.smembers(f"{base}on:{node}") == {"c1"}
            assert await client.hgetall(f"{prefix}presence:rooms") == {"lobby": "1"}
            assert await client.smembers(f"{prefix}node:{node}:rooms") == {"lobby"}
            seconds, micros = await client.time()
            now_ms = seconds * 1000 + micros // 1000
            expiry = await client.zscore(f"{prefix}nodes", node)
            assert expiry is not None and now_ms < expiry <= now_ms + TTL * 1000
            await a.presence_leave("lobby", "c1")
            assert await client.keys(f"{prefix}presence:{{lobby}}:*") == []
            assert await client.hgetall(f"{prefix}presence:rooms") == {}
    finally:
        await client.aclose()


async def test_a_closed_node_is_retired_and_the_others_announce_its_leftovers(
    shared_redis: RedisServer,
) -> None:
    """close() expires the node at once: the next sweep removes what it held and says so."""
    prefix = unique_prefix("retire")
    a, b = broker(shared_redis.url, prefix), broker(shared_redis.url, prefix)
    changes = listen(b)
    async with started(a, b):
        await a.presence_join("lobby", "alice", "a1", {})
        await b.presence_join("lobby", "bob", "b1", {})
        await a.close()  # without leaving: as a node whose clients could not be told
        assert (await b.presence_members("lobby")).names == ["bob"]
        assert changes == [("lobby", "alice", False, 1)]


async def test_a_big_dead_node_is_swept_in_batches(shared_redis: RedisServer) -> None:
    """2,500 connections of a retired node: a read sweeps SWEEP_BATCH, a refresh the rest."""
    prefix = unique_prefix("batches")
    a, b = broker(shared_redis.url, prefix), broker(shared_redis.url, prefix)
    changes = listen(b)
    async with started(a, b):
        await asyncio.gather(
            *(a.presence_join(f"r{i % 25}", f"u{i}", f"c{i}", {}) for i in range(2500))
        )
        assert sum(count for _, count in await b.presence_rooms()) == 2500
        await a.close()
        remaining = sum(count for _, count in await b.presence_rooms())
        assert remaining == 2500 - SWEEP_BATCH and len(changes) == SWEEP_BATCH
        await b.refresh_presence()
        assert await b.presence_rooms() == [] and len(changes) == 2500
        assert not any(joined for _, _, joined, _ in changes)
        assert sorted(count for _, _, _, count in changes) == sorted(list(range(100)) * 25)


async def test_a_cancelled_join_is_repaired_by_the_refresh(own_redis: RedisServer) -> None:
    """A join cancelled while Redis hangs may still run; the next refresh removes it."""
    prefix = unique_prefix("repair")
    a = broker(own_redis.url, prefix, keepalive=5.0)
    async with started(a):
        await a.presence_join("warm", "ghost", "g0", {})  # a pooled connection, the script loaded
        await a.presence_leave("warm", "g0")
        own_redis.pause()
        try:
            join = asyncio.ensure_future(a.presence_join("lobby", "ghost", "g1", {}))
            await asyncio.sleep(0.2)
            join.cancel()
            with contextlib.suppress(asyncio.CancelledError, BrokerError):
                await join
        finally:
            own_redis.resume()
        stray = await a.presence_members("lobby")
        assert stray.names == ["ghost"]  # Redis ran the script it had already received
        await a.refresh_presence()
        assert (await a.presence_members("lobby")).count == 0


async def test_joins_queued_behind_a_hung_redis_fail_together(own_redis: RedisServer) -> None:
    """Five joins to one room while Redis hangs all fail after one command_timeout, not five."""
    a = broker(own_redis.url, unique_prefix("queued"), keepalive=5.0, command_timeout=0.5)
    async with started(a):
        await a.presence_join("warm", "w", "w0", {})
        own_redis.pause()
        try:
            started_at = time.monotonic()
            results = await asyncio.gather(
                *(a.presence_join("lobby", f"u{i}", f"c{i}", {}) for i in range(5)),
                return_exceptions=True,
            )
            elapsed = time.monotonic() - started_at
        finally:
            own_redis.resume()
        assert all(isinstance(result, BrokerError) for result in results), results
        assert elapsed < 1.5, elapsed
        await a.refresh_presence()
        assert (await a.presence_members("lobby")).count == 0


async def test_presence_comes_back_after_redis_restarts_empty(own_redis: RedisServer) -> None:
    """Redis restarted without its data: each node registers its connections again."""
    prefix = unique_prefix("restart")
    a = broker(own_redis.url, prefix)
    changes = listen(a)
    async with started(a):
        await a.presence_join("lobby", "alice", "a1", {"x": 1})
        own_redis.restart()
        await until(lambda: ("lobby", "alice", True, 1) in changes, "alice registered again")
        listing = await a.presence_members("lobby")
        assert listing.members == (Member("alice", 1, {"x": 1}),)


# ---------------------------------------------------------------------- apps


def node_app(url: str, prefix: str, **options: Any) -> App:
    """An App node on a fast-expiring RedisBroker."""
    return App(broker=broker(url, prefix), **options)


async def test_members_and_presence_span_nodes(shared_redis: RedisServer) -> None:
    """A on node 1, B on node 2: each in the other's joined, presence, rooms.list, /api/presence."""
    prefix = unique_prefix("span")
    app_a = node_app(shared_redis.url, prefix)
    app_b = node_app(shared_redis.url, prefix, admin_token=ADMIN_TOKEN)
    async with (
        serving(app_a) as server_a,
        serving(app_b) as server_b,
        connect(server_a) as pa,
        connect(server_b) as pb,
    ):
        assert (await pa.join("lobby"))["members"] == [pa.id]
        joined = await pb.join("lobby")
        assert (joined["count"], joined["members"]) == (2, sorted([pa.id, pb.id]))
        assert await pa.recv() == {"type": "userJoined", "room": "lobby", "user": pb.id}
        for peer in (pa, pb):
            result = (await peer.call("presence", {"room": "lobby"}))["result"]
            assert sorted(m["user"] for m in result) == sorted([pa.id, pb.id])
            rooms = (await peer.call("rooms.list", call_id=2))["result"]
            assert rooms == [{"room": "lobby", "members": 2}]
        api = (await http(server_b, "GET", "/api/presence/lobby", token=ADMIN_TOKEN)).json()
        assert (api["count"], api["connections"]) == (2, 2)
        assert sorted(m["user"] for m in api["members"]) == sorted([pa.id, pb.id])
        await pb.request({"type": "leave", "room": "lobby"})
        assert await pa.recv() == {"type": "userLeft", "room": "lobby", "user": pb.id}
        assert (await pa.call("presence", {"room": "lobby"}, call_id=3))["result"] == [
            {"user": pa.id, "connections": 1, "meta": {}}
        ]


async def test_one_user_on_two_nodes_joins_once_and_leaves_after_the_last(
    shared_redis: RedisServer,
) -> None:
    """Alice on both nodes: one userJoined; userLeft only when her last connection goes."""
    prefix = unique_prefix("twice")
    apps = [
        node_app(shared_redis.url, prefix, auth=HMACVerifier(SECRET)),
        node_app(shared_redis.url, prefix, auth=HMACVerifier(SECRET)),
    ]
    alice = user_token("alice")
    async with (
        serving(apps[0]) as server_a,
        serving(apps[1]) as server_b,
        connect(server_a, token=user_token("olga")) as observer,
        connect(server_a, token=alice) as alice_a,
    ):
        await observer.join("lobby")
        await alice_a.join("lobby")
        assert await observer.recv() == {"type": "userJoined", "room": "lobby", "user": "alice"}
        async with connect(server_b, token=alice) as alice_b:
            joined = await alice_b.join("lobby")
            assert (joined["count"], joined["members"]) == (2, ["alice", "olga"])
            await alice_a.request({"type": "leave", "room": "lobby"})
            await observer.barrier()  # no userJoined for the second tab, no userLeft yet
            presence = (await observer.call("presence", {"room": "lobby"}))["result"]
            assert [(m["user"], m["connections"]) for m in presence] == [("alice", 1), ("olga", 1)]
        assert await observer.recv() == {"type": "userLeft", "room": "lobby", "user": "alice"}
        await observer.barrier()


async def test_a_killed_nodes_members_disappear_within_the_bound(
    shared_redis: RedisServer,
) -> None:
    """A node SIGKILLed: its client leaves everyone's presence within TTL + REFRESH."""
    prefix = unique_prefix("killed")
    app = node_app(shared_redis.url, prefix)
    async with (
        serving(app) as server,
        connect(server) as observer,
        node_process(shared_redis.url, prefix) as (process, doomed),
    ):
        await observer.join("lobby")
        async with connect(doomed) as ghost:
            joined = await ghost.join("lobby")
            assert joined["members"] == sorted([observer.id, ghost.id])
            assert await observer.recv() == {
                "type": "userJoined",
                "room": "lobby",
                "user": ghost.id,
            }
            process.kill()
            killed = time.monotonic()
            await process.wait()
            left = await observer.recv(timeout=TTL + REFRESH + SLACK)
            elapsed = time.monotonic() - killed
            assert left == {"type": "userLeft", "room": "lobby", "user": ghost.id}
            assert elapsed <= TTL + REFRESH + SLACK, elapsed
            result = (await observer.call("presence", {"room": "lobby"}))["result"]
            assert result == [{"user": observer.id, "connections": 1, "meta": {}}]
            rooms = (await observer.call("rooms.list", call_id=2))["result"]
            assert rooms == [{"room": "lobby", "members": 1}]
            with contextlib.suppress(Exception):
                await ghost.ws.close()


async def test_join_during_a_redis_outage_fails_cleanly(own_redis: RedisServer) -> None:
    """Redis down: join answers broker_unavailable and the session is in no room; then it works."""
    app = node_app(own_redis.url, unique_prefix("outage"))
    async with serving(app) as server, connect(server) as peer:
        own_redis.kill()
        assert isinstance(app.broker, RedisBroker)
        redis_broker = app.broker
        await until(lambda: not redis_broker.healthy, "the node noticed the outage")
        error = await peer.request({"type": "join", "room": "lobby", "id": 7})
        assert (error["type"], error["code"], error["ref"]) == ("error", "broker_unavailable", 7)
        assert peer.session(app).rooms == set() and app.hub.members("lobby") == []
        failed = await peer.call("rooms.list")
        assert failed["error"]["code"] == "broker_unavailable"
        own_redis.start()
        await until(lambda: redis_broker.healthy, "the node is back")
        joined = await peer.join("lobby")
        assert (joined["count"], joined["members"]) == (1, [peer.id])
        assert app.hub.members("lobby") == [peer.id]
