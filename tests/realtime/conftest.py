"""Helpers for the realtime integration tests: a plain `websockets` client speaking protocol v1.

The tests drive an App over real loopback sockets with the third-party
``websockets`` client, so they judge the wire protocol of docs/protocol.md and not
tidewire's own client.  Every wait is bounded: a message that does not come fails
the test after ``TIMEOUT`` seconds instead of hanging it.
"""

from __future__ import annotations

import asyncio
import faulthandler
import itertools
import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tidewire.realtime import SUBPROTOCOL, App, Session, sign_token
from tidewire.transport import Server

#: Hard ceiling per test: a starved event loop cannot hang the run.
WATCHDOG_SECONDS = 30

#: Seconds to wait for any one message or close.
TIMEOUT = 2.0

#: A secret long enough for HMACVerifier (16 bytes at least).
SECRET = b"integration-tests-secret-0123456789"

_barrier_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    """Kill the run with a traceback if one test runs past WATCHDOG_SECONDS."""
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def url_of(server: Server, query: str = "") -> str:
    """The app's WebSocket URL on ``server`` (``query`` without the ``?``)."""
    return f"ws://127.0.0.1:{server.port}/ws" + (f"?{query}" if query else "")


class Peer:
    """One `websockets` client connection and the ``connection`` hello it got."""

    def __init__(self, ws: ClientConnection, hello: dict[str, Any] | None) -> None:
        """Wrap ``ws``; ``hello`` is None when the server refused before sending one."""
        self.ws = ws
        self.hello = hello

    @property
    def id(self) -> str:
        """The connection id the server announced."""
        assert self.hello is not None
        return str(self.hello["id"])

    async def send(self, envelope: Mapping[str, Any]) -> None:
        """Send one envelope as a JSON text frame."""
        await send_json(self.ws, envelope)

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next envelope; fails the test after ``timeout`` seconds."""
        return await recv_json(self.ws, timeout)

    async def request(self, envelope: Mapping[str, Any]) -> dict[str, Any]:
        """Send ``envelope`` and return the next envelope received."""
        await self.send(envelope)
        return await self.recv()

    async def call(self, method: str, params: Any = None, call_id: int = 1) -> dict[str, Any]:
        """Send an ``rpc`` and return the ``rpc_result`` with the same id."""
        envelope: dict[str, Any] = {"type": "rpc", "id": call_id, "method": method}
        if params is not None:
            envelope["params"] = params
        reply = await self.request(envelope)
        assert reply["type"] == "rpc_result" and reply["id"] == call_id, reply
        return reply

    async def join(self, room: str) -> dict[str, Any]:
        """Join ``room`` and return the ``joined`` reply."""
        reply = await self.request({"type": "join", "room": room})
        assert reply["type"] == "joined" and reply["room"] == room, reply
        return reply

    async def barrier(self) -> None:
        """Assert that nothing is queued for this client: the next envelope is our pong.

        The server answers ``ping`` in order with everything else it sends this
        connection, so whatever it had already emitted would arrive first.
        """
        ping_id = f"barrier-{next(_barrier_ids)}"
        await self.send({"type": "ping", "id": ping_id})
        assert await self.recv() == {"type": "pong", "id": ping_id}

    async def expect_closed(self, code: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """Wait for the server to close with ``code``; return the envelopes received first."""
        return await expect_closed(self.ws, code, timeout)

    def session(self, app: App) -> Session:
        """The server-side Session of this client."""
        return app.hub.sessions[self.id]


async def send_json(ws: ClientConnection, envelope: Mapping[str, Any]) -> None:
    """Send one envelope as a JSON text frame."""
    await ws.send(json.dumps(envelope))


async def recv_json(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    """Receive one text frame and parse it as a JSON object (bounded wait)."""
    data = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(data, str), f"expected a text frame, got {data!r}"
    envelope = json.loads(data)
    assert isinstance(envelope, dict), envelope
    return envelope


async def expect_closed(
    ws: ClientConnection, code: int, timeout: float = TIMEOUT
) -> list[dict[str, Any]]:
    """Wait until the server closes with ``code``; return the envelopes that came before."""
    received: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with pytest.raises(ConnectionClosed) as info:
        while True:
            received.append(await recv_json(ws, max(0.0, deadline - loop.time())))
    rcvd = info.value.rcvd
    assert rcvd is not None, f"no close frame received (got {info.value}); before: {received}"
    assert rcvd.code == code, f"closed with {rcvd.code} {rcvd.reason!r}, not {code}"
    return received


@asynccontextmanager
async def connect(
    server: Server,
    *,
    token: str | None = None,
    via: str = "header",
    subprotocols: Sequence[str] = (SUBPROTOCOL,),
    query: str = "",
    hello: bool = True,
    **kwargs: Any,
) -> AsyncIterator[Peer]:
    """Open a client to ``server``'s app; with ``hello``, consume and check the hello.

    ``token`` travels ``via`` the Authorization header, a ``token.<T>``
    subprotocol offer or the ``token`` query parameter.
    """
    headers: dict[str, str] = {}
    offers = list(subprotocols)
    if token is not None:
        if via == "header":
            headers["Authorization"] = f"Bearer {token}"
        elif via == "subprotocol":
            offers.append(f"token.{token}")
        elif via == "query":
            query = f"token={token}"
        else:
            raise ValueError(f"unknown token route {via!r}")
    async with websockets.connect(
        url_of(server, query),
        subprotocols=offers or None,  # type: ignore[arg-type]
        additional_headers=headers or None,
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        ping_interval=None,
        **kwargs,
    ) as ws:
        first = None
        if hello:
            first = await recv_json(ws)
            assert first["type"] == "connection" and first["version"] == 1, first
        yield Peer(ws, first)


def user_token(user: str, *, ttl: float | None = 3600) -> str:
    """A token for ``user`` that ``HMACVerifier(SECRET)`` accepts."""
    return sign_token(SECRET, user, ttl=ttl)


def track_disconnects(app: App) -> asyncio.Queue[str]:
    """A queue that gets each session id once the app finished cleaning it up."""
    gone: asyncio.Queue[str] = asyncio.Queue()

    @app.on_disconnect
    async def record(session: Session) -> None:
        gone.put_nowait(session.id)

    return gone


async def next_disconnect(gone: asyncio.Queue[str], timeout: float = TIMEOUT) -> str:
    """The id of the next session the app finished cleaning up (bounded wait)."""
    return await asyncio.wait_for(gone.get(), timeout)
