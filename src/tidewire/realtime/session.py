"""Session: one connected client of an App: identity, rooms, channels, outgoing messages."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from tidewire.errors import ConnectionClosed
from tidewire.protocol.close import CloseCode
from tidewire.realtime.auth import Identity
from tidewire.realtime.rpc import PendingCalls
from tidewire.realtime.wire import encode

if TYPE_CHECKING:
    from tidewire.realtime.app import App
    from tidewire.transport import WebSocket

__all__ = ["Session"]

logger = logging.getLogger("tidewire.realtime")


class Session:
    """One client connection as the messaging layer sees it.

    ``id`` is random and unique across nodes; ``user`` is set once the client
    authenticated; ``key`` (the user, or the connection id for anonymous
    clients) is who appears in rooms and presence.
    """

    __slots__ = (
        "id",
        "ws",
        "app",
        "identity",
        "metadata",
        "connected_at",
        "last_activity",
        "ip",
        "rooms",
        "channels",
        "calls",
        "rpcs_running",
        "closing",
        "expiry_timer",
        "__weakref__",
    )

    def __init__(self, ws: WebSocket, app: App) -> None:
        """Wrap an open WebSocket of ``app``."""
        self.id: str = secrets.token_hex(6)
        self.ws = ws
        self.app = app
        self.identity: Identity | None = None
        self.metadata: dict[str, Any] = {}
        self.connected_at = time.time()
        self.last_activity = time.monotonic()
        address = ws.remote_address
        self.ip: str = str(address[0]) if isinstance(address, tuple) and address else "?"
        self.rooms: set[str] = set()
        self.channels: set[str] = set()
        self.calls = PendingCalls()
        self.rpcs_running = 0
        self.closing = False
        #: Closes the session when its credentials expire (kept out of ``metadata``,
        #: which presence sends to clients).
        self.expiry_timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<Session {self.id} user={self.user!r}>"

    @property
    def user(self) -> str | None:
        """The authenticated user, or None."""
        return self.identity.user if self.identity is not None else None

    @property
    def key(self) -> str:
        """Who this session is in rooms and presence: the user, else the connection id."""
        identity = self.identity
        return identity.user if identity is not None else self.id

    @property
    def open(self) -> bool:
        """Whether messages can still be sent."""
        return not self.closing and self.ws.close_code is None

    # ----------------------------------------------------------------- sending

    def send(self, envelope: dict[str, Any] | str) -> bool:
        """Queue an envelope (a dict, or one already encoded) for this client.

        Never waits: a client whose unread backlog passes ``max_outgoing_bytes``
        is closed with SLOW_CONSUMER (4001) so it reconnects and recovers
        instead of growing server memory.  False when the message was not queued.
        """
        if not self.open:
            return False
        text = envelope if isinstance(envelope, str) else encode(envelope)
        try:
            self.ws.send_nowait(text)
        except ConnectionClosed:
            return False
        self.check_backlog()
        return True

    def emit(self, type: str, /, **fields: Any) -> bool:
        """Send ``{"type": type, **fields}`` to this client."""
        return self.send({"type": type, **fields})

    def check_backlog(self) -> None:
        """Close a slow consumer whose unread backlog exceeds the app's limit."""
        limit = self.app.options.max_outgoing_bytes
        if self.ws.buffered_amount > limit and not self.closing:
            logger.info("session %s: slow consumer (%d bytes queued)", self.id, limit)
            self.app.stats["slow_consumers"] += 1
            self.fail(CloseCode.SLOW_CONSUMER, f"slow consumer: more than {limit} bytes queued")

    async def call(self, method: str, params: Any = None, *, timeout: float | None = None) -> Any:
        """Call ``method`` on the client and return its result.

        Raises RPCTimeout after ``timeout`` (default: the app's rpc_timeout),
        RPCError with the client's error code, or RPCError ``disconnected``.
        """
        call_id, fut = self.calls.open()
        envelope: dict[str, Any] = {"type": "rpc", "id": call_id, "method": method}
        if params is not None:
            envelope["params"] = params
        if not self.send(envelope):
            self.calls.fail_all("the client is disconnected")
        wait = self.app.options.rpc_timeout if timeout is None else timeout
        return await self.calls.wait(call_id, fut, wait)

    # ------------------------------------------------------------------ rooms

    async def join(self, room: str) -> None:
        """Put this session in ``room`` (as if it sent ``join``; hooks and limits apply)."""
        await self.app.join(self, room)

    async def leave(self, room: str) -> None:
        """Take this session out of ``room``."""
        await self.app.leave(self, room)

    # ---------------------------------------------------------------- closing

    def fail(self, code: int, reason: str = "") -> None:
        """Close now with ``code`` without waiting for the client."""
        self.closing = True
        self.ws.fail(code, reason)

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Run the closing handshake with ``code`` and ``reason``."""
        self.closing = True
        await self.ws.close(code, reason)
