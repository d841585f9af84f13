"""Helpers for the tests of tidewire's Python client against real Apps over loopback.

Every wait is bounded by ``TIMEOUT``; reconnect delays are made tiny with a
small ``reconnect_base``/``reconnect_cap`` (``FAST``), and the moments a test
must hold ("while the client is disconnected") are held by an ``on_connect``
:class:`Gate` on the server, never by sleeping.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from tidewire.protocol.close import CloseCode
from tidewire.realtime import App, Session
from tidewire.realtime.client import Client
from tidewire.realtime.context import Context
from tidewire.transport import Server

#: Seconds any one expected event may take.
TIMEOUT = 3.0

#: A secret long enough for HMACVerifier.
SECRET = b"client-tests-secret-0123456789abcdef"

#: Client options that keep reconnects fast and waits short.
FAST: dict[str, Any] = {
    "reconnect_base": 0.02,
    "reconnect_cap": 0.1,
    "open_timeout": TIMEOUT,
    "call_timeout": TIMEOUT,
    "close_timeout": 1.0,
}


def url_of(server: Server) -> str:
    """The App's WebSocket URL on ``server``."""
    return f"ws://127.0.0.1:{server.port}/ws"


def when(
    client: Client, event: str, match: Callable[..., bool] | None = None
) -> asyncio.Future[Any]:
    """A future for the first ``event`` whose arguments satisfy ``match`` (its first argument)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def callback(*args: Any) -> None:
        if not future.done() and (match is None or match(*args)):
            future.set_result(args[0] if args else None)
            client.off(event, callback)

    client.on(event, callback)
    return future


async def until(future: asyncio.Future[Any]) -> Any:
    """The future's result, failing the test after TIMEOUT."""
    return await asyncio.wait_for(future, TIMEOUT)


async def barrier(client: Client) -> None:
    """Everything the server sent this client before now has been dispatched.

    The server answers in order with what it already queued for the client, so
    once this call's result is back, earlier messages went through the reader.
    """
    await client.call("rooms.list")


async def sync(client: Client) -> None:
    """Everything this client sent before now has been handled by the server.

    ``join`` runs in the connection's ordered worker, after earlier messages.
    """
    await client.join("sync")


def kicking_app(**kwargs: Any) -> App:
    """An App whose RPC ``kick`` closes the caller with the code in its params."""
    app = App(**kwargs)

    @app.rpc("kick")
    async def kick(ctx: Context, params: Any) -> None:
        code, reason = params if params else (CloseCode.RECONNECT, "bye")
        ctx.session.fail(code, reason)

    return app


class Gate:
    """An ``on_connect`` hook that holds the connections after the first ``pass_first``."""

    def __init__(self, app: App, pass_first: int = 1) -> None:
        """Install the hook on ``app``; the gate starts closed."""
        self.count = 0
        self.pass_first = pass_first
        self.open = asyncio.Event()
        self.waiting = asyncio.Event()
        app.on_connect(self.hook)

    async def hook(self, session: Session) -> None:
        """Let the first connections through; hold later ones until released."""
        self.count += 1
        if self.count > self.pass_first:
            self.waiting.set()
            await asyncio.wait_for(self.open.wait(), TIMEOUT)


def free_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
