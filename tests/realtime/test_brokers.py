"""The broker contract (tests/realtime/broker_contract.py) run against every broker kind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from tidewire.realtime.brokers import Broker, MemoryBroker, RedisBroker

from .broker_contract import BrokerKit, check_ids
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
