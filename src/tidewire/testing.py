"""Test kit for tidewire apps: an in-process server on a free port and wire-protocol clients.

In a test suite, define an ``app`` fixture and use the ``tidewire_server`` and
``tidewire_client`` fixtures (a pytest plugin, loaded automatically when
tidewire is installed)::

    @pytest.fixture
    def app():
        return my_project.build_app()

    async def test_chat(tidewire_client):
        ann, bob = await tidewire_client(), await tidewire_client()
        await ann.join("lobby")
        await bob.join("lobby")
        await ann.send({"type": "chat", "room": "lobby", "text": "hi"})
        assert (await bob.receive("chat"))["text"] == "hi"

Without pytest, ``async with running(app) as server`` and
``async with TestClient.connect(server.url) as client`` do the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tidewire.errors import ConnectionClosed, RealtimeError, RPCError
from tidewire.realtime import SUBPROTOCOL, App
from tidewire.transport import ClientConnection, Server, connect

__all__ = ["TestClient", "TestServer", "running"]

#: Seconds a test waits for an expected message before failing.
DEFAULT_TIMEOUT = 5.0


class TestServer:
    """A running App: ``url`` is its WebSocket endpoint."""

    __test__ = False  # not a pytest test class

    def __init__(self, app: App, server: Server) -> None:
        """Wrap a started server of ``app``."""
        self.app = app
        self.server = server
        self.url = f"ws://127.0.0.1:{server.port}{app.path}"


@contextlib.asynccontextmanager
async def running(app: App, **kwargs: Any) -> AsyncIterator[TestServer]:
    """Serve ``app`` on 127.0.0.1 on a free port for the duration of the block."""
    async with app.serve("127.0.0.1", 0, **kwargs) as server:
        yield TestServer(app, server)


class TestClient:
    """A wire-protocol v1 client for tests: send envelopes, await the ones you expect.

    Messages not yet asked for are kept in arrival order; ``receive(type)``
    returns the first of that type (or fails after a timeout), so a test
    states what it expects without caring about unrelated messages.
    """

    __test__ = False

    def __init__(self, ws: ClientConnection) -> None:
        """Wrap an open connection whose ``connection`` hello has not been read yet."""
        self.ws = ws
        self.id: str | None = None
        self.user: str | None = None
        self.inbox: list[dict[str, Any]] = []
        self._next_id = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, url: str, *, token: str | None = None, **kwargs: Any
    ) -> AsyncIterator[TestClient]:
        """Connect (with a Bearer ``token`` if given) and read the ``connection`` hello."""
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        kwargs.setdefault("subprotocols", [SUBPROTOCOL])
        async with connect(url, headers=headers, **kwargs) as ws:
            client = cls(ws)
            hello = await client.receive("connection")
            client.id, client.user = hello["id"], hello.get("user")
            yield client

    async def send(self, envelope: dict[str, Any]) -> None:
        """Send one envelope as a JSON text frame."""
        await self.ws.send(json.dumps(envelope))

    async def receive(
        self, type: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        """The first message of ``type`` (any type when None); TimeoutError after ``timeout``."""
        for index, message in enumerate(self.inbox):
            if type is None or message.get("type") == type:
                return self.inbox.pop(index)
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await self.ws.recv())
                if type is None or message.get("type") == type:
                    return dict(message)
                self.inbox.append(message)

    async def request(self, envelope: dict[str, Any], reply: str) -> dict[str, Any]:
        """Send ``envelope`` with a fresh id; return the ``reply`` carrying that id.

        An ``error`` referring to the id raises RealtimeError with its code.
        """
        self._next_id += 1
        call_id = f"t{self._next_id}"
        await self.send({**envelope, "id": call_id})
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            while True:
                for index, message in enumerate(self.inbox):
                    if message.get("id") == call_id or message.get("ref") == call_id:
                        self.inbox.pop(index)
                        if message.get("type") == "error":
                            raise RealtimeError(message["message"], message["code"])
                        if message.get("type") != reply:
                            raise AssertionError(f"expected {reply!r}, got {message!r}")
                        return message
                self.inbox.append(json.loads(await self.ws.recv()))

    async def join(self, room: str) -> dict[str, Any]:
        """Join ``room``; returns the ``joined`` reply (RealtimeError on an error reply)."""
        return await self.request({"type": "join", "room": room}, "joined")

    async def leave(self, room: str) -> dict[str, Any]:
        """Leave ``room``; returns the ``left`` reply."""
        return await self.request({"type": "leave", "room": room}, "left")

    async def subscribe(self, channel: str, since: dict[str, Any] | None = None) -> dict[str, Any]:
        """Subscribe to ``channel`` (from ``since`` = {epoch, offset}); returns ``subscribed``."""
        envelope: dict[str, Any] = {"type": "subscribe", "channel": channel}
        if since is not None:
            envelope["since"] = since
        return await self.request(envelope, "subscribed")

    async def publish(self, channel: str, payload: Any) -> dict[str, Any]:
        """Publish to ``channel``; returns the ``published`` ack with the offset."""
        return await self.request(
            {"type": "publish", "channel": channel, "payload": payload}, "published"
        )

    async def authenticate(self, token: str) -> dict[str, Any]:
        """Send an ``auth`` message; returns the success reply."""
        return await self.request({"type": "auth", "token": token}, "auth")

    async def call(self, method: str, params: Any = None) -> Any:
        """Call a server RPC; returns its result or raises RPCError with the error code."""
        self._next_id += 1
        await self.send({"type": "rpc", "id": self._next_id, "method": method, "params": params})
        call_id = self._next_id
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            while True:
                for index, message in enumerate(self.inbox):
                    if message.get("type") == "rpc_result" and message.get("id") == call_id:
                        self.inbox.pop(index)
                        error = message.get("error")
                        if error is not None:
                            raise RPCError(error["message"], error["code"])
                        return message.get("result")
                self.inbox.append(json.loads(await self.ws.recv()))

    async def closed(self, *, timeout: float = DEFAULT_TIMEOUT) -> tuple[int | None, str | None]:
        """Wait until the server closes the connection; returns (code, reason)."""
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionClosed):
                while True:
                    self.inbox.append(json.loads(await self.ws.recv()))
        return self.ws.close_code, self.ws.close_reason


def _install_fixtures() -> None:
    """Define the pytest fixtures when pytest and pytest-asyncio are importable."""
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover - the kit works without pytest too
        return

    @pytest_asyncio.fixture
    async def tidewire_server(app: App) -> AsyncIterator[TestServer]:
        """The ``app`` fixture served on a free loopback port."""
        async with running(app) as server:
            yield server

    @pytest_asyncio.fixture
    async def tidewire_client(
        tidewire_server: TestServer,
    ) -> AsyncIterator[Callable[..., Awaitable[TestClient]]]:
        """A factory: ``await tidewire_client(token=...)`` gives a connected TestClient."""
        async with contextlib.AsyncExitStack() as stack:

            async def make(**kwargs: Any) -> TestClient:
                return await stack.enter_async_context(
                    TestClient.connect(tidewire_server.url, **kwargs)
                )

            yield make

    globals()["tidewire_server"] = tidewire_server
    globals()["tidewire_client"] = tidewire_client


_install_fixtures()
