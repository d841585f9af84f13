"""Session: one connected client of an App: identity, rooms, channels, outgoing messages."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from tidewire.errors import ConnectionClosed
from tidewire.protocol.close import CloseCode
from tidewire.realtime.auth import Identity
from tidewire.realtime.flow import (
    Policy,
    SlowConsumerPolicy,
    batch_text,
    latest_key,
    type_of,
)
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
        "held",
        "drops",
        "releaser",
        "outbox",
        "outbox_bytes",
        "flush_handle",
        "headroom",
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
        #: ``latest``-policy messages held while the client is congested, by key.
        self.held: dict[Hashable, str] = {}
        #: Messages dropped by the ``drop`` policy.
        self.drops = 0
        self.releaser: asyncio.Task[None] | None = None
        #: Opt-in batching: encoded envelopes waiting for the next batch flush.
        self.outbox: list[str] = []
        self.outbox_bytes = 0
        self.flush_handle: asyncio.TimerHandle | None = None
        #: Largest message the fast path of admit() may pass without measuring.
        self.headroom = app.options.max_outgoing_bytes - 2 * ws.options.write_high_water
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

    def send(
        self, envelope: dict[str, Any] | str, *, policy: SlowConsumerPolicy | None = None
    ) -> bool:
        """Queue an envelope (a dict, or one already encoded) for this client.

        Never waits.  A client that does not read gets its slow-consumer policy
        (``policy``, else the app's choice for the message type; see
        :mod:`tidewire.realtime.flow`): closed with SLOW_CONSUMER (4001), the
        message dropped, or only the newest message per key kept.  False when
        the message was not queued now.
        """
        if not self.open:
            return False
        text = envelope if isinstance(envelope, str) else encode(envelope)
        if policy is None:
            policy = self.app.policy_for(None, type_of(text))
        if not self.admit(text, policy):
            return False
        self.app.metrics.sent(self, envelope, text)
        if self.app.options.batch_interval is not None:
            self._batch(text)
            return True
        try:
            self.ws.send_nowait(text)
        except ConnectionClosed:
            return False
        return True

    def admit(self, text: str, policy: SlowConsumerPolicy) -> bool:
        """Whether ``text`` may be queued now; applies ``policy`` when the client lags."""
        if self.closing:
            return False
        ws = self.ws
        # Fast path, taken for nearly every message: while the transport is not
        # paused its buffer is below high water and what waits for the scheduled
        # flush is below it too (the transport flushes at once past it), so the
        # backlog is at most twice high water, far under max_outgoing_bytes.
        if not ws.write_paused and not self.held and len(text) + self.outbox_bytes <= self.headroom:
            return True
        if policy.kind is Policy.LATEST:
            if self.held or ws.write_paused:
                self._hold(text, policy)
                return False
            return True
        limit = self.app.options.max_outgoing_bytes
        if ws.buffered_amount + self.outbox_bytes + len(text) <= limit:
            return True
        if policy.kind is Policy.DROP:
            self.drops += 1
            self.app.stats["dropped"] += 1
            return False
        logger.info("session %s: slow consumer (more than %d bytes queued)", self.id, limit)
        self.app.stats["slow_consumers"] += 1
        self.fail(CloseCode.SLOW_CONSUMER, f"slow consumer: more than {limit} bytes queued")
        return False

    def _hold(self, text: str, policy: SlowConsumerPolicy) -> None:
        key = latest_key(text, policy)
        if self.held.pop(key, None) is not None:
            self.drops += 1
            self.app.stats["replaced"] += 1
        self.held[key] = text
        if self.releaser is None:
            self.releaser = asyncio.get_running_loop().create_task(self._release())

    async def _release(self) -> None:
        """Write the held messages, in order, each time the write buffer drains."""
        try:
            while self.held and self.open:
                await self.ws.drain()
                if not self.open:
                    break
                held, self.held = self.held, {}
                for text in held.values():
                    self.ws.send_nowait(text)
        except ConnectionClosed:
            pass
        finally:
            self.releaser = None

    def _batch(self, text: str) -> None:
        self.outbox.append(text)
        self.outbox_bytes += len(text)
        options = self.app.options
        if self.outbox_bytes >= options.max_batch_bytes:
            self.flush()
        elif self.flush_handle is None:
            assert options.batch_interval is not None
            loop = asyncio.get_running_loop()
            self.flush_handle = loop.call_later(options.batch_interval, self.flush)

    def flush(self) -> None:
        """Send what batching collected: one message as is, several as one ``batch``."""
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        texts, self.outbox, self.outbox_bytes = self.outbox, [], 0
        if not texts or not self.open:
            return
        try:
            self.ws.send_nowait(texts[0] if len(texts) == 1 else batch_text(texts))
        except ConnectionClosed:
            pass

    def emit(self, type: str, /, **fields: Any) -> bool:
        """Send ``{"type": type, **fields}`` to this client."""
        return self.send({"type": type, **fields})

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
