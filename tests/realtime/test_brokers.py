"""The broker contract (broker_contract.py) against every broker kind, then MemoryBroker's own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from tidewire.realtime import App
from tidewire.realtime.brokers import Broker, MemoryBroker, RedisBroker
from tidewire.realtime.brokers.memory import _SWEEP_EVERY

from .broker_contract import BrokerKit, RecordingNode, check_ids
from .redis_server import RedisServer, running_redis, unique_prefix


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for this module; each test uses its own key prefix."""
    with running_redis() as server:
        yield server


def memory_kit() -> BrokerKit:
    """MemoryBroker: each broker is a fresh process-local history."""

    def make(**options: Any) -> Broker:
        return MemoryBroker(**options)

    async def lose_history() -> None:
        pass  # a new MemoryBroker starts empty: the restart is the loss

    return BrokerKit("memory", make, lose_history)


def redis_kit(server: RedisServer) -> BrokerKit:
    """RedisBroker: brokers share history under one prefix; loss deletes its keys."""
    prefix = unique_prefix("contract")

    def make(**options: Any) -> Broker:
        return RedisBroker(server.url, prefix=prefix, reconnect_base=0.05, **options)

    async def lose_history() -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(server.url)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    return BrokerKit("redis", make, lose_history)


@pytest.fixture(params=["memory", "redis"])
async def kit(request: pytest.FixtureRequest) -> AsyncIterator[BrokerKit]:
    """A broker kit of each kind; its brokers are closed after the test."""
    if request.param == "memory":
        made = memory_kit()
    else:
        made = redis_kit(request.getfixturevalue("redis_server"))
    try:
        yield made
    finally:
        await made.close_all()


@pytest.mark.parametrize("check", check_ids())
async def test_broker_contract(
    kit: BrokerKit, check: Callable[[BrokerKit], Awaitable[None]]
) -> None:
    """Each broker kind passes each check of the broker contract."""
    await check(kit)


async def test_memory_sweep_starts_a_new_epoch_and_keeps_followed_channels() -> None:
    """A swept channel restarts at 1 in a new epoch; a channel followed here is never swept."""
    node = RecordingNode(channels=["followed"])
    broker = MemoryBroker(history_ttl=10.0)
    await broker.start(node)
    await broker.publish("idle", "old", publisher=None, now=0.0)
    await broker.publish("followed", "old", publisher=None, now=0.0)
    idle_epoch, _ = await broker.position("idle", 0.0)
    followed = await broker.position("followed", 0.0)
    for _ in range(_SWEEP_EVERY - 2):  # the sweep runs on the _SWEEP_EVERY-th publish
        await broker.publish("busy", "x", publisher=None, now=100.0)
    assert "idle" not in broker.histories and "followed" in broker.histories
    assert (await broker.publish("idle", "new", publisher=None, now=100.0)).offset == 1
    epoch, top = await broker.position("idle", 100.0)
    assert epoch != idle_epoch and top == 1
    recovery = await broker.recover("idle", idle_epoch, 1, 100.0)
    assert (recovery.recovered, recovery.epoch, recovery.offset) == (False, epoch, 1)
    assert await broker.position("followed", 100.0) == followed
    assert (await broker.publish("followed", "new", publisher=None, now=100.0)).offset == 2


def test_the_app_gives_its_clock_to_the_memory_broker_it_creates() -> None:
    """App(clock=c) creates its MemoryBroker with clock c."""

    def clock() -> float:
        return 42.0

    broker = App(clock=clock).broker
    assert isinstance(broker, MemoryBroker) and broker.clock is clock
