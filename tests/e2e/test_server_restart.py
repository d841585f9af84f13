"""Both clients (tidewire.js in Chromium and tidewire.Client) across a server restart.

With the in-memory broker a restart loses the history: both clients must tell
the application ``recovery_failed`` instead of silently skipping.  With the
Redis broker the history survives: both must receive every publication, in
order and once, including those published (by another node) while the server
was down.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tidewire.realtime import App, Client
from tidewire.realtime.brokers import Broker, MemoryBroker, RedisBroker

from .test_browser_client import _test_page

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEST_TIMEOUT = 30.0


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def serving(port: int, broker: Broker) -> AsyncIterator[App]:
    """An App (plus the test page) on ``port`` until the block ends."""
    app = App(broker=broker, rate_limits=None)
    app.router.add_http("/test.html", _test_page)
    async with app.serve("127.0.0.1", port):
        yield app


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A throwaway redis-server."""
    from realtime.redis_server import RedisServer

    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


JS_SUBSCRIBER = """async (url) => {
    const c = make("js", url, {reconnect: {base: 100, cap: 400}});
    window.jsGot = [];
    await c.connect();
    await c.subscribe("news", (p) => window.jsGot.push(p));
    window.jsClient = c;
}"""


async def until(predicate: Callable[[], Any], timeout: float = 15.0) -> None:
    """Wait (bounded) until ``predicate()`` is truthy."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_restart_with_memory_broker_reports_recovery_failed(open_page: Any) -> None:
    """After a restart on the in-memory broker both clients get recovery_failed, not silence."""
    port = free_port()
    ws_url = f"ws://127.0.0.1:{port}/ws"
    async with asyncio.timeout(TEST_TIMEOUT):
        async with serving(port, MemoryBroker()) as app:
            page = await open_page(f"http://127.0.0.1:{port}/test.html")
            await page.evaluate(JS_SUBSCRIBER, ws_url)
            py = Client(ws_url, reconnect_base=0.1, reconnect_cap=0.4)
            failed: list[str] = []
            py.on("recovery_failed", failed.append)
            py_got: list[Any] = []
            await py.connect()
            await py.subscribe("news", lambda pub: py_got.append(pub["payload"]))
            for n in (1, 2):
                await app.publish("news", n)
            await until(lambda: py_got == [1, 2])
        # The server is gone; a new one (new in-memory broker, new epoch) takes its port.
        async with serving(port, MemoryBroker()) as app:
            await until(lambda: failed == ["news"])
            js_failed = await page.evaluate("() => seen('js', 'recovery_failed')")
            for _ in range(100):
                if js_failed:
                    break
                await asyncio.sleep(0.05)
                js_failed = await page.evaluate("() => seen('js', 'recovery_failed')")
            assert [event["channel"] for event in js_failed] == ["news"]
            await app.publish("news", 3)  # live again after the reset
            await until(lambda: py_got == [1, 2, 3])
            await page.wait_for_function("() => window.jsGot.length === 3")
            assert await page.evaluate("() => window.jsGot") == [1, 2, 3]
            await py.close()


async def test_restart_with_redis_broker_loses_nothing(open_page: Any, redis_url: str) -> None:
    """With Redis, publications made while the server was down reach both clients, once."""
    port = free_port()
    ws_url = f"ws://127.0.0.1:{port}/ws"
    other = App(broker=RedisBroker(redis_url), rate_limits=None)  # another node, no clients
    await other.start()
    try:
        async with asyncio.timeout(TEST_TIMEOUT):
            async with serving(port, RedisBroker(redis_url)) as app:
                page = await open_page(f"http://127.0.0.1:{port}/test.html")
                await page.evaluate(JS_SUBSCRIBER, ws_url)
                py = Client(ws_url, reconnect_base=0.1, reconnect_cap=0.4)
                failed: list[str] = []
                py.on("recovery_failed", failed.append)
                py_got: list[Any] = []
                await py.connect()
                await py.subscribe("news", lambda pub: py_got.append(pub["payload"]))
                for n in range(1, 11):
                    await app.publish("news", n)
                await until(lambda: len(py_got) == 10)
            for n in range(11, 31):  # the server is down; another node keeps publishing
                await other.publish("news", n)
            async with serving(port, RedisBroker(redis_url)) as app:
                for n in range(31, 41):
                    await app.publish("news", n)
                await until(lambda: len(py_got) >= 40)
                await page.wait_for_function("() => window.jsGot.length >= 40", timeout=15_000)
                await asyncio.sleep(0.3)  # anything duplicated would have arrived by now
                expected = list(range(1, 41))
                assert py_got == expected
                assert await page.evaluate("() => window.jsGot") == expected
                assert failed == []
                assert await page.evaluate("() => seen('js', 'recovery_failed')") == []
                await py.close()
    finally:
        await other.close()
