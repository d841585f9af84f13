"""An App's /health reports its broker: the probe, cached and shared; 503 while it fails."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tidewire.realtime import App, MemoryBroker
from tidewire.realtime.brokers import RedisBroker
from tidewire.transport import Server

from .httpkit import http
from .redis_server import RedisServer, running_redis, unique_prefix

#: Seconds within which /health must follow the broker (probe 0.5 s, cache 1 s, keepalive).
FOLLOW = 6.0


class FlakyBroker(MemoryBroker):
    """A MemoryBroker whose probe answers ``up`` after ``delay`` seconds, counting calls."""

    def __init__(self) -> None:
        """Up, answering at once."""
        super().__init__()
        self.up = True
        self.delay = 0.0
        self.probes = 0

    async def probe(self, timeout: float = 1.0) -> bool:
        """``up``, after ``delay``."""
        self.probes += 1
        await asyncio.sleep(self.delay)
        return self.up


async def test_health_reports_the_memory_broker() -> None:
    """/health: the transport's counters plus {"kind": "memory", "healthy": true, "probe_ms"}."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server:
        answer = await http(server, "GET", "/health")
        assert answer.status == 200
        body = answer.json()
        assert body["status"] == "ok" and body["connections"] == 0 and "uptime_seconds" in body
        broker = body["broker"]
        assert (broker["kind"], broker["healthy"]) == ("memory", True)
        assert isinstance(broker["probe_ms"], float) and broker["probe_ms"] >= 0


async def test_a_failing_probe_answers_503_degraded_and_recovers() -> None:
    """A probe that fails makes /health 503 "degraded"; once it passes again, 200."""
    broker = FlakyBroker()
    app = App(broker=broker)
    app._health.cache = 0.0
    async with app.serve("127.0.0.1", 0) as server:
        broker.up = False
        answer = await http(server, "GET", "/health")
        assert answer.status == 503
        assert answer.json()["status"] == "degraded"
        assert answer.json()["broker"]["healthy"] is False
        broker.up = True
        assert (await http(server, "GET", "/health")).status == 200


async def test_probes_are_cached_and_shared() -> None:
    """20 concurrent checks share one probe; checks within the cache period reuse it."""
    broker = FlakyBroker()
    broker.delay = 0.1
    app = App(broker=broker)
    async with app.serve("127.0.0.1", 0) as server:
        answers = await asyncio.gather(*(http(server, "GET", "/health") for _ in range(20)))
        assert {answer.status for answer in answers} == {200}
        assert (await http(server, "GET", "/health")).status == 200
        assert broker.probes == 1


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone, to pause."""
    with running_redis() as server:
        yield server


async def until_status(server: Server, status: int) -> dict[str, Any]:
    """Poll /health until it answers ``status`` (fails after FOLLOW seconds); its body."""
    deadline = time.monotonic() + FOLLOW
    while True:
        answer = await http(server, "GET", "/health")
        if answer.status == status:
            body: dict[str, Any] = answer.json()
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"/health still {answer.status}, not {status}, after {FOLLOW} s")
        await asyncio.sleep(0.1)


async def test_health_is_503_while_redis_is_paused(own_redis: RedisServer) -> None:
    """Redis SIGSTOPped: /health turns 503 within seconds; SIGCONT: 200 again."""
    broker = RedisBroker(
        own_redis.url,
        prefix=unique_prefix("health"),
        keepalive=1.0,
        command_timeout=1.0,
        reconnect_base=0.05,
        reconnect_cap=0.3,
    )
    app = App(broker=broker)
    async with app.serve("127.0.0.1", 0) as server:
        body = await until_status(server, 200)
        assert (body["broker"]["kind"], body["broker"]["healthy"]) == ("redis", True)
        own_redis.pause()
        try:
            down = await until_status(server, 503)
            assert down["status"] == "degraded"
            assert down["broker"]["healthy"] is False
        finally:
            own_redis.resume()
        await until_status(server, 200)
