"""RedisBroker beyond the contract: several nodes, Redis failures, catch-up, probes.

Each test talks to its own redis-server child process (tests/realtime/redis_server.py)
or to this module's shared one under a unique key prefix.  Waits are bounded.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tidewire.errors import BrokerError
from tidewire.realtime.brokers import RedisBroker, Target

from .broker_contract import RecordingNode, settle
from .redis_server import RedisServer, running_redis, unique_prefix

#: Seconds to wait for a reconnect or a failure to be noticed.
WAIT = 5.0


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


class Nodes:
    """Brokers of one test (one prefix unless told otherwise); closed at the end."""

    def __init__(self, url: str) -> None:
        """Brokers on ``url``."""
        self.url = url
        self.prefix = unique_prefix("node")
        self.brokers: list[RedisBroker] = []

    async def start(self, node: RecordingNode, **options: Any) -> RedisBroker:
        """A started broker for ``node``, with fast reconnects and short timeouts."""
        settings: dict[str, Any] = {
            "prefix": self.prefix,
            "reconnect_base": 0.05,
            "reconnect_cap": 0.3,
            "keepalive": 1.0,
            "command_timeout": 1.0,
            "start_timeout": 2.0,
        }
        settings.update(options)
        broker = RedisBroker(self.url, **settings)
        self.brokers.append(broker)
        await broker.start(node)
        return broker

    async def close(self) -> None:
        """Close every broker."""
        for broker in self.brokers:
            await broker.close()


@pytest.fixture
async def shared_nodes(shared_redis: RedisServer) -> AsyncIterator[Nodes]:
    """Brokers on the shared server."""
    nodes = Nodes(shared_redis.url)
    try:
        yield nodes
    finally:
        await nodes.close()


@pytest.fixture
async def own_nodes(own_redis: RedisServer) -> AsyncIterator[Nodes]:
    """Brokers on this test's own server."""
    nodes = Nodes(own_redis.url)
    try:
        yield nodes
    finally:
        await nodes.close()


async def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` every 10 ms; fail naming ``what`` after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting until {what}")
        await asyncio.sleep(0.01)


async def kill_subscription(url: str, broker: RedisBroker) -> None:
    """CLIENT KILL the pub/sub connection of ``broker`` (its command connections stay)."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        clients = await client.client_list()
        ids = [
            c["id"]
            for c in clients
            if c.get("name") == f"tidewire-{broker.node_id}" and c.get("sub") != "0"
        ]
        assert len(ids) == 1, f"expected one subscriber connection, found {ids}"
        await client.client_kill_filter(_id=ids[0])
    finally:
        await client.aclose()


# ------------------------------------------------------------------ fan-out


async def test_send_reaches_every_node_exactly_once(shared_nodes: Nodes) -> None:
    """A send from one node reaches the other node once and its own node once (no echo)."""
    node_a, node_b = RecordingNode(), RecordingNode()
    a = await shared_nodes.start(node_a)
    b = await shared_nodes.start(node_b)
    await a.send(Target.ROOM, "lobby", '{"type":"hi"}', "conn-x")
    await b.send(Target.USER, "alice", '{"type":"dm"}')
    expected = [
        (Target.ROOM, "lobby", '{"type":"hi"}', "conn-x"),
        (Target.USER, "alice", '{"type":"dm"}', None),
    ]
    await node_a.wait_for(2)
    await node_b.wait_for(2)
    await settle(a)
    await settle(b)
    assert sorted(node_a.deliveries, key=str) == sorted(expected, key=str)
    assert sorted(node_b.deliveries, key=str) == sorted(expected, key=str)


async def test_send_to_a_local_connection_stays_local(shared_nodes: Nodes) -> None:
    """A connection found on this node is written to directly; other nodes see nothing."""
    node_a = RecordingNode(connections=["here"])
    node_b = RecordingNode(connections=["there"])
    a = await shared_nodes.start(node_a)
    b = await shared_nodes.start(node_b)
    await a.send(Target.CONNECTION, "here", '{"type":"1"}')
    await a.send(Target.CONNECTION, "there", '{"type":"2"}')
    await node_b.wait_for(1)
    await settle(a)
    await settle(b)
    assert node_a.deliveries == [
        (Target.CONNECTION, "here", '{"type":"1"}', None),
        (Target.CONNECTION, "there", '{"type":"2"}', None),
    ]
    assert node_b.deliveries == [(Target.CONNECTION, "there", '{"type":"2"}', None)]


async def test_every_node_sees_publications_in_the_same_offset_order(shared_nodes: Nodes) -> None:
    """Concurrent publishes from two nodes: both deliver offsets 1..N in order, same payloads."""
    node_a, node_b = RecordingNode(channels=["news"]), RecordingNode(channels=["news"])
    a = await shared_nodes.start(node_a)
    b = await shared_nodes.start(node_b)
    await a.position("news", 1.0)
    await b.position("news", 1.0)
    pubs = await asyncio.gather(
        *(
            broker.publish("news", f"{name}{i}", publisher=name, now=1.0)
            for i in range(25)
            for name, broker in (("a", a), ("b", b))
        )
    )
    assert sorted(p.offset for p in pubs) == list(range(1, 51))
    await node_a.wait_for(50)
    await node_b.wait_for(50)
    assert node_a.offsets("news") == node_b.offsets("news") == list(range(1, 51))
    assert [d[2] for d in node_a.deliveries] == [d[2] for d in node_b.deliveries]


async def test_prefixes_keep_apps_apart(shared_redis: RedisServer) -> None:
    """Brokers with different prefixes share neither deliveries nor offsets."""
    one, other = Nodes(shared_redis.url), Nodes(shared_redis.url)
    try:
        node_1, node_2 = RecordingNode(channels=["c"]), RecordingNode(channels=["c"])
        b1 = await one.start(node_1)
        b2 = await other.start(node_2)
        assert (await b1.publish("c", 1, publisher=None, now=1.0)).offset == 1
        assert (await b2.publish("c", 1, publisher=None, now=1.0)).offset == 1
        await b1.send(Target.ALL, "", '{"type":"x"}')
        await settle(b1)
        await settle(b2)
        assert len(node_1.deliveries) == 2 and len(node_2.deliveries) == 1
    finally:
        await one.close()
        await other.close()


async def test_history_survives_a_node_restart(shared_nodes: Nodes) -> None:
    """A broker started after another closed sees the same epoch, offsets and history."""
    first = await shared_nodes.start(RecordingNode())
    epoch, _ = await first.position("c", 1000.0)
    for n in range(4):
        await first.publish("c", n, publisher="p", now=1000.0)
    await first.close()
    second = await shared_nodes.start(RecordingNode())
    assert await second.position("c", 1001.0) == (epoch, 4)
    recovery = await second.recover("c", epoch, 1, 1001.0)
    assert recovery.recovered and [p.payload for p in recovery.publications] == [1, 2, 3]
    assert (await second.publish("c", 4, publisher=None, now=1001.0)).offset == 5


async def test_keys_use_the_documented_layout(shared_nodes: Nodes) -> None:
    """Per channel: a hash {epoch, top} and a stream of "<offset>-0" entries (docs/scale-out.md)."""
    broker = await shared_nodes.start(RecordingNode())
    await broker.publish("room:1", {"a": 1}, publisher="ann", now=1000.5)
    client = aioredis.Redis.from_url(shared_nodes.url, decode_responses=True)
    try:
        prefix = shared_nodes.prefix
        assert broker.meta_key("room:1") == f"{prefix}ch:{{room:1}}:meta"
        meta = await client.hgetall(broker.meta_key("room:1"))
        assert set(meta) == {"epoch", "top"} and meta["top"] == "1"
        entries = await client.xrange(broker.log_key("room:1"))
        assert entries == [("1-0", {"t": "1000.5", "p": '{"a":1}', "u": '"ann"'})]
        assert 0 < await client.ttl(broker.log_key("room:1")) <= 301
        assert await client.ttl(broker.meta_key("room:1")) > 301
    finally:
        await client.aclose()


async def test_positions_of_unfollowed_channels_are_forgotten(shared_nodes: Nodes) -> None:
    """Once nobody on the node follows a channel, its remembered position goes (bounded memory)."""
    node = RecordingNode(channels=["a", "b"])
    broker = await shared_nodes.start(node, keepalive=0.1)
    await broker.position("a", time.time())
    await broker.publish("b", 1, publisher=None, now=time.time())
    await node.wait_for(1)
    assert set(broker._positions) | set(broker._hints) == {"a", "b"}
    node.channels.clear()
    await until(lambda: not broker._positions and not broker._hints, "both were forgotten")


# ------------------------------------------------------------------ failures


async def test_start_while_redis_is_down_then_comes_up(own_redis: RedisServer) -> None:
    """Started with Redis down: no crash, BrokerError meanwhile, healthy once Redis is back."""
    own_redis.kill()
    nodes = Nodes(own_redis.url)
    try:
        node = RecordingNode(channels=["c"])
        broker = await nodes.start(node, start_timeout=0.2)
        assert not broker.healthy
        assert not await broker.probe(0.2)
        with pytest.raises(BrokerError, match="cannot publish to 'c': Redis is unavailable"):
            await broker.publish("c", 1, publisher=None, now=1.0)
        with pytest.raises(BrokerError, match="cannot send to room 'r'"):
            await broker.send(Target.ROOM, "r", '{"type":"local"}')
        assert node.deliveries == [(Target.ROOM, "r", '{"type":"local"}', None)]
        own_redis.start()
        await until(lambda: broker.healthy, "the broker subscribed")
        assert (await broker.publish("c", 1, publisher=None, now=1.0)).offset == 1
        assert await broker.probe(1.0)
    finally:
        await nodes.close()


async def test_redis_restart_reconnects_and_announces_the_new_epoch(
    own_redis: RedisServer, own_nodes: Nodes
) -> None:
    """Redis restarted empty: nodes reconnect; subscribers get recovered:false, the new epoch."""
    node_b = RecordingNode(channels=["news"])
    a = await own_nodes.start(RecordingNode())
    b = await own_nodes.start(node_b)
    old_epoch, _ = await b.position("news", 1.0)
    for n in range(3):
        await a.publish("news", n, publisher=None, now=1.0)
    await node_b.wait_for(3)
    own_redis.kill()
    await until(lambda: not a.healthy and not b.healthy, "both nodes noticed")
    with pytest.raises(BrokerError):
        await a.publish("news", "lost", publisher=None, now=1.0)
    own_redis.start()
    await until(lambda: a.healthy and b.healthy, "both nodes resubscribed")
    await node_b.wait_for(4)
    notice = json.loads(node_b.deliveries[3][2])
    assert notice["type"] == "subscribed" and notice["recovered"] is False
    assert notice["epoch"] != old_epoch and (notice["offset"], notice["publications"]) == (0, [])
    pub = await a.publish("news", "fresh", publisher=None, now=1.0)
    assert pub.offset == 1
    await node_b.wait_for(5)
    assert json.loads(node_b.deliveries[4][2])["offset"] == 1
    stale = await b.recover("news", old_epoch, 3, 1.0)
    assert (stale.recovered, stale.epoch) == (False, notice["epoch"])
    assert a.stats["reconnects"] >= 1 and b.stats["unrecoverable"] == 1


async def test_lost_subscription_catches_up_from_history(shared_nodes: Nodes) -> None:
    """Publications made while a node's subscription was down reach it after reconnecting, in order.

    The broker catches up with its own clock (time.time), so the test publishes with it too.
    """
    node_b = RecordingNode(channels=["news"])
    a = await shared_nodes.start(RecordingNode())
    b = await shared_nodes.start(node_b, reconnect_base=0.6, reconnect_cap=0.6)
    await b.position("news", time.time())
    await a.publish("news", 0, publisher=None, now=time.time())
    await node_b.wait_for(1)
    await kill_subscription(shared_nodes.url, b)
    await until(lambda: not b.healthy, "the node noticed")
    for n in range(1, 6):
        await a.publish("news", n, publisher=None, now=time.time())
    await until(lambda: b.healthy, "the node resubscribed")
    await a.publish("news", 6, publisher=None, now=time.time())
    await node_b.wait_for(7)
    await settle(b)
    assert node_b.offsets("news") == list(range(1, 8))
    assert b.stats["catch_up"] == 5 and b.stats["reconnects"] == 1


async def test_a_wedged_redis_is_noticed_by_the_keepalive(
    own_redis: RedisServer, own_nodes: Nodes
) -> None:
    """A Redis that stops answering (SIGSTOP): unhealthy in ~2 keepalives; back after SIGCONT."""
    broker = await own_nodes.start(RecordingNode(), keepalive=0.2, command_timeout=0.3)
    own_redis.pause()
    try:
        await until(lambda: not broker.healthy, "the keepalive noticed", timeout=3.0)
        assert not await broker.probe(0.2)
        with pytest.raises(BrokerError):
            await broker.publish("c", 1, publisher=None, now=1.0)
    finally:
        own_redis.resume()
    await until(lambda: broker.healthy, "the broker resubscribed")
    assert await broker.probe(1.0)


async def test_probe_catches_a_subscriber_that_stopped_delivering(shared_nodes: Nodes) -> None:
    """A subscriber that silently stops delivering still looks healthy; the probe says no."""
    broker = await shared_nodes.start(RecordingNode())
    assert await broker.probe(1.0)

    async def swallow(data: str) -> None:
        """Drop everything, like a wedged reader (centrifugo#1189)."""

    broker._handle = swallow  # type: ignore[method-assign]
    assert broker.healthy
    assert not await broker.probe(0.3)


async def test_malformed_fanout_messages_are_dropped(shared_nodes: Nodes) -> None:
    """Garbage on the fan-out channel is counted and dropped; the subscriber keeps working."""
    node = RecordingNode()
    broker = await shared_nodes.start(node)
    client = aioredis.Redis.from_url(shared_nodes.url, decode_responses=True)
    try:
        for junk in ("not json\n{}", '{"a":1}\n', '["x","n","y"]\n', '["p","n","c","e","7"]\n'):
            await client.publish(broker.fanout, junk)
    finally:
        await client.aclose()
    await broker.send(Target.ALL, "", '{"type":"after"}')
    await settle(broker)
    assert broker.stats["malformed"] == 4 and broker.healthy
    assert node.deliveries == [(Target.ALL, "", '{"type":"after"}', None)]


async def test_a_failing_node_does_not_stop_the_subscriber(shared_nodes: Nodes) -> None:
    """An exception from node.deliver is logged; later deliveries still arrive."""
    node = RecordingNode()
    calls = 0
    original = node.deliver

    def flaky(target: Target, name: str, text: str, exclude: str | None) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug in the node")
        original(target, name, text, exclude)

    node.deliver = flaky  # type: ignore[method-assign]
    a = await shared_nodes.start(RecordingNode())
    await shared_nodes.start(node)
    await a.send(Target.ALL, "", '{"type":"1"}')
    await a.send(Target.ALL, "", '{"type":"2"}')
    await node.wait_for(1)
    assert node.deliveries == [(Target.ALL, "", '{"type":"2"}', None)]


async def test_close_ends_a_subscriber_that_swallowed_a_cancellation(
    shared_redis: RedisServer,
) -> None:
    """close() returns even when a cancellation was swallowed (asyncio.wait_for, Python 3.11)."""
    broker = RedisBroker(shared_redis.url, prefix=unique_prefix("close"))
    swallowed = asyncio.Event()

    async def stubborn(pubsub: Any) -> None:
        """Lose the first cancellation, as redis-py's writes through wait_for can."""
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()
        await asyncio.Event().wait()

    broker._listen = stubborn  # type: ignore[method-assign]
    await broker.start(RecordingNode())
    await asyncio.wait_for(broker.close(), 2.0)
    assert swallowed.is_set() and not broker.healthy


# ------------------------------------------------------------------ packaging


def test_credentials_stay_out_of_repr() -> None:
    """The password in the URL never appears in repr() (logs)."""
    broker = RedisBroker("redis://user:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in repr(broker) and "127.0.0.1:1" in repr(broker)


def test_options_are_checked() -> None:
    """Negative sizes and non-positive durations are refused with the option's name."""
    with pytest.raises(ValueError, match="history_size must be >= 0, got -1"):
        RedisBroker(history_size=-1)
    with pytest.raises(ValueError, match="keepalive must be > 0, got 0"):
        RedisBroker(keepalive=0)


def test_the_package_imports_without_redis() -> None:
    """Without redis installed the brokers package imports; RedisBroker() says what to install."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import tidewire.realtime.brokers as b\n"
        "assert 'tidewire.realtime.brokers.redis' not in sys.modules\n"
        "try:\n"
        "    b.RedisBroker('redis://x')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "RedisBroker needs redis: pip install 'tidewire[redis]'"


def test_scale_out_doc_lists_every_option_with_its_default() -> None:
    """docs/scale-out.md has one row per RedisBroker option, with the code's default."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "scale-out.md"
    section = doc.read_text().split("## Options", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \| .+ \|$", section, re.MULTILINE))
    params = inspect.signature(RedisBroker.__init__).parameters
    expected = {}
    for name, param in params.items():
        if name == "self":
            continue
        default = param.default
        expected[name] = (
            f"{default.__module__}.{default.__name__}" if callable(default) else repr(default)
        )
    assert rows == expected
